"""Stores written by meterware's schema 1 are migrated on open, through schema 2 to 3:
lifetime requests and last use move from the keys into rollups, monthly counters into
windows, plans into accounts (where an account's keys agree on one); nothing a user sees
changes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from meterware.storage import KeyTotals, UsageRow, storage_from_url
from meterware.storage.base import SCHEMA_VERSION
from tests.backends import PostgresBackend, require_postgres

NOW = 1_776_000_000.0  # 2026-04-12T13:20:00Z
APRIL_END = 1_777_593_600.0  # 2026-05-01T00:00:00Z
ANCHORED_END = 1_776_902_400.0  # 2026-04-23T00:00:00Z: the period of a key anchored on the 23rd

V1_SQLITE = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    permission TEXT NOT NULL,
    website_id TEXT,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    per_minute INTEGER,
    monthly_limit INTEGER,
    monthly_credits INTEGER,
    billing_anchor_day INTEGER,
    last_used_at REAL,
    total_requests INTEGER NOT NULL DEFAULT 0,
    total_calls INTEGER NOT NULL DEFAULT 0,
    total_credits INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_by_account ON keys(account_id, created_at);
CREATE INDEX IF NOT EXISTS keys_by_version ON keys(version);
CREATE TABLE IF NOT EXISTS key_secrets (
    hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys(id),
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS key_secrets_by_key ON key_secrets(key_id);
CREATE TABLE IF NOT EXISTS counters (
    subject TEXT NOT NULL,
    period TEXT NOT NULL,
    count INTEGER NOT NULL,
    granted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_daily (
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    action TEXT NOT NULL,
    calls INTEGER NOT NULL,
    credits INTEGER NOT NULL,
    PRIMARY KEY (account_id, key_id, day, action)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_account ON usage_daily(account_id, day);
CREATE TABLE IF NOT EXISTS actions (action TEXT PRIMARY KEY, label TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('key_seq', 0);
"""


V1_POSTGRES = (
    "CREATE TABLE {s}.meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "CREATE TABLE {s}.accounts (id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL)",
    """CREATE TABLE {s}.keys (
        id TEXT PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES {s}.accounts (id),
        name TEXT NOT NULL,
        tier TEXT NOT NULL,
        permission TEXT NOT NULL,
        website_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION,
        per_minute BIGINT,
        monthly_limit BIGINT,
        monthly_credits BIGINT,
        billing_anchor_day INTEGER,
        last_used_at DOUBLE PRECISION,
        total_requests BIGINT NOT NULL DEFAULT 0,
        total_calls BIGINT NOT NULL DEFAULT 0,
        total_credits BIGINT NOT NULL DEFAULT 0,
        version BIGINT NOT NULL
    )""",
    "CREATE INDEX keys_by_account ON {s}.keys (account_id, created_at)",
    "CREATE INDEX keys_by_version ON {s}.keys (version)",
    """CREATE TABLE {s}.key_secrets (
        hash TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES {s}.keys (id),
        expires_at DOUBLE PRECISION
    )""",
    "CREATE INDEX key_secrets_by_key ON {s}.key_secrets (key_id)",
    """CREATE TABLE {s}.counters (
        subject TEXT NOT NULL,
        period TEXT NOT NULL,
        count BIGINT NOT NULL,
        granted BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (subject, period)
    )""",
    """CREATE TABLE {s}.usage_daily (
        account_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        day TEXT NOT NULL,
        action TEXT NOT NULL,
        calls BIGINT NOT NULL,
        credits BIGINT NOT NULL,
        PRIMARY KEY (account_id, key_id, day, action)
    )""",
    "CREATE INDEX usage_by_account ON {s}.usage_daily (account_id, day)",
    "CREATE TABLE {s}.actions (action TEXT PRIMARY KEY, label TEXT NOT NULL)",
    "INSERT INTO {s}.meta (name, value) VALUES ('key_seq', 0)",
)

KEYS = [
    # id, account, tier, anchor, last used, total requests, calls, credits
    ("key_a", "acct_1", "pro", None, NOW - 60, 120, 40, 400),
    ("key_b", "acct_1", "pro", 23, NOW - 86400 * 40, 9, 0, 0),
    ("key_c", "acct_2", "free", None, None, 0, 0, 0),
    ("key_d", "acct_2", "scale", None, None, 0, 0, 0),
]
COUNTERS = [
    ("requests:key_a", "2026-04-01", 30),
    ("credits:key_a", "2026-04-01", 100),
    ("requests:key_a", "2026-03-01", 90),  # an ended period: dropped
    ("requests:key_b", "2026-03-23", 4),  # key_b's current period started 23 March
    ("requests:acct_9", "2026-04-01", 7),  # an account principal's month
]
ROLLUPS = [
    ("acct_1", "key_a", "2026-04-10", "image", 30, 300),
    ("acct_1", "key_a", "2026-03-02", "image", 10, 100),
]


def _rows() -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    keys = [
        (k, a, k, tier, "full_access", None, NOW - 86400 * 90, None, None, None, None, None,
         anchor, last, total, calls, credits, i + 1)
        for i, (k, a, tier, anchor, last, total, calls, credits) in enumerate(KEYS)
    ]  # fmt: skip
    accounts = sorted({(a, NOW - 86400 * 90) for _, a, *_ in KEYS})
    return keys, accounts


async def check_migrated(url: str) -> None:
    """What every migrated store must show."""
    store = storage_from_url(url)
    async with store:
        assert await store.schema_version() == SCHEMA_VERSION
        # lifetime numbers and last use are what schema 1 held on the key
        assert await store.key_totals("key_a") == KeyTotals(120, 40, 400, NOW - 60)
        assert await store.key_totals("key_b") == KeyTotals(9, 0, 0, NOW - 86400 * 40)
        assert await store.key_totals("key_c") == KeyTotals()
        key = await store.get_key("key_a")
        assert key is not None and key.last_used_at == NOW - 60
        # this period's requests are this period's counter; the rest lies before it
        april = {"first_day": "2026-04-01", "last_day": "2026-04-30"}
        month = await store.totals(account_id="acct_1", key_id="key_a", **april)
        assert (month.requests, month.credits) == (30, 300)
        anchored = await store.totals(
            account_id="acct_1", key_id="key_b", first_day="2026-03-23", last_day="2026-04-22"
        )
        assert anchored.requests == 4
        principal = await store.totals(account_id="acct_9", key_id=None, **april)
        assert principal.requests == 7
        # the credits report is unchanged: requests-only rows carry no calls
        rows = await store.usage(account_id="acct_1", key_id="key_a", **april)
        assert [r for r in rows if r.calls] == [UsageRow("2026-04-10", "image", 30, 300)]
        # live counters became windows, ended ones are gone
        assert await store.counter("month:key_a", NOW) == 30
        assert await store.counter("credits:key_a", NOW) == 100
        assert await store.counter("month:key_b", NOW) == 4
        assert await store.counter("month:@acct_9", NOW) == 7
        dump = await store.dump()  # type: ignore[attr-defined]
        assert dump.counters == {
            "month:key_a": (APRIL_END, 30),
            "credits:key_a": (APRIL_END, 100),
            "month:key_b": (ANCHORED_END, 4),
            "month:@acct_9": (APRIL_END, 7),
        }
        # plans: acct_1's keys agreed (its plan now), acct_2's did not (they keep theirs)
        accounts = {a.id: a.tier for a in await store.list_accounts()}
        assert accounts == {"acct_1": "pro", "acct_2": "free"}
        keys = {k.id: (k.tier, k.effective_tier) for k in await store.list_keys()}
        assert keys == {
            "key_a": (None, "pro"),
            "key_b": (None, "pro"),
            "key_c": ("free", "free"),
            "key_d": ("scale", "scale"),
        }
    # and it opens again without migrating twice
    async with storage_from_url(url) as again:
        assert await again.key_totals("key_a") == KeyTotals(120, 40, 400, NOW - 60)


@pytest.fixture(autouse=True)
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The migration reads the time to drop ended periods: 2026-04-12."""
    import time as time_module

    monkeypatch.setattr(time_module, "time", lambda: NOW)


@pytest.mark.sqlite
async def test_sqlite_schema_1_is_migrated(tmp_path: Path) -> None:
    """A schema-1 SQLite file opens as schema 3 with every number and tier kept."""
    path = tmp_path / "v1.db"
    keys, accounts = _rows()
    with sqlite3.connect(path) as db:
        db.executescript(V1_SQLITE)
        db.executemany("INSERT INTO accounts VALUES (?, ?)", accounts)
        db.executemany(f"INSERT INTO keys VALUES ({', '.join('?' * 18)})", keys)
        db.executemany("INSERT INTO counters (subject, period, count) VALUES (?, ?, ?)", COUNTERS)
        db.executemany("INSERT INTO usage_daily VALUES (?, ?, ?, ?, ?, ?)", ROLLUPS)
        db.execute("PRAGMA user_version = 1")
    db.close()
    await check_migrated(f"sqlite:///{path}")


@pytest.mark.postgres
async def test_postgres_schema_1_is_migrated() -> None:
    """A schema-1 PostgreSQL schema opens as schema 3 with every number and tier kept."""
    import asyncpg

    backend = PostgresBackend(require_postgres())
    s = f'"{backend.schema}"'
    keys, accounts = _rows()
    conn = await asyncpg.connect(backend.server_url)
    try:
        await conn.execute(f"CREATE SCHEMA {s}")
        for statement in V1_POSTGRES:
            await conn.execute(statement.format(s=s))
        await conn.execute(f"INSERT INTO {s}.meta VALUES ('schema_version', 1)")
        await conn.executemany(f"INSERT INTO {s}.accounts VALUES ($1, $2)", accounts)
        places = ", ".join(f"${i}" for i in range(1, 19))
        columns = (
            "id, account_id, name, tier, permission, website_id, created_at, expires_at, "
            "revoked_at, per_minute, monthly_limit, monthly_credits, billing_anchor_day, "
            "last_used_at, total_requests, total_calls, total_credits, version"
        )
        await conn.executemany(f"INSERT INTO {s}.keys ({columns}) VALUES ({places})", keys)
        await conn.executemany(
            f"INSERT INTO {s}.counters (subject, period, count) VALUES ($1, $2, $3)", COUNTERS
        )
        await conn.executemany(
            f"INSERT INTO {s}.usage_daily VALUES ($1, $2, $3, $4, $5, $6)", ROLLUPS
        )
    finally:
        await conn.close()
    try:
        await check_migrated(backend.url)
    finally:
        await backend.cleanup()
