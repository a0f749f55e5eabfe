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
Request-level refusals (401, 403, 429, ...) are responses, not exceptions: see
`meterware.responses`.
"""

from __future__ import annotations

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


class ConfigurationError(MeterwareError, ValueError):
    """An option, URL or tier name that meterware cannot use."""


class InvalidValue(MeterwareError, ValueError):
    """A value an operation cannot take; the message says which and why."""


class NotFound(MeterwareError, LookupError):
    """No account or key with that id."""


class Conflict(MeterwareError):
    """The operation clashes with the stored state (a revoked key, a limit reached)."""


class StorageError(MeterwareError):
    """The storage backend failed; the driver's exception is the `__cause__`."""


class StorageUnavailable(StorageError):
    """The storage backend cannot be reached right now."""
