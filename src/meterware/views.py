"""Accounts and keys as JSON: one shape for the `meterware` command's `--json`, the HTTP
admin app and the self-serve keys app. Times are ISO 8601 UTC with milliseconds; a
secret never appears here (create and rotate add it to their own answers)."""

from __future__ import annotations

from typing import Any

from meterware.clock import isoformat_ms
from meterware.keys import Account, ApiKey

__all__ = ["account_json", "iso", "key_json", "key_status", "overrides"]


def iso(ts: float | None) -> str | None:
    return None if ts is None else isoformat_ms(ts)


def key_status(key: ApiKey, now: float) -> str:
    """`active`, `revoked` or `expired`."""
    if key.active(now):
        return "active"
    return "revoked" if key.revoked_at is not None and key.revoked_at <= now else "expired"


def overrides(key: ApiKey) -> dict[str, int | None]:
    return {
        "per_minute": key.per_minute,
        "monthly_limit": key.monthly_limit,
        "monthly_credits": key.monthly_credits,
        "billing_anchor_day": key.billing_anchor_day,
    }


def key_json(key: ApiKey, now: float) -> dict[str, Any]:
    """A key: `tier` is the one in force, `own_tier` the key's own (None: it follows its
    account's plan)."""
    return {
        "id": key.id,
        "name": key.name,
        "account": key.account_id,
        "tier": key.effective_tier,
        "own_tier": key.tier,
        "permission": key.permission,
        "website_id": key.website_id,
        "status": key_status(key, now),
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "last_used_at": iso(key.last_used_at),
        "overrides": overrides(key),
    }


def account_json(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "tier": account.tier,
        "external_id": account.external_id,
        "stripe_customer_id": account.stripe_customer_id,
        "created_at": iso(account.created_at),
    }
