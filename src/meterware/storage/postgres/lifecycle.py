"""Opening a PostgreSQL store (creating or migrating its schema), closing it, and reading
it whole (`Transferable`)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import asyncpg

from meterware.errors import StorageError
from meterware.storage.base import SCHEMA_VERSION
from meterware.storage.postgres.base import PostgresBase
from meterware.storage.postgres.migrations import FINISH_V2, MIGRATIONS, V1_COUNTERS, V1_KEYS
from meterware.storage.records import Snapshot
from meterware.storage.sql import (
    V1_ROLLUP_COLUMNS,
    V1Key,
    dump_queries,
    snapshot_of,
    v1_to_v2,
    v2_to_v3,
)


class PostgresLifecycle(PostgresBase):
    """`open` (with the migrations), `close`, `schema_version`; `dump`, `location`, `exists`."""

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


def _lock_id(schema: str) -> int:
    """A stable 64-bit advisory lock id for migrating this schema."""
    digest = hashlib.sha256(f"meterware:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
