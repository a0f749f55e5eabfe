"""Defaults and `METERWARE_*` environment fallbacks, resolved in one place.

`Settings` holds every option of the middleware, checked once; the CLI and the example
apps read the same environment through the functions below, so a variable means the
same thing to every part of meterware:

| variable | what | default |
| --- | --- | --- |
| `METERWARE_STORAGE` | the store's URL | `sqlite:///meterware.db` |
| `METERWARE_PEPPER` | the secret mixed into stored key hashes | none |
| `METERWARE_TIERS` | the tier table (JSON, or a JSON file's path) | reference B's table |
| `METERWARE_RATE_LIMIT_STORAGE` | where per-minute windows live | the main store |
| `METERWARE_LIMIT_BY` | `key` or `account`: whose counters limits are kept in | `key` |
| `METERWARE_OUTBOX` | write the usage outbox with the ledger (`meterware export`) | off |
| `METERWARE_ADMIN_TOKEN` | the admin app's bearer token (`AdminApp`) | none: 503 |
| `METERWARE_PORTAL_SECRET` | what usage-page links are signed with (`PortalApp`) | none: 503 |
| `METERWARE_METRICS` | Prometheus metrics (`metrics_from_env`) | off |
| `METERWARE_WEBHOOK_URL`, `_SECRET` | a webhook endpoint for notices | none |
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Literal

from meterware.errors import ConfigurationError
from meterware.responses import ENVELOPES, HEADER_FAMILIES, Envelope

__all__ = [
    "CONCERNS",
    "DEFAULT_EXEMPT_PATHS",
    "DEFAULT_STORAGE",
    "ChargeRule",
    "Settings",
    "env",
    "key_pepper",
    "limit_by",
    "storage_url",
    "window_storage",
]

DEFAULT_STORAGE = "sqlite:///meterware.db"
DEFAULT_EXEMPT_PATHS = ("/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
CONCERNS = ("rate_limit", "quota", "credits")
"""What may fail open when its storage fails: the per-minute window, the monthly
request quota, the monthly credit allowance."""

UsageFormat = Literal["credits", "quota"]
USAGE_FORMATS: tuple[UsageFormat, ...] = ("credits", "quota")
ENVELOPE_OF: dict[str, Envelope] = {"credits": "flat", "quota": "wrapped"}
ChargeRule = Callable[[int], bool]


def env(name: str) -> str | None:
    """`METERWARE_<name>`, or None when unset or empty."""
    return os.environ.get(f"METERWARE_{name}") or None


def flag(name: str) -> bool:
    """Whether `METERWARE_<name>` is set to something other than empty, 0, false, no, off."""
    return (env(name) or "").strip().lower() not in ("", "0", "false", "no", "off")


def storage_url(given: str | None = None) -> str:
    """The store's URL: `given`, else `METERWARE_STORAGE`, else the SQLite default."""
    return given or env("STORAGE") or DEFAULT_STORAGE


def key_pepper(given: str | bytes | None = None) -> str | bytes | None:
    """The pepper of stored key hashes: `given`, else `METERWARE_PEPPER`."""
    return given if given is not None else env("PEPPER")


def limit_by(given: str | None = None) -> str:
    """Whose counters limits are kept in: `given`, else `METERWARE_LIMIT_BY`, else `key`."""
    value = given or env("LIMIT_BY") or "key"
    if value not in ("key", "account"):
        raise ConfigurationError(f"limit_by must be 'key' or 'account', not {value!r}")
    return value


def window_storage(given: str | None = None) -> str | None:
    """Where per-minute windows live: `given`, else `METERWARE_RATE_LIMIT_STORAGE`, else
    None (the main store)."""
    return given if given is not None else env("RATE_LIMIT_STORAGE")


@dataclass(frozen=True)
class Settings:
    """The middleware's options, checked (the README lists what each means)."""

    key_headers: tuple[str, ...] = ("x-api-key",)
    bearer: bool = True
    key_prefix: str = "mw_"
    pepper: str | bytes | None = None
    key_refresh: float = 1.0
    exempt_paths: frozenset[str] = frozenset(DEFAULT_EXEMPT_PATHS)
    website_param: str = "website_id"
    envelope: Envelope = "wrapped"
    rate_limit_storage: str | None = None
    limit_by: Literal["key", "account"] = "key"
    minute_by: Literal["key", "account"] = "key"
    rate_limit_headers: frozenset[str] = frozenset(HEADER_FAMILIES)
    default_cost: int = 0
    charge: ChargeRule = field(default=lambda status: status < 400)
    usage_path: str | None = None
    usage_format: UsageFormat = "quota"
    flush_interval: float = 0.5
    flush_batch: int = 10_000
    max_pending: int = 100_000
    quota_block: int = 1000
    lease_idle: float = 60.0
    fail_open: frozenset[str] = frozenset({"rate_limit"})
    storage_timeout: float = 1.0
    probe_interval: float = 1.0
    outbox: bool = False

    @property
    def background_timeout(self) -> float:
        """The bound on background store work (a flush, a key poll): 10 × storage_timeout."""
        return 10 * self.storage_timeout

    @classmethod
    def resolve(
        cls,
        *,
        key_headers: Iterable[str] = ("x-api-key",),
        bearer: bool = True,
        key_prefix: str = "mw_",
        pepper: str | bytes | None = None,
        key_refresh: float = 1.0,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
        website_param: str = "website_id",
        envelope: str | None = None,
        rate_limit_storage: str | None = None,
        limit_by: str | None = None,
        rate_limit_by: str | None = None,
        rate_limit_headers: Iterable[str] = HEADER_FAMILIES,
        default_cost: int = 0,
        charge: Collection[int] | ChargeRule | None = None,
        usage_path: str | None = None,
        usage_format: str = "quota",
        flush_interval: float = 0.5,
        flush_batch: int = 10_000,
        max_pending: int = 100_000,
        quota_block: int = 1000,
        lease_idle: float = 60.0,
        fail_open: bool | Collection[str] = ("rate_limit",),
        storage_timeout: float = 1.0,
        probe_interval: float = 1.0,
        outbox: bool | None = None,
    ) -> Settings:
        """Settings from the middleware's keyword options, with the environment's
        fallbacks; a `ConfigurationError` names the first option that cannot be used."""
        if usage_format not in USAGE_FORMATS:
            raise ConfigurationError(
                f"usage_format must be one of {USAGE_FORMATS}, not {usage_format!r}"
            )
        envelope = envelope or ENVELOPE_OF[usage_format]
        if envelope not in ENVELOPES:
            raise ConfigurationError(f"envelope must be one of {ENVELOPES}, not {envelope!r}")
        subjects = _limit_by(limit_by)
        minute_by = subjects
        if rate_limit_by is not None:
            if rate_limit_by not in ("key", "account"):
                raise ConfigurationError("rate_limit_by must be 'key' or 'account'")
            warnings.warn(
                "rate_limit_by is deprecated: use limit_by, which also keeps the monthly quota "
                "and credits per account (rate_limit_by shares only the per-minute window)",
                DeprecationWarning,
                stacklevel=3,
            )
            minute_by = rate_limit_by
        families = frozenset(v.lower() for v in rate_limit_headers)
        if families - set(HEADER_FAMILIES):
            raise ConfigurationError(
                f"rate_limit_headers: unknown {sorted(families - set(HEADER_FAMILIES))}; "
                f"choose from {HEADER_FAMILIES}"
            )
        if key_refresh <= 0:
            raise ConfigurationError("key_refresh must be > 0 seconds")
        if flush_interval <= 0 or flush_batch < 1 or max_pending < 1:
            raise ConfigurationError("flush_interval > 0, flush_batch >= 1, max_pending >= 1")
        if quota_block < 1:
            raise ConfigurationError("quota_block must be >= 1")
        if lease_idle <= 0:
            raise ConfigurationError("lease_idle must be > 0 seconds")
        if not storage_timeout > 0 or not probe_interval > 0:
            raise ConfigurationError("storage_timeout and probe_interval must be > 0 seconds")
        if isinstance(default_cost, bool) or not isinstance(default_cost, int) or default_cost < 0:
            raise ConfigurationError(f"default_cost must be an integer >= 0, not {default_cost!r}")
        return cls(
            key_headers=tuple(key_headers),
            bearer=bearer,
            key_prefix=key_prefix,
            pepper=key_pepper(pepper),
            key_refresh=key_refresh,
            exempt_paths=frozenset(exempt_paths),
            website_param=website_param,
            envelope=envelope,
            rate_limit_storage=window_storage(rate_limit_storage),
            limit_by=subjects,  # type: ignore[arg-type]
            minute_by=minute_by,  # type: ignore[arg-type]
            rate_limit_headers=families,
            default_cost=default_cost,
            charge=_charge_rule(charge),
            usage_path=usage_path,
            usage_format=usage_format,
            flush_interval=flush_interval,
            flush_batch=flush_batch,
            max_pending=max_pending,
            quota_block=quota_block,
            lease_idle=lease_idle,
            fail_open=_concerns(fail_open),
            storage_timeout=storage_timeout,
            probe_interval=probe_interval,
            outbox=outbox if outbox is not None else flag("OUTBOX"),
        )


def _concerns(fail_open: bool | Collection[str]) -> frozenset[str]:
    if fail_open is True:
        return frozenset(CONCERNS)
    if fail_open is False:
        return frozenset()
    concerns = frozenset(fail_open)
    if not concerns <= set(CONCERNS):
        raise ConfigurationError(f"fail_open takes True, False or some of {CONCERNS}")
    return concerns


def _charge_rule(charge: Collection[int] | ChargeRule | None) -> ChargeRule:
    if charge is None:
        return lambda status: status < 400
    if callable(charge):
        return charge
    return frozenset(charge).__contains__


_limit_by = limit_by  # the module function, where a parameter has its name
