"""What the SQL backends share: a key's columns, and reading a whole store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from meterware.keys import ApiKey
from meterware.storage.records import KeyTotals, Snapshot

__all__ = ["KEY_COLUMNS", "KEY_FIELDS", "dump_queries", "key_values", "snapshot_of"]

KEY_COLUMNS = (
    "id", "account_id", "name", "tier", "permission", "website_id", "created_at",
    "last_used_at", "expires_at", "revoked_at", "per_minute", "monthly_limit",
    "monthly_credits", "billing_anchor_day",
)  # fmt: skip
"""The `keys` columns of an `ApiKey`, in the order of its fields: `ApiKey(*row)`."""

KEY_FIELDS = ", ".join(KEY_COLUMNS)


def key_values(key: ApiKey) -> tuple[Any, ...]:
    """A key's values in `KEY_COLUMNS` order."""
    return tuple(getattr(key, column) for column in KEY_COLUMNS)


def dump_queries(prefix: str) -> dict[str, str]:
    """One SELECT per table; `prefix` is put before each table name (`""`, `"schema".`)."""
    return {
        "accounts": f"SELECT id, created_at FROM {prefix}accounts",
        "keys": (
            f"SELECT {KEY_FIELDS}, total_requests, total_calls, total_credits FROM {prefix}keys"
        ),
        "secrets": f"SELECT hash, key_id, expires_at FROM {prefix}key_secrets",
        "counters": f"SELECT subject, period, count FROM {prefix}counters",
        "rollups": (
            f"SELECT account_id, key_id, action, day, calls, credits FROM {prefix}usage_daily"
        ),
        "labels": f"SELECT action, label FROM {prefix}actions",
    }


def snapshot_of(tables: dict[str, list[Sequence[Any]]]) -> Snapshot:
    """A `Snapshot` from the rows of `dump_queries`."""
    snap = Snapshot()
    snap.accounts = {str(r[0]): float(r[1]) for r in tables["accounts"]}
    width = len(KEY_COLUMNS)
    for row in tables["keys"]:
        key = ApiKey(*row[:width])
        snap.keys[key.id] = replace(key, last_used_at=None)
        requests, calls, credits = (int(n) for n in row[width:])
        snap.totals[key.id] = KeyTotals(requests, calls, credits, key.last_used_at)
    snap.secrets = {str(r[0]): (str(r[1]), r[2]) for r in tables["secrets"]}
    snap.counters = {(str(r[0]), str(r[1])): int(r[2]) for r in tables["counters"]}
    snap.rollups = {
        (str(r[0]), str(r[1]), str(r[2]), str(r[3])): (int(r[4]), int(r[5]))
        for r in tables["rollups"]
    }
    snap.labels = {str(r[0]): str(r[1]) for r in tables["labels"]}
    return snap
