"""The file and its connection: opening (WAL, migrations from older schemas), closing,
healing a connection that cannot write or a file replaced in use, and reading the file whole
(`Transferable`)."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite

from meterware.errors import StorageError
from meterware.storage.base import SCHEMA_VERSION
from meterware.storage.records import Snapshot
from meterware.storage.sql import (
    V1_ROLLUP_COLUMNS,
    V1Key,
    dump_queries,
    snapshot_of,
    v1_to_v2,
    v2_to_v3,
)
from meterware.storage.sqlite.base import SQLiteBase
from meterware.storage.sqlite.sql import (
    DROP_V1,
    FROM_V1,
    FROM_V2_ACCOUNTS,
    FROM_V2_KEYS,
    SCHEMA,
    V1_COUNTERS,
    V1_KEYS,
    V4,
    WINDOWS,
)

__all__ = ["SQLiteConnection"]

log = logging.getLogger("meterware")


class SQLiteConnection(SQLiteBase):
    """Opening, migrating, closing and healing the connection; the store read whole."""

    async def open(self) -> None:
        if self._db is not None:
            return
        async with self._opening:  # concurrent calls: one connection, not one each
            if self._db is None:
                await self._open()

    async def _open(self) -> None:
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot open {self.path!r}: {exc}") from exc
        try:
            await db.execute("PRAGMA busy_timeout = 30000")  # migrations may take a while
            await _use_wal(db)
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await self._migrate(db)
            await db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            writable = await _writable(db)
        except BaseException:
            await db.close()
            raise
        self._db = db
        self._opened = True
        self._file = _identity(self.path)
        (store_id,) = await self._one("SELECT value FROM meta WHERE name = 'store_id'")
        self._store_id = f"{int(store_id):08x}"
        if writable is not None:
            if not self._unwritable:  # once per spell, not at each reopen
                log.warning(
                    "%r cannot be written (%s): what needs a write gets 503 until it can; "
                    "meterware opens it again then",
                    self, writable,
                )  # fmt: skip
            self._reopen = True
        self._unwritable = writable is not None

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        if await _version(db) == SCHEMA_VERSION:
            return  # nothing to write (the file may even be read-only)
        # Under the write lock, the version read and the migration agree: two processes
        # opening an old file together migrate it once.
        await db.execute("BEGIN IMMEDIATE")
        try:
            version = await _version(db)
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{self.path} has schema version {version}; this meterware knows "
                    f"{SCHEMA_VERSION}: upgrade meterware"
                )
            if version == 0:
                for statement in [*_statements(SCHEMA), WINDOWS]:
                    await db.execute(statement)
            if version == 1:
                await self._from_v1(db)
            if version in (1, 2):
                await self._from_v2(db)
            if version <= 3:
                for statement in V4:
                    await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def _from_v1(self, db: aiosqlite.Connection) -> None:
        """Schema 1 to 2: totals and monthly counts move into rollups and windows."""
        for statement in (*FROM_V1, WINDOWS):
            await db.execute(statement)
        keys = [V1Key(*row) for row in await db.execute_fetchall(V1_KEYS)]
        counters = [tuple(row) for row in await db.execute_fetchall(V1_COUNTERS)]
        rollups, windows = v1_to_v2(keys, counters, time.time())
        await db.executemany(
            f"INSERT INTO usage_daily ({', '.join(V1_ROLLUP_COLUMNS)}) VALUES "
            f"({', '.join('?' * len(V1_ROLLUP_COLUMNS))})",
            [tuple(getattr(r, c) for c in V1_ROLLUP_COLUMNS) for r in rollups],
        )
        await db.executemany(
            "INSERT INTO windows (counter, window_end, count) VALUES (?, ?, ?)", windows
        )
        for statement in DROP_V1:
            await db.execute(statement)

    async def _from_v2(self, db: aiosqlite.Connection) -> None:
        """Schema 2 to 3: plans move to accounts (see `storage.sql.v2_to_v3`)."""
        tiers, keys_follow = v2_to_v3("")
        for statement in (*FROM_V2_ACCOUNTS, tiers, *FROM_V2_KEYS, keys_follow):
            await db.execute(statement)

    async def close(self) -> None:
        db, self._db = self._db, None
        self._opened = False
        if db is not None:
            await db.close()

    def _driver_failed(self, exc: Exception) -> None:
        if "readonly" in str(exc):  # the connection stays read-only: a new one may not be
            self._reopen = True

    async def _heal(self) -> None:
        """Open the file again when the connection could not write (permissions restored,
        disk freed) or the file was replaced: the next operation uses the new connection."""
        if not self._reopen or self._db is None:
            return
        async with self._opening:
            if not self._reopen:
                return
            old, self._db = self._db, None
            self._opened = False
            try:
                await old.close()
            finally:
                self._reopen = False
                await self._open()

    async def check(self) -> bool:
        if self.path == ":memory:" or self._db is None:
            return False
        found = await asyncio.to_thread(_identity, self.path)
        if found == self._file:
            return False
        log.error(
            "%r: the database file was deleted or replaced while in use: opening the file "
            "now at that path (every process must use the same file)",
            self,
        )
        self._reopen = True
        await self._heal()
        return True

    async def schema_version(self) -> int:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- Transferable ------------------------------------------------------------------

    async def dump(self) -> Snapshot:
        # One read transaction: a consistent snapshot even while other processes write
        # the file (WAL). The store's own writes wait for it (the write lock).
        tables: dict[str, list[Any]] = {}
        async with self._write:
            await self.db.execute("BEGIN")
            try:
                for table, sql in dump_queries("").items():
                    tables[table] = await self._all(sql)
            finally:
                await self.db.execute("COMMIT")
        return snapshot_of(tables)

    def location(self) -> str:
        return f"sqlite:{self.path if self.path == ':memory:' else Path(self.path).resolve()}"

    async def exists(self) -> bool:
        return self.path != ":memory:" and await asyncio.to_thread(os.path.isfile, self.path)


async def _use_wal(db: aiosqlite.Connection) -> None:
    """`PRAGMA journal_mode = WAL`, retried while another connection holds the file.

    Switching a new file to WAL takes an exclusive lock, and SQLite answers "database is
    locked" at once, without the busy handler, when processes open the file together.
    """
    for attempt in range(200):  # 10 s, like busy_timeout
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            await asyncio.sleep(0.05)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


async def _version(db: aiosqlite.Connection) -> int:
    return int(next(iter(await db.execute_fetchall("PRAGMA user_version")))[0])


async def _writable(db: aiosqlite.Connection) -> str | None:
    """None if the connection can write, else why not. (In WAL mode a read-only file
    still grants the write lock: only a write says.)"""
    try:
        await db.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return str(exc)
    try:
        await db.execute("UPDATE meta SET value = value WHERE name = 'key_seq'")
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        await db.execute("ROLLBACK")
    return None


def _identity(path: str) -> tuple[int, int] | None:
    """The file's (device, inode), None if there is no file."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino
