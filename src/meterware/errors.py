"""The exceptions meterware raises.

```
MeterwareError
├── ConfigurationError   bad options, unknown storage scheme or tier, missing extra
└── StorageError         the storage backend failed (wraps the driver's exception)
    └── StorageUnavailable  the backend cannot be reached right now
```

Request-level refusals (401, 403, 429, ...) are responses, not exceptions: see
`meterware.responses`.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "MeterwareError", "StorageError", "StorageUnavailable"]


class MeterwareError(Exception):
    """Base class of every meterware exception."""


class ConfigurationError(MeterwareError, ValueError):
    """An option, URL or tier name that meterware cannot use."""


class StorageError(MeterwareError):
    """The storage backend failed; the driver's exception is the `__cause__`."""


class StorageUnavailable(StorageError):
    """The storage backend cannot be reached right now."""
