"""PostgreSQL through an asyncpg connection pool: for several processes or hosts sharing
one set of keys, quotas and usage.

Every table lives in one schema (`public` unless told otherwise), created and migrated on
`open`. Writes that must be atomic are single statements (`reserve`, `add`, `release`) or
one transaction (`create_key`, `update_key`, `add_secret`, `record`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from meterware.errors import ConfigurationError, StorageError
from meterware.keys import Account, ApiKey
from meterware.storage.base import (
    FIRST_DAY,
    LAST_DAY,
    SCHEMA_VERSION,
    Storage,
    Transferable,
    check_account_updatable,
    check_updatable,
    redact,
    retiring,
)
from meterware.storage.postgres_sql import FINISH_V2, MIGRATIONS, V1_COUNTERS, V1_KEYS, Queries
from meterware.storage.records import (
    OUTCOME_FIELDS,
    BalanceDraw,
    Claim,
    CreditGrant,
    Grant,
    KeyTotals,
    Notice,
    OutboxEvent,
    Rollup,
    Snapshot,
    UsageBatch,
    UsageRow,
)
from meterware.storage.sql import (
    ACCOUNT_COLUMNS,
    V1_ROLLUP_COLUMNS,
    V1Key,
    dump_queries,
    key_values,
    snapshot_of,
    v1_to_v2,
    v2_to_v3,
)

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
                store_id = await pool.fetchval(self._q.store_id)
            except BaseException:
                await pool.close()
                raise
            self._store_id = f"{int(store_id):08x}"
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
                if step == 2:
                    await self._move_v1_rows(conn)
                if step == 3:
                    for statement in v2_to_v3(f"{s}."):
                        await conn.execute(statement)
            if version < SCHEMA_VERSION:
                await conn.execute(
                    f"INSERT INTO {s}.meta (name, value) VALUES ('schema_version', $1) "
                    "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    SCHEMA_VERSION,
                )

    async def _move_v1_rows(self, conn: Any) -> None:
        """Schema 1's totals and counters into rollups and windows (see `sql.v1_to_v2`)."""
        s = self._q.s
        keys = [V1Key(*row) for row in await conn.fetch(V1_KEYS.format(s=s))]
        counters = [tuple(row) for row in await conn.fetch(V1_COUNTERS.format(s=s))]
        rollups, windows = v1_to_v2(keys, counters, time.time())
        await conn.executemany(
            f"INSERT INTO {s}.usage_daily ({', '.join(V1_ROLLUP_COLUMNS)}) VALUES "
            f"({', '.join(f'${i}' for i in range(1, len(V1_ROLLUP_COLUMNS) + 1))})",
            [tuple(getattr(r, c) for c in V1_ROLLUP_COLUMNS) for r in rollups],
        )
        await conn.executemany(
            f"INSERT INTO {s}.windows (counter, window_end, count) VALUES ($1, $2, $3)", windows
        )
        for statement in FINISH_V2:
            await conn.execute(statement.format(s=s))

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

    async def ensure_account(self, account: Account) -> bool:
        values = (getattr(account, c) for c in ACCOUNT_COLUMNS)
        status = await self.pool.execute(self._q.ensure_account, *values)
        return bool(status == "INSERT 0 1")

    async def get_account(self, account_id: str) -> Account | None:
        row = await self.pool.fetchrow(self._q.get_account, account_id)
        return None if row is None else Account(*row)

    async def list_accounts(self) -> list[Account]:
        return [Account(*r) for r in await self.pool.fetch(self._q.list_accounts)]

    async def update_account(self, account_id: str, **changes: Any) -> Account | None:
        check_account_updatable(changes)
        if changes:
            sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
            async with self.pool.acquire() as conn, conn.transaction():
                status = await conn.execute(
                    self._q.update_account.format(sets=sets), account_id, *changes.values()
                )
                if status != "UPDATE 0" and "tier" in changes:
                    version = await conn.fetchval(self._q.next_version)
                    await conn.execute(self._q.account_keys_version, account_id, version)
        return await self.get_account(account_id)

    async def create_key(
        self, key: ApiKey, secret_hash: str, *, live_limit: int | None = None, now: float = 0.0
    ) -> bool:
        q = self._q
        async with self.pool.acquire() as conn, conn.transaction():
            if live_limit is not None:
                # The account's row lock queues creations of its keys: the count holds.
                await conn.execute(q.lock_account, key.account_id)
                if await conn.fetchval(q.live_keys, key.account_id, now) >= live_limit:
                    return False
            version = await conn.fetchval(q.next_version)
            await conn.execute(q.insert_key, *key_values(key), version)
            await conn.execute(q.insert_secret, secret_hash, key.id)
        return True

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
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                version = await conn.fetchval(self._q.next_version)
                status = await conn.execute(
                    self._q.update_key.format(sets=sets), key_id, version, *changes.values()
                )
                if status == "UPDATE 0":  # no such key: roll back, giving the version back
                    raise _NoSuchKey
        except _NoSuchKey:
            return None
        return await self.get_key(key_id)

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

    async def keys_expired(self, after: float, until: float) -> list[ApiKey]:
        rows = await self.pool.fetch(self._q.keys_expired, after, until)
        return [ApiKey(*r) for r in rows]

    async def key_tiers(self) -> set[str]:
        return {str(r[0]) for r in await self.pool.fetch(self._q.key_tiers)}

    # -- counters --------------------------------------------------------------------

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[Grant]:
        ordered = sorted(claims, key=lambda c: c.counter)
        rows = await self.pool.fetch(
            self._q.reserve,
            [c.counter for c in ordered],
            [c.want for c in ordered],
            [c.limit for c in ordered],
            [c.window_end for c in ordered],
            now,
        )
        grants = {str(r[0]): Grant(int(r[1]), int(r[2]), float(r[3])) for r in rows}
        return [grants[c.counter] for c in claims]

    async def release(self, counter: str, window_end: float, amount: int) -> None:
        await self.pool.execute(self._q.release, counter, window_end, amount)

    async def counter(self, counter: str, now: float) -> int:
        value = await self.pool.fetchval(self._q.counter, counter, now)
        return 0 if value is None else int(value)

    # -- usage ledger ----------------------------------------------------------------

    async def record(self, batch: UsageBatch) -> None:
        if not batch:
            return
        # One row per key in one statement (PostgreSQL updates a row once per statement),
        # written in key order so that two flushes touching the same rows take their
        # locks in the same order and cannot deadlock.
        merged: dict[tuple[str, str, str, str], Rollup] = {}
        for r in batch.rollups:
            key = (r.account_id, r.key_id, r.day, r.action)
            if key in merged:
                merged[key].add(r)
            else:
                merged[key] = dataclasses.replace(r)
        rollups = [merged[key] for key in sorted(merged)]
        draws: dict[tuple[str, str, str, str], int] = {}
        for d in batch.draws:
            key = (d.account_id, d.grant_id, d.day, d.action)
            draws[key] = draws.get(key, 0) + d.credits
        events = [r for r in rollups if r.requests or r.calls or r.credits] if batch.outbox else []
        async with self.pool.acquire() as conn, conn.transaction():
            if rollups:
                await conn.execute(self._q.add_rollups, *_columns(rollups))
            if batch.labels:
                await conn.executemany(self._q.set_label, sorted(batch.labels.items()))
            if draws:
                keys = sorted(draws)
                await conn.execute(
                    self._q.add_draws, *([k[i] for k in keys] for i in range(4)),
                    [draws[k] for k in keys],
                )  # fmt: skip
            if events:
                first = await conn.fetchval(self._q.outbox_take, len(events))
                columns = (
                    [getattr(r, c) for r in events]
                    for c in ("account_id", "key_id", "action", "day", "requests", "calls",
                              "credits")
                )  # fmt: skip
                await conn.execute(
                    self._q.add_outbox, first, f"mwu_{self._store_id}_", batch.time, *columns
                )

    async def usage(
        self, *, account_id: str, key_id: str | None, first_day: str, last_day: str
    ) -> list[UsageRow]:
        q = self._q
        if key_id is None:
            rows = await self.pool.fetch(q.account_usage, account_id, first_day, last_day)
        else:
            rows = await self.pool.fetch(q.key_usage, account_id, key_id, first_day, last_day)
        return [UsageRow(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    async def totals(
        self,
        *,
        account_id: str,
        key_id: str | None,
        first_day: str = FIRST_DAY,
        last_day: str = LAST_DAY,
    ) -> KeyTotals:
        if key_id is None:
            row = await self.pool.fetchrow(self._q.account_totals, account_id, first_day, last_day)
        else:
            row = await self.pool.fetchrow(
                self._q.key_totals, account_id, key_id, first_day, last_day
            )
        return KeyTotals(int(row[0]), int(row[1]), int(row[2]), row[3])

    async def month_usage(
        self, subjects: Sequence[tuple[str, str | None, str]]
    ) -> list[tuple[int, int]]:
        if not subjects:
            return []
        accounts, keys, days = zip(*subjects, strict=True)
        rows = await self.pool.fetch(self._q.month_usage, accounts, keys, days)
        return [(int(r[0]), int(r[1])) for r in rows]

    async def rollups(
        self,
        *,
        account_id: str | None = None,
        key_id: str | None = None,
        first_day: str = FIRST_DAY,
        last_day: str = LAST_DAY,
    ) -> list[Rollup]:
        rows = await self.pool.fetch(self._q.rollups, first_day, last_day, account_id, key_id)
        return [Rollup(*r) for r in rows]

    async def labels(self) -> dict[str, str]:
        rows = await self.pool.fetch(f"SELECT action, label FROM {self._q.s}.actions")
        return {str(r[0]): str(r[1]) for r in rows}

    # -- prepaid credits ---------------------------------------------------------------

    async def add_grant(self, grant: CreditGrant) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                f"INSERT INTO {self._q.s}.grants (account_id, grant_id, amount, granted_at, "
                "expires_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                grant.account_id, grant.grant_id, grant.amount, grant.granted_at,
                grant.expires_at,
            )  # fmt: skip
            if status != "INSERT 0 1":
                return False
            version = await conn.fetchval(self._q.next_version)
            await conn.execute(self._q.account_keys_version, grant.account_id, version)
        return True

    async def grants(self, account_id: str) -> list[CreditGrant]:
        rows = await self.pool.fetch(
            f"SELECT account_id, grant_id, amount, granted_at, expires_at FROM {self._q.s}.grants "
            "WHERE account_id = $1 ORDER BY expires_at IS NULL, expires_at, granted_at, grant_id",
            account_id,
        )
        return [CreditGrant(*r) for r in rows]

    async def balance_draws(
        self, account_id: str, *, first_day: str = FIRST_DAY, last_day: str = LAST_DAY
    ) -> list[BalanceDraw]:
        rows = await self.pool.fetch(
            "SELECT account_id, grant_id, action, day, credits "
            f"FROM {self._q.s}.balance_daily WHERE account_id = $1 AND day BETWEEN $2 AND $3 "
            "ORDER BY day, action, grant_id",
            account_id, first_day, last_day,
        )  # fmt: skip
        return [BalanceDraw(*r) for r in rows]

    # -- export and notices ------------------------------------------------------------

    async def outbox_after(self, seq: int, limit: int) -> list[OutboxEvent]:
        rows = await self.pool.fetch(
            "SELECT seq, id, account_id, key_id, action, day, requests, calls, credits, time "
            f"FROM {self._q.s}.outbox WHERE seq > $1 ORDER BY seq LIMIT $2",
            seq, limit,
        )  # fmt: skip
        return [OutboxEvent(*r) for r in rows]

    async def outbox_seq_before(self, time: float) -> int:
        value = await self.pool.fetchval(
            f"SELECT coalesce(max(seq), 0) FROM {self._q.s}.outbox WHERE time < $1", time
        )
        return int(value)

    async def cursor(self, name: str) -> int | None:
        value = await self.pool.fetchval(
            f"SELECT position FROM {self._q.s}.cursors WHERE name = $1", name
        )
        return None if value is None else int(value)

    async def advance_cursor(
        self,
        name: str,
        position: int,
        *,
        rejected: Sequence[tuple[int, str, str]] = (),
        now: float = 0.0,
    ) -> None:
        s = self._q.s
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                f"INSERT INTO {s}.rejections (name, seq, id, reason, at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                [(name, seq, id_, why, now) for seq, id_, why in rejected],
            )
            await conn.execute(
                f"INSERT INTO {s}.cursors AS c (name, position) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE "
                "SET position = GREATEST(c.position, excluded.position)",
                name, position,
            )  # fmt: skip

    async def rejections(self, name: str) -> list[tuple[int, str, str, float]]:
        rows = await self.pool.fetch(
            f"SELECT seq, id, reason, at FROM {self._q.s}.rejections WHERE name = $1 ORDER BY seq",
            name,
        )
        return [(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    async def take_lease(self, name: str, owner: str, *, now: float, ttl: float) -> bool:
        row = await self.pool.fetchrow(
            f"INSERT INTO {self._q.s}.leases AS l (name, owner, until) "
            "VALUES ($1, $2, $3::float8 + $4::float8) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until "
            "WHERE l.owner = excluded.owner OR l.until <= $3 RETURNING owner",
            name, owner, now, ttl,
        )  # fmt: skip
        return row is not None

    async def release_lease(self, name: str, owner: str) -> None:
        await self.pool.execute(
            f"DELETE FROM {self._q.s}.leases WHERE name = $1 AND owner = $2", name, owner
        )

    async def add_notice(self, notice: Notice) -> bool:
        # Numbered from a meta row, as key versions are (see NEXT_VERSION): its lock
        # queues writers, so notices commit in the order of their numbers and a reader
        # past number 8 has seen 7; under the lock, looking for the id first is exact.
        try:
            await self._insert_notice(notice)
        except _Exists:
            return False
        return True

    async def _insert_notice(self, notice: Notice) -> None:
        s = self._q.s
        async with self.pool.acquire() as conn, conn.transaction():
            seq = await conn.fetchval(
                f"UPDATE {s}.meta SET value = value + 1 WHERE name = 'notice_seq' RETURNING value"
            )
            if await conn.fetchval(f"SELECT 1 FROM {s}.notices WHERE id = $1", notice.id):
                raise _Exists  # roll back: the number is given back
            await conn.execute(
                f"INSERT INTO {s}.notices (seq, id, type, account_id, key_id, data, created_at) "
                "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)",
                seq, notice.id, notice.type, notice.account_id, notice.key_id,
                json.dumps(dict(notice.data)), notice.created_at,
            )  # fmt: skip

    async def notices_after(self, seq: int, limit: int) -> list[Notice]:
        rows = await self.pool.fetch(
            "SELECT id, type, account_id, key_id, data::text, created_at, seq "
            f"FROM {self._q.s}.notices WHERE seq > $1 ORDER BY seq LIMIT $2",
            seq, limit,
        )  # fmt: skip
        return [Notice(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]) for r in rows]

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


class _NoSuchKey(Exception):
    """Rolls back an update of a key that does not exist."""


class _Exists(Exception):
    """Rolls back adding a notice that is stored already."""


def _columns(rollups: Sequence[Rollup]) -> list[list[Any]]:
    """Rollups as the column arrays `unnest` takes."""
    return [
        [r.account_id for r in rollups],
        [r.key_id for r in rollups],
        [r.day for r in rollups],
        [r.action for r in rollups],
        [r.calls for r in rollups],
        [r.credits for r in rollups],
        [r.requests for r in rollups],
        [r.last_used_at for r in rollups],
        *([getattr(r, c) for r in rollups] for c in OUTCOME_FIELDS),
    ]
