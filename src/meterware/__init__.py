"""meterware: API keys, rate limits, monthly quotas, credit metering and a usage
endpoint for any Starlette or FastAPI service, as one ASGI middleware."""

from meterware.admin import Admin, UsageLine, UsageReport
from meterware.adminapp import AdminApp
from meterware.clock import Clock
from meterware.config import DEFAULT_EXEMPT_PATHS
from meterware.errors import (
    ConfigurationError,
    Conflict,
    InvalidValue,
    MeterwareError,
    NotFound,
    StorageError,
    StorageUnavailable,
)
from meterware.keys import Account, ApiKey, Caller, KeyResolver, SecretHasher
from meterware.metering import Cost, cost
from meterware.metrics import Metrics, metrics_from_env
from meterware.metricsapp import MetricsApp
from meterware.middleware import MeterwareMiddleware
from meterware.portalapp import PortalApp
from meterware.responses import error_handlers
from meterware.runtime import get_caller, set_cost
from meterware.selfserve import KeysApp
from meterware.storage import Storage, storage_from_url
from meterware.storage.records import Notice
from meterware.tiers import DEFAULT_TIERS, Tier, TierTable
from meterware.usage import UsageApp
from meterware.version import __version__
from meterware.webhooks import WebhookEndpoint, WebhookSender, endpoints_from_env

__all__ = [
    "DEFAULT_EXEMPT_PATHS",
    "DEFAULT_TIERS",
    "Account",
    "Admin",
    "AdminApp",
    "ApiKey",
    "Caller",
    "Clock",
    "ConfigurationError",
    "Conflict",
    "Cost",
    "InvalidValue",
    "KeyResolver",
    "KeysApp",
    "MeterwareError",
    "MeterwareMiddleware",
    "Metrics",
    "MetricsApp",
    "NotFound",
    "Notice",
    "PortalApp",
    "SecretHasher",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "Tier",
    "TierTable",
    "UsageApp",
    "UsageLine",
    "UsageReport",
    "WebhookEndpoint",
    "WebhookSender",
    "__version__",
    "cost",
    "endpoints_from_env",
    "error_handlers",
    "get_caller",
    "metrics_from_env",
    "set_cost",
    "storage_from_url",
]
