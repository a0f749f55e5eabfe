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
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from meterware.errors import ConfigurationError, StorageError
from meterware.keys import ApiKey
from meterware.storage.base import (
    SCHEMA_VERSION,
    Storage,
    Transferable,
    check_updatable,
    redact,
    retiring,
)
from meterware.storage.postgres_sql import MIGRATIONS, Queries
from meterware.storage.records import KeyTotals, Snapshot, UsageBatch, UsageRow
from meterware.storage.sql import KEY_FIELDS, dump_queries, key_values, snapshot_of

__all__ = ["PostgresStorage"]

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class PostgresStorage(Storage, Transferable):
    """`postgresql://user:password@host:5432/dbname?schema=meterware` (or `postgres://`).

    Options, as keyword arguments of `storage_from_url` or of the class:

    - `schema` - the PostgreSQL schema holding meterware's tables, created on `open` if
      missing. May also be given as the URL's `?schema=` query parameter; the keyword
      wins. Defaults to `public`.
    - `min_size`, `max_size` - the connection pool's bounds. Default to 1 and 10.

    Other query parameters of the URL are asyncpg's (`sslmode`, `connect_timeout`, ...).
    The password never appears in `repr` or in errors.
    """

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
        self._q = Queries(f'"{schema}"')  # validated above, so quoting is enough

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
                for statement in MIGRATIONS[step]:
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
            await conn.execute(q.insert_key, *key_values(key), version)
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
        check_updatable(changes)
        sets = "".join(f"{name} = ${i}, " for i, name in enumerate(changes, start=3))
        sql = f"UPDATE {self._q.s}.keys SET {sets}version = $2 WHERE id = $1 RETURNING {KEY_FIELDS}"
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
        # One statement, one snapshot: the cursor and the keys agree (see NEXT_VERSION).
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

    # -- Transferable ------------------------------------------------------------------

    async def dump(self) -> Snapshot:
        tables: dict[str, list[Any]] = {}
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            for table, sql in dump_queries(f"{self._q.s}.").items():
                tables[table] = list(await conn.fetch(sql))
        return snapshot_of(tables)

    def location(self) -> str:
        return f"postgresql:{self._dsn}#{self.schema}"

    async def exists(self) -> bool:
        conn = await asyncpg.connect(self._dsn, timeout=10)
        try:
            return await conn.fetchval("SELECT to_regclass($1)", f"{self._q.s}.meta") is not None
        finally:
            await conn.close()


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
