"""How the `meterware` command prints: aligned tables for people, JSON for programs."""

from __future__ import annotations

import sys
import time

from meterware.keys import Account, ApiKey
from meterware.views import key_status, overrides

__all__ = ["account_rows", "count", "fail", "key_rows", "pairs", "short", "table"]

ONCE = "Store the secret now: it will not be shown again."


def key_rows(key: ApiKey, now: float) -> list[tuple[str, str]]:
    given = ", ".join(f"{k} {v}" for k, v in overrides(key).items() if v is not None)
    return [
        ("id", key.id),
        ("name", key.name),
        ("account", key.account_id),
        ("tier", key.effective_tier + (" (the account's)" if key.tier is None else " (own)")),
        ("permission", key.permission),
        ("website", key.website_id or "-"),
        ("status", key_status(key, now)),
        ("created", short(key.created_at)),
        ("expires", short(key.expires_at)),
        ("last used", short(key.last_used_at)),
        ("overrides", given or "-"),
    ]


def account_rows(account: Account, keys: int) -> list[tuple[str, str]]:
    return [
        ("id", account.id),
        ("name", account.name or "-"),
        ("tier", account.tier),
        ("external id", account.external_id or "-"),
        ("stripe customer", account.stripe_customer_id or "-"),
        ("created", short(account.created_at)),
        ("keys", str(keys)),
    ]


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
