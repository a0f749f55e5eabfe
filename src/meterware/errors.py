"""The exceptions meterware raises.

```
MeterwareError
├── ConfigurationError   bad options, unknown storage scheme or tier, missing extra
├── InvalidValue         a value an operation cannot take (a negative limit, a bad id)
├── NotFound             no such account or key
├── Conflict             the operation clashes with what is stored (a revoked key, a cap)
└── StorageError         the storage backend failed (wraps the driver's exception)
    └── StorageUnavailable  the backend cannot be reached right now
```

`ConfigurationError` and `InvalidValue` are also `ValueError`s, `NotFound` a `LookupError`.
Each class says how the `meterware` command exits on it (`exit_status`) and which HTTP
status the admin and self-serve apps answer (`http_status`): invalid value 3 / 400, not
found 4 / 404, conflict 5 / 409, storage 1 / 503.
Request-level refusals (401, 403, 429, ...) are responses, not exceptions: see
`meterware.responses`.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ConfigurationError",
    "Conflict",
    "InvalidValue",
    "MeterwareError",
    "NotFound",
    "StorageError",
    "StorageUnavailable",
]


class MeterwareError(Exception):
    """Base class of every meterware exception."""

    exit_status: ClassVar[int] = 1
    http_status: ClassVar[int] = 500


class ConfigurationError(MeterwareError, ValueError):
    """An option, URL or tier name that meterware cannot use."""


class InvalidValue(MeterwareError, ValueError):
    """A value an operation cannot take; the message says which and why."""

    exit_status = 3
    http_status = 400


class NotFound(MeterwareError, LookupError):
    """No account or key with that id."""

    exit_status = 4
    http_status = 404


class Conflict(MeterwareError):
    """The operation clashes with the stored state (a revoked key, a limit reached)."""

    exit_status = 5
    http_status = 409


class StorageError(MeterwareError):
    """The storage backend failed; the driver's exception is the `__cause__`."""

    http_status = 503


class StorageUnavailable(StorageError):
    """The storage backend cannot be reached right now."""
