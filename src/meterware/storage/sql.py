"""What the SQL backends share: a key's columns, reading a whole store, and the steps from
schema 1 to schema 2 and from 2 to 3."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from meterware.clock import day_of, midnight, month_period
from meterware.keys import Account, ApiKey
from meterware.storage.records import OUTCOME_FIELDS, BalanceDraw, CreditGrant, Rollup, Snapshot

__all__ = [
    "ACCOUNT_COLUMNS",
    "KEY_COLUMNS",
    "LIVE_KEYS",
    "ROLLUP_SELECT",
    "STORED_KEY_COLUMNS",
    "V1_ROLLUP_COLUMNS",
    "dump_queries",
    "key_select",
    "key_values",
    "snapshot_of",
    "v1_to_v2",
    "v2_to_v3",
]

KEY_COLUMNS = (
    "id", "account_id", "name", "tier", "permission", "website_id", "created_at",
    "last_used_at", "expires_at", "revoked_at", "per_minute", "monthly_limit",
    "monthly_credits", "billing_anchor_day", "account_tier",
)  # fmt: skip
"""An `ApiKey`'s fields in order: `ApiKey(*row)` for a row of `key_select`."""

STORED_KEY_COLUMNS = tuple(c for c in KEY_COLUMNS if c not in ("last_used_at", "account_tier"))
"""The columns of the `keys` table: a key's last use is read from its rollups, its
account's tier from the account."""

LIVE_KEYS = (
    "SELECT count(*) FROM {p}keys WHERE account_id = {a} "
    "AND (revoked_at IS NULL OR revoked_at > {n}) AND (expires_at IS NULL OR expires_at > {n})"
)
"""How many live keys an account has (format: prefix, account and time parameters)."""

ROLLUP_SELECT = ", ".join((
    "account_id", "key_id", "action", "day", "calls", "credits", "requests", "last_used_at",
    *OUTCOME_FIELDS,
))  # fmt: skip
"""A `Rollup`'s columns in order: `Rollup(*row)`."""

ACCOUNT_COLUMNS = ("id", "created_at", "tier", "name", "external_id", "stripe_customer_id")
"""An `Account`'s fields in order: `Account(*row)` for a row of these columns."""


def key_select(prefix: str = "", alias: str = "k") -> str:
    """The select list of an `ApiKey` from `keys` (as `alias`), its last use summed from
    its rollups; `prefix` goes before table names (`""`, `"schema".`)."""
    read = {
        "last_used_at": f"(SELECT max(u.last_used_at) FROM {prefix}usage_daily u "
        f"WHERE u.account_id = {alias}.account_id AND u.key_id = {alias}.id)",
        "account_tier": f"(SELECT a.tier FROM {prefix}accounts a WHERE a.id = {alias}.account_id)",
    }
    return ", ".join(read.get(c, f"{alias}.{c}") for c in KEY_COLUMNS)


def key_values(key: ApiKey) -> tuple[Any, ...]:
    """A key's values in `STORED_KEY_COLUMNS` order."""
    return tuple(getattr(key, column) for column in STORED_KEY_COLUMNS)


def dump_queries(prefix: str) -> dict[str, str]:
    """One SELECT per table; `prefix` is put before each table name (`""`, `"schema".`)."""
    return {
        "accounts": f"SELECT {', '.join(ACCOUNT_COLUMNS)} FROM {prefix}accounts",
        "keys": f"SELECT {', '.join(STORED_KEY_COLUMNS)} FROM {prefix}keys",
        "secrets": f"SELECT hash, key_id, expires_at FROM {prefix}key_secrets",
        "counters": f"SELECT counter, window_end, count FROM {prefix}windows",
        "rollups": f"SELECT {ROLLUP_SELECT} FROM {prefix}usage_daily",
        "labels": f"SELECT action, label FROM {prefix}actions",
        "grants": f"SELECT account_id, grant_id, amount, granted_at, expires_at "
        f"FROM {prefix}grants",
        "draws": f"SELECT account_id, grant_id, action, day, credits FROM {prefix}balance_daily",
    }


def snapshot_of(tables: dict[str, list[Sequence[Any]]]) -> Snapshot:
    """A `Snapshot` from the rows of `dump_queries`."""
    snap = Snapshot()
    snap.accounts = {str(r[0]): Account(*r) for r in tables["accounts"]}
    for row in tables["keys"]:
        key = ApiKey(**dict(zip(STORED_KEY_COLUMNS, row, strict=True)))
        snap.keys[key.id] = key
    snap.secrets = {str(r[0]): (str(r[1]), r[2]) for r in tables["secrets"]}
    snap.counters = {str(r[0]): (float(r[1]), int(r[2])) for r in tables["counters"]}
    for r in tables["rollups"]:
        rollup = Rollup(*r)
        snap.rollups[(rollup.account_id, rollup.key_id, rollup.action, rollup.day)] = rollup
    snap.labels = {str(r[0]): str(r[1]) for r in tables["labels"]}
    for r in tables["grants"]:
        grant = CreditGrant(*r)
        snap.grants[(grant.account_id, grant.grant_id)] = grant
    for r in tables["draws"]:
        draw = BalanceDraw(*r)
        snap.draws[(draw.account_id, draw.grant_id, draw.day, draw.action)] = draw
    return snap


# -- schema 1 -> 2 -----------------------------------------------------------------------


@dataclass(frozen=True)
class V1Key:
    """What schema 1 kept of a key that schema 2 keeps in rollups and windows."""

    id: str
    account_id: str
    anchor_day: int | None
    total_requests: int
    last_used_at: float | None


def v1_to_v2(
    keys: Iterable[V1Key], counters: Iterable[tuple[str, str, int]], now: float
) -> tuple[list[Rollup], list[tuple[str, float, int]]]:
    """Schema 2's rows for what schema 1 kept apart from its rollups.

    Schema 1 kept each key's lifetime requests and last use on the key, and monthly
    counters as `(requests:<subject>, <period start>)` rows. Schema 2 sums both from
    rollups, and keeps one window per counter. Requests from before the upgrade become
    rollups with the action `""`: this period's (the counter of the current period) on
    the period's first day, the rest on the day of the key's last use before it. Counters
    of periods that have ended are dropped; live ones become windows (`month:` for
    requests, `credits:` for credits; an account's subject is `@<account>`).
    """
    by_id = {key.id: key for key in keys}
    rollups: list[Rollup] = []
    windows: list[tuple[str, float, int]] = []
    this_month: dict[str, tuple[int, float]] = {}  # subject -> (requests, period start)
    for name, period_id, count in counters:
        kind, _, subject = name.partition(":")
        key = by_id.get(subject)
        anchor = (key.anchor_day if key is not None else None) or 1
        period = month_period(midnight(date.fromisoformat(period_id)), anchor)
        if period.end <= now or kind not in ("requests", "credits"):
            continue
        counter_subject = subject if key is not None else f"@{subject}"
        prefix = "month" if kind == "requests" else "credits"
        windows.append((f"{prefix}:{counter_subject}", period.end, count))
        if kind == "requests":
            this_month[subject] = (count, period.start)
    for subject, (count, began) in this_month.items():
        if subject not in by_id and count:  # an account principal's requests
            rollups.append(_before(subject, "", day_of(began), count, None))
    for key in by_id.values():
        current = month_period(now, key.anchor_day or 1).start
        month, began = this_month.get(key.id, (0, current))
        month = min(month, key.total_requests)
        if month:
            rollups.append(_before(key.account_id, key.id, day_of(began), month, key.last_used_at))
        rest = key.total_requests - month
        if rest:
            day = day_of(key.last_used_at if key.last_used_at is not None else now)
            day = min(day, day_of(began) - timedelta(days=1))
            rollups.append(_before(key.account_id, key.id, day, rest, key.last_used_at))
    return rollups, windows


V1_ROLLUP_COLUMNS = (
    "account_id", "key_id", "day", "action", "calls", "credits", "requests", "last_used_at"
)  # fmt: skip
"""The rollup columns schema 2 has: what the step from schema 1 writes."""


def _before(account_id: str, key_id: str, day: date, requests: int, last: float | None) -> Rollup:
    rollup = Rollup(account_id, key_id, "", day.isoformat(), 0, 0)
    rollup.requests, rollup.last_used_at = requests, last
    return rollup


# -- schema 2 -> 3 -----------------------------------------------------------------------


def v2_to_v3(prefix: str) -> tuple[str, str]:
    """Plans move to accounts: an account whose keys all have one tier gets it, and its
    keys follow the account from then on (their own tier becomes NULL); the keys of an
    account whose keys disagree keep their own tiers. Run in this order, after the
    account's `tier` column exists and the key's may be NULL; `prefix` as for
    `dump_queries`.

    (Each statement names the updated table bare inside its subquery: that is the row
    being updated, in SQLite and PostgreSQL alike. Within one UPDATE, a key whose tier
    is set to NULL leaves the count of distinct tiers of its account at 1.)
    """
    agreed = "(SELECT count(DISTINCT k.tier) FROM {p}keys k WHERE k.account_id = {t}) = 1"
    return (
        f"UPDATE {prefix}accounts SET tier = (SELECT min(k.tier) FROM {prefix}keys k "
        f"WHERE k.account_id = accounts.id) "
        f"WHERE {agreed.format(p=prefix, t='accounts.id')}",
        f"UPDATE {prefix}keys SET tier = NULL WHERE {agreed.format(p=prefix, t='keys.account_id')}",
    )
