"""What every part of the SQLite backend shares: the URL's path, the store's state and its
connection helpers (`db`, `_one`, `_all`, `_next_version`, `_transaction`).

Imports no other module of `meterware.storage.sqlite`: the others build on `SQLiteBase`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import aiosqlite

from meterware.errors import ConfigurationError, StorageError
from meterware.storage.base import Storage

__all__ = ["SQLiteBase", "path_from_url"]


def path_from_url(url: str) -> str:
    """`sqlite:///rel.db` -> `rel.db`, `sqlite:////abs.db` -> `/abs.db`, `sqlite://:memory:`."""
    if not url.startswith("sqlite://"):
        raise ConfigurationError(f"not a sqlite URL: {url!r}")
    rest = url[len("sqlite://") :]
    if rest in (":memory:", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/") or rest == "/":
        raise ConfigurationError(
            f"bad sqlite URL {url!r}: use sqlite:///relative.db or sqlite:////absolute.db"
        )
    return rest[1:]


class SQLiteBase(Storage):
    """The state of a `SQLiteStorage` and the helpers its mixins use."""

    resource_attribute = "_db"
    driver_errors = (sqlite3.Error,)
    _store_id: str  # the store's own id, read from the file by `open`

    def __init__(self, url: str = "sqlite:///meterware.db", **options: Any) -> None:
        super().__init__(url, **options)
        self.path = path_from_url(url)
        self.busy_timeout = float(options.get("busy_timeout", 1.0))
        self._file: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._reopen = False  # the connection cannot write: open it again before using it
        self._unwritable = False  # the last open found the file could not be written
        self._db: aiosqlite.Connection | None = None
        self._write = asyncio.Lock()
        self._opening = asyncio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StorageError(f"{self!r} is not open: call `await store.open()` first")
        return self._db

    async def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = await self.db.execute_fetchall(sql, params)  # one trip to the thread
        return next(iter(rows), None)

    async def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return list(await self.db.execute_fetchall(sql, params))

    async def _next_version(self) -> int:
        row = await self._one(
            "UPDATE meta SET value = value + 1 WHERE name = 'key_seq' RETURNING value"
        )
        return int(row[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` when the block raises."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db

    async def __aenter__(self) -> None:
        if self.db.in_transaction:  # left open by a task cancelled mid-transaction
            await self.db.execute("ROLLBACK")
        try:
            await self.db.execute("BEGIN IMMEDIATE")
        except asyncio.CancelledError:
            # the BEGIN may still run in the connection's thread: end what it starts
            await asyncio.shield(self._rollback())
            raise

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            await self.db.execute("COMMIT")
        else:
            await asyncio.shield(self._rollback())

    async def _rollback(self) -> None:
        if self.db.in_transaction:
            await self.db.execute("ROLLBACK")
