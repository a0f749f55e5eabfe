"""PostgreSQL through an asyncpg connection pool: for several processes or hosts sharing
one set of keys, quotas and usage.

Every table lives in one schema (`public` unless told otherwise), created and migrated on
`open`. Writes that must be atomic are single statements (`reserve`, `add`, `release`) or
one transaction (`create_key`, `update_key`, `add_secret`, `record`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from meterware.errors import ConfigurationError, StorageError
from meterware.keys import ApiKey
from meterware.storage.base import (
    SCHEMA_VERSION,
    UPDATABLE_KEY_FIELDS,
    KeyTotals,
    Storage,
    UsageBatch,
    UsageRow,
    redact,
    retiring,
)

__all__ = ["PostgresStorage"]

# `{s}` is the quoted schema name; everything else is a parameter.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
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
    ),
}

_KEY_FIELDS = (
    "id, account_id, name, tier, permission, website_id, created_at, last_used_at, "
    "expires_at, revoked_at, per_minute, monthly_limit, monthly_credits, billing_anchor_day"
)
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# A key change takes the next version by incrementing this row inside its transaction.
# The row stays locked until that transaction ends, so versions commit strictly in order
# and a rolled-back change gives its number back. A sequence would not do: `nextval` is
# not transactional, so version 8 can commit before version 7, and a poller that moved
# its cursor to 8 would never see 7. With the row, `key_changes` reads the counter and
# the keys in one snapshot and is exact: every version up to the cursor is visible.
# Key changes are admin operations, so queueing them on one row costs nothing.
_NEXT_VERSION = "UPDATE {s}.meta SET value = value + 1 WHERE name = 'key_seq' RETURNING value"


class PostgresStorage(Storage):
    """`postgresql://user:password@host:5432/dbname?schema=meterware` (or `postgres://`).

    Options, as keyword arguments of `storage_from_url` or of the class:

    - `schema` - the PostgreSQL schema holding meterware's tables, created on `open` if
      missing. May also be given as the URL's `?schema=` query parameter; the keyword
      wins. Defaults to `public`.
    - `min_size`, `max_size` - the connection pool's bounds. Default to 1 and 10.

    Other query parameters of the URL are asyncpg's (`sslmode`, `connect_timeout`, ...).
    The password never appears in `repr` or in errors.
    """

    schemes = ("postgresql", "postgres")
    resource_attribute = "_pool"
    driver_errors = (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        OSError,
        asyncio.TimeoutError,
    )
    unavailable_errors = (
        OSError,
        asyncio.TimeoutError,
        asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.AdminShutdownError,
        asyncpg.TooManyConnectionsError,
    )

    def __init__(self, url: str = "postgresql://localhost/meterware", **options: Any) -> None:
        super().__init__(url, **options)
        dsn, schema = _split_schema(url)
        schema = options.get("schema") or schema or "public"
        if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
            raise ConfigurationError(
                f"bad schema {schema!r} for {redact(url)!r}: use 1-63 of A-Za-z0-9_"
            )
        min_size, max_size = options.get("min_size", 1), options.get("max_size", 10)
        if not (isinstance(min_size, int) and isinstance(max_size, int)) or not (
            0 <= min_size <= max_size and max_size >= 1
        ):
            raise ConfigurationError(
                f"pool size must be integers with 0 <= min_size <= max_size, max_size >= 1; "
                f"got min_size={min_size!r}, max_size={max_size!r}"
            )
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self._dsn = dsn
        self._pool: Any = None
        self._opening = asyncio.Lock()
        self._q = _Queries(f'"{schema}"')  # validated above, so quoting is enough

    @property
    def pool(self) -> Any:
        """The asyncpg pool; `StorageError` when the store is not open."""
        if self._pool is None:
            raise StorageError(f"{self!r} is not open: call `await store.open()` first")
        return self._pool

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        async with self._opening:
            if self._pool is not None:
                return
            pool = await asyncpg.create_pool(
                self._dsn, min_size=self.min_size, max_size=self.max_size
            )
            try:
                await self._migrate(pool)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            self._opened = True

    async def _migrate(self, pool: Any) -> None:
        s = self._q.s
        async with pool.acquire() as conn, conn.transaction():
            # Two processes opening a fresh database at once: the second waits here
            # until the first has committed, then finds the schema up to date. The lock
            # is per schema and ends with the transaction.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_id(self.schema))
            if not await conn.fetchval(
                "SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema
            ):
                await conn.execute(f"CREATE SCHEMA {s}")
            version = 0
            if await conn.fetchval("SELECT to_regclass($1)", f"{s}.meta") is not None:
                version = await conn.fetchval(
                    f"SELECT value FROM {s}.meta WHERE name = 'schema_version'"
                )
                version = int(version or 0)
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{self!r} has schema version {version}; this meterware knows "
                    f"{SCHEMA_VERSION}: upgrade meterware"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    await conn.execute(statement.format(s=s))
            if version < SCHEMA_VERSION:
                await conn.execute(
                    f"INSERT INTO {s}.meta (name, value) VALUES ('schema_version', $1) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    SCHEMA_VERSION,
                )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        self._opened = False
        if pool is not None:
            try:  # graceful: wait for connections in use to come back, for a while
                await asyncio.wait_for(pool.close(), timeout=10)
            except asyncio.TimeoutError:
                pool.terminate()

    async def schema_version(self) -> int:
        value = await self.pool.fetchval(
            f"SELECT value FROM {self._q.s}.meta WHERE name = 'schema_version'"
        )
        return int(value or 0)

    # -- accounts and keys -----------------------------------------------------------

    async def ensure_account(self, account_id: str, now: float) -> bool:
        status = await self.pool.execute(self._q.ensure_account, account_id, now)
        return bool(status == "INSERT 0 1")

    async def list_accounts(self) -> list[str]:
        rows = await self.pool.fetch(f"SELECT id FROM {self._q.s}.accounts ORDER BY id")
        return [str(r[0]) for r in rows]

    async def create_key(self, key: ApiKey, secret_hash: str) -> None:
        q = self._q
        async with self.pool.acquire() as conn, conn.transaction():
            version = await conn.fetchval(q.next_version)
            await conn.execute(q.insert_key, *_values(key), version)
            await conn.execute(q.insert_secret, secret_hash, key.id)

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self.pool.fetchrow(self._q.get_key, key_id)
        return None if row is None else ApiKey(*row)

    async def find_key(self, secret_hash: str, now: float) -> ApiKey | None:
        row = await self.pool.fetchrow(self._q.find_key, secret_hash, now)
        return None if row is None else retiring(ApiKey(*row[:-1]), row[-1])

    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        q = self._q
        if account_id is None:
            rows = await self.pool.fetch(q.list_keys)
        else:
            rows = await self.pool.fetch(q.list_account_keys, account_id)
        return [ApiKey(*r) for r in rows]

    async def update_key(self, key_id: str, **changes: Any) -> ApiKey | None:
        unknown = set(changes) - UPDATABLE_KEY_FIELDS
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        sets = "".join(f"{name} = ${i}, " for i, name in enumerate(changes, start=3))
        sql = (
            f"UPDATE {self._q.s}.keys SET {sets}version = $2 WHERE id = $1 RETURNING {_KEY_FIELDS}"
        )
        async with self.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                version = await conn.fetchval(self._q.next_version)
                row = await conn.fetchrow(sql, key_id, version, *changes.values())
            except BaseException:
                await transaction.rollback()
                raise
            if row is None:  # no such key: give the version back
                await transaction.rollback()
                return None
            await transaction.commit()
        return ApiKey(*row)

    async def add_secret(self, key_id: str, secret_hash: str, *, retire_old_at: float) -> None:
        q = self._q
        async with self.pool.acquire() as conn, conn.transaction():
            version = await conn.fetchval(q.next_version)
            # LEAST ignores NULL: a secret with no end gets `retire_old_at`, one already
            # retiring keeps the earlier time.
            await conn.execute(q.retire_secrets, key_id, retire_old_at)
            await conn.execute(q.insert_secret, secret_hash, key_id)
            await conn.execute(q.set_version, key_id, version)

    async def key_changes(self, since: int) -> tuple[int, list[str]]:
        # One statement, one snapshot: the cursor and the keys agree (see _NEXT_VERSION).
        row = await self.pool.fetchrow(self._q.key_changes, since)
        cursor = int(row[0])
        if since <= 0:
            return cursor, []
        return cursor, [str(key_id) for key_id in row[1]]

    async def key_tiers(self) -> set[str]:
        rows = await self.pool.fetch(f"SELECT DISTINCT tier FROM {self._q.s}.keys")
        return {str(r[0]) for r in rows}

    # -- counters --------------------------------------------------------------------

    async def reserve(self, subject: str, period: str, want: int, limit: int) -> tuple[int, int]:
        # One statement, one round trip. In ON CONFLICT DO UPDATE every right-hand side
        # reads the row as it was (`c.count` is the old count), so `granted` and the new
        # `count` agree; a racing caller waits on the row lock and then sees our count.
        row = await self.pool.fetchrow(self._q.reserve, subject, period, want, limit)
        return int(row[0]), int(row[1])

    async def release(self, subject: str, period: str, amount: int) -> None:
        await self.pool.execute(self._q.release, subject, period, amount)

    async def add(self, subject: str, period: str, amount: int) -> int:
        return int(await self.pool.fetchval(self._q.add, subject, period, amount))

    async def counter(self, subject: str, period: str) -> int:
        value = await self.pool.fetchval(self._q.counter, subject, period)
        return 0 if value is None else int(value)

    # -- usage ledger ----------------------------------------------------------------

    async def record(self, batch: UsageBatch) -> None:
        if not batch:
            return
        q = self._q
        # Rows are written in key order so that two flushes touching the same rows take
        # their locks in the same order and cannot deadlock.
        rollups = sorted(
            (r.account_id, r.key_id, r.day, r.action, r.calls, r.credits) for r in batch.rollups
        )
        totals = batch.key_totals()
        async with self.pool.acquire() as conn, conn.transaction():
            if rollups:
                await conn.executemany(q.add_rollup, rollups)
            if totals:
                await conn.executemany(
                    q.add_totals,
                    [
                        (key_id, t.requests, t.calls, t.credits, t.last_used_at)
                        for key_id, t in sorted(totals.items())
                    ],
                )
            if batch.labels:
                await conn.executemany(q.set_label, sorted(batch.labels.items()))
            if batch.counters:
                await conn.executemany(q.add, sorted(batch.counters))

    async def usage(
        self, *, account_id: str, key_id: str | None, first_day: str, last_day: str
    ) -> list[UsageRow]:
        q = self._q
        if key_id is None:
            rows = await self.pool.fetch(q.account_usage, account_id, first_day, last_day)
        else:
            rows = await self.pool.fetch(q.key_usage, account_id, key_id, first_day, last_day)
        return [UsageRow(str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]

    async def key_totals(self, key_id: str) -> KeyTotals:
        row = await self.pool.fetchrow(self._q.key_totals, key_id)
        return KeyTotals() if row is None else KeyTotals(*row)

    async def labels(self) -> dict[str, str]:
        rows = await self.pool.fetch(f"SELECT action, label FROM {self._q.s}.actions")
        return {str(r[0]): str(r[1]) for r in rows}


class _Queries:
    """The statements, with the schema filled in once per store."""

    def __init__(self, s: str) -> None:
        self.s = s
        k = ", ".join(f"k.{f.strip()}" for f in _KEY_FIELDS.split(","))
        self.next_version = _NEXT_VERSION.format(s=s)
        self.ensure_account = (
            f"INSERT INTO {s}.accounts (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING"
        )
        self.insert_key = (
            f"INSERT INTO {s}.keys ({_KEY_FIELDS}, version) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        )
        self.insert_secret = (
            f"INSERT INTO {s}.key_secrets (hash, key_id, expires_at) VALUES ($1, $2, NULL)"
        )
        self.get_key = f"SELECT {_KEY_FIELDS} FROM {s}.keys WHERE id = $1"
        self.find_key = (
            f"SELECT {k}, t.expires_at FROM {s}.key_secrets t JOIN {s}.keys k ON k.id = t.key_id "
            "WHERE t.hash = $1 AND (t.expires_at IS NULL OR t.expires_at > $2)"
        )
        self.list_keys = f"SELECT {_KEY_FIELDS} FROM {s}.keys ORDER BY created_at, id"
        self.list_account_keys = (
            f"SELECT {_KEY_FIELDS} FROM {s}.keys WHERE account_id = $1 ORDER BY created_at, id"
        )
        self.retire_secrets = (
            f"UPDATE {s}.key_secrets SET expires_at = LEAST(expires_at, $2) WHERE key_id = $1"
        )
        self.set_version = f"UPDATE {s}.keys SET version = $2 WHERE id = $1"
        self.key_changes = (
            f"SELECT m.value, ARRAY(SELECT id FROM {s}.keys WHERE version > $1 "
            f"ORDER BY version) FROM {s}.meta m WHERE m.name = 'key_seq'"
        )
        self.reserve = (
            f"INSERT INTO {s}.counters AS c (subject, period, count, granted) "
            "VALUES ($1, $2, LEAST($3::bigint, GREATEST(0, $4::bigint)), "
            "LEAST($3::bigint, GREATEST(0, $4::bigint))) "
            "ON CONFLICT (subject, period) DO UPDATE SET "
            "granted = LEAST($3::bigint, GREATEST(0, $4::bigint - c.count)), "
            "count = c.count + LEAST($3::bigint, GREATEST(0, $4::bigint - c.count)) "
            "RETURNING granted, count"
        )
        self.release = (
            f"UPDATE {s}.counters SET count = GREATEST(0, count - $3::bigint) "
            "WHERE subject = $1 AND period = $2"
        )
        self.add = (
            f"INSERT INTO {s}.counters AS c (subject, period, count) VALUES ($1, $2, $3) "
            "ON CONFLICT (subject, period) DO UPDATE SET count = c.count + excluded.count "
            "RETURNING count"
        )
        self.counter = f"SELECT count FROM {s}.counters WHERE subject = $1 AND period = $2"
        self.add_rollup = (
            f"INSERT INTO {s}.usage_daily AS u "
            "(account_id, key_id, day, action, calls, credits) VALUES ($1, $2, $3, $4, $5, $6) "
            "ON CONFLICT (account_id, key_id, day, action) DO UPDATE SET "
            "calls = u.calls + excluded.calls, credits = u.credits + excluded.credits"
        )
        # GREATEST ignores NULL: the later of the stored and the new last use.
        self.add_totals = (
            f"UPDATE {s}.keys SET total_requests = total_requests + $2, "
            "total_calls = total_calls + $3, total_credits = total_credits + $4, "
            "last_used_at = GREATEST(last_used_at, $5) WHERE id = $1"
        )
        self.set_label = (
            f"INSERT INTO {s}.actions (action, label) VALUES ($1, $2) "
            "ON CONFLICT (action) DO UPDATE SET label = excluded.label"
        )
        self.account_usage = (
            "SELECT day, action, sum(calls)::bigint, sum(credits)::bigint "
            f"FROM {s}.usage_daily WHERE account_id = $1 AND day BETWEEN $2 AND $3 "
            "GROUP BY day, action ORDER BY day, action"
        )
        self.key_usage = (
            f"SELECT day, action, calls, credits FROM {s}.usage_daily "
            "WHERE account_id = $1 AND key_id = $2 AND day BETWEEN $3 AND $4 "
            "ORDER BY day, action"
        )
        self.key_totals = (
            "SELECT total_requests, total_calls, total_credits, last_used_at "
            f"FROM {s}.keys WHERE id = $1"
        )


def _split_schema(url: str) -> tuple[str, str | None]:
    """The URL without its `schema` query parameter (asyncpg would send it to the server
    as a setting), and that parameter."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for name, value in query if name == "schema"), None)
    rest = [(name, value) for name, value in query if name != "schema"]
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


def _lock_id(schema: str) -> int:
    """A stable 64-bit advisory lock id for migrating this schema."""
    digest = hashlib.sha256(f"meterware:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _values(key: ApiKey) -> Iterable[Any]:
    return (
        key.id, key.account_id, key.name, key.tier, key.permission, key.website_id,
        key.created_at, key.last_used_at, key.expires_at, key.revoked_at, key.per_minute,
        key.monthly_limit, key.monthly_credits, key.billing_anchor_day,
    )  # fmt: skip
