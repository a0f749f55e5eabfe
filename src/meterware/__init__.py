"""meterware: API keys, rate limits, monthly quotas, credit metering and a usage
endpoint for any Starlette or FastAPI service, as one ASGI middleware."""

from meterware.clock import Clock
from meterware.errors import ConfigurationError, MeterwareError, StorageError, StorageUnavailable
from meterware.keys import ApiKey, Caller, KeyResolver, SecretHasher
from meterware.metering import Cost, cost, get_caller, set_cost
from meterware.middleware import DEFAULT_EXEMPT_PATHS, MeterwareMiddleware
from meterware.storage import Storage, storage_from_url
from meterware.tiers import DEFAULT_TIERS, Tier, TierTable
from meterware.usage import UsageApp

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_EXEMPT_PATHS",
    "DEFAULT_TIERS",
    "ApiKey",
    "Caller",
    "Clock",
    "ConfigurationError",
    "Cost",
    "KeyResolver",
    "MeterwareError",
    "MeterwareMiddleware",
    "SecretHasher",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "Tier",
    "TierTable",
    "UsageApp",
    "__version__",
    "cost",
    "get_caller",
    "set_cost",
    "storage_from_url",
]
