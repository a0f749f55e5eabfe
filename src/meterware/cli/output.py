"""How the `meterware` command prints: aligned tables for people, JSON for programs."""

from __future__ import annotations

import sys
import time
from typing import Any

from meterware.clock import isoformat_ms
from meterware.keys import ApiKey

ONCE = "Store the secret now: it will not be shown again."


def status(key: ApiKey, now: float) -> str:
    if key.active(now):
        return "active"
    return "revoked" if key.revoked_at is not None and key.revoked_at <= now else "expired"


def key_json(key: ApiKey, now: float) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "account": key.account_id,
        "tier": key.tier,
        "permission": key.permission,
        "website_id": key.website_id,
        "status": status(key, now),
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "last_used_at": iso(key.last_used_at),
        "overrides": overrides(key),
    }


def overrides(key: ApiKey) -> dict[str, int | None]:
    return {
        "per_minute": key.per_minute,
        "monthly_limit": key.monthly_limit,
        "monthly_credits": key.monthly_credits,
        "billing_anchor_day": key.billing_anchor_day,
    }


def key_rows(key: ApiKey, now: float) -> list[tuple[str, str]]:
    given = ", ".join(f"{k} {v}" for k, v in overrides(key).items() if v is not None)
    return [
        ("id", key.id),
        ("name", key.name),
        ("account", key.account_id),
        ("tier", key.tier),
        ("permission", key.permission),
        ("website", key.website_id or "-"),
        ("status", status(key, now)),
        ("created", short(key.created_at)),
        ("expires", short(key.expires_at)),
        ("last used", short(key.last_used_at)),
        ("overrides", given or "-"),
    ]


def iso(ts: float | None) -> str | None:
    return None if ts is None else isoformat_ms(ts)


def short(ts: float | None) -> str:
    """A time for people: `2026-04-12 14:30Z`, or `never`."""
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%MZ", time.gmtime(ts))


def count(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def pairs(rows: list[tuple[str, str]]) -> str:
    return table([[f"{name}:", value] for name, value in rows])


def fail(message: str, status: int) -> int:
    """Print a failure as one line on stderr; the exit status."""
    print(" ".join(message.split()), file=sys.stderr)
    return status
