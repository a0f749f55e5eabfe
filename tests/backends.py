"""The storage backends the tests run against, and the servers behind them.

`ALL_STORAGES` holds every backend as pytest params (memory, a SQLite file in `tmp_path`,
a PostgreSQL schema of its own), each with the marker of the same name, so `pytest -m
sqlite` runs the contract against SQLite alone. A `Backend` is one test's storage place:
it opens stores on it (a restart, a second process) and reads its raw contents.

The servers: PostgreSQL from `METERWARE_TEST_POSTGRES` (default
`postgresql://postgres@127.0.0.1:5432/test`), Redis from `METERWARE_TEST_REDIS` (default
`redis://127.0.0.1:6379/0`). Tests that need one skip when it is unreachable, and fail
instead when the `CI` environment variable is set.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from meterware.storage import Storage, storage_from_url
from meterware.storage.base import redact

POSTGRES_URL = os.environ.get(
    "METERWARE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("METERWARE_TEST_REDIS", "redis://127.0.0.1:6379/0")


# -- servers ---------------------------------------------------------------------------


def unavailable(reason: str) -> None:
    """Skip the test, or fail it when running in CI (`CI` set), where servers must be up."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def require_postgres(url: str | None = None) -> str:
    """The PostgreSQL URL to test against, once a connection and `SELECT 1` succeed."""
    url = url or POSTGRES_URL
    problem = _postgres_problem(url)
    if problem:
        unavailable(
            f"PostgreSQL at {redact(url)} is unreachable ({problem}); "
            "start it or set METERWARE_TEST_POSTGRES"
        )
    return url


def require_redis(url: str | None = None) -> str:
    """The Redis URL to test against, once a plain-socket `PING` gets `+PONG`."""
    url = url or REDIS_URL
    problem = _redis_problem(url)
    if problem:
        unavailable(
            f"Redis at {redact(url)} is unreachable ({problem}); "
            "start it or set METERWARE_TEST_REDIS"
        )
    return url


@functools.cache
def _postgres_problem(url: str) -> str | None:
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed: pip install 'meterware[postgres]'"

    async def ping() -> None:
        conn = await asyncpg.connect(url, timeout=3)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    # In a thread of its own so that it works from sync code and inside a running loop.
    try:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: asyncio.run(ping())).result(timeout=10)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@functools.cache
def _redis_problem(url: str) -> str | None:
    parts = urlsplit(url)
    commands = []
    if parts.password:
        auth = [parts.username, parts.password] if parts.username else [parts.password]
        commands.append(["AUTH", *(unquote(a) for a in auth)])
    commands.append(["PING"])
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 3) as s:
            s.settimeout(3)
            for command in commands:
                s.sendall(_resp(command))
                reply = s.recv(512)
                if not reply.startswith(b"+"):
                    return f"{command[0]} answered {reply[:80]!r}"
            if reply.strip() != b"+PONG":
                return f"PING answered {reply[:80]!r}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _resp(command: list[str]) -> bytes:
    """A command in the Redis protocol (RESP) as an array of bulk strings."""
    out = [f"*{len(command)}\r\n".encode()]
    for arg in command:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def flush_redis_db(redis_url: str, db: int) -> str:
    """Empty one Redis database index (never db 0); the URL of that database."""
    assert db != 0
    url = re.sub(r"/\d*$", "", redis_url.rstrip("/")) + f"/{db}"
    parts = urlsplit(url)
    command = f"*2\r\n$6\r\nSELECT\r\n${len(str(db))}\r\n{db}\r\n*1\r\n$7\r\nFLUSHDB\r\n"
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 5) as s:
        s.sendall(command.encode())  # plain RESP: no client library needed
        reply = b""
        while reply.count(b"\r\n") < 2:
            chunk = s.recv(256)
            assert chunk, "Redis closed the connection"
            reply += chunk
    assert reply == b"+OK\r\n+OK\r\n", reply
    return url


# -- storage backends --------------------------------------------------------------------


class Backend:
    """One test's storage location, and every store opened on it (closed at teardown)."""

    def __init__(self, name: str, url: str, **options: Any) -> None:
        self.name = name
        self.url = url
        self.options = options
        self.stores: list[Storage] = []

    def new(self, **options: Any) -> Storage:
        """Another store object on the same place, not opened yet."""
        store = storage_from_url(self.url, **{**self.options, **options})
        self.stores.append(store)
        return store

    async def raw_dump(self) -> bytes:
        """Everything the backend has written, as raw bytes, to search for leaks."""
        raise NotImplementedError

    async def set_schema_version(self, version: int) -> None:
        """Overwrite the recorded schema version, as a newer meterware would."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        for store in self.stores:
            await store.close()


class SQLiteBackend(Backend):
    def __init__(self, path: Path) -> None:
        super().__init__("sqlite", f"sqlite:///{path}")  # path is absolute: sqlite:////...
        self.path = path

    async def raw_dump(self) -> bytes:
        # The database, its -wal and -shm files: whatever SQLite put on disk.
        return b"".join(p.read_bytes() for p in sorted(self.path.parent.rglob("*")) if p.is_file())

    async def set_schema_version(self, version: int) -> None:
        import sqlite3

        with sqlite3.connect(self.path) as db:
            db.execute(f"PRAGMA user_version = {int(version)}")
        db.close()


class PostgresBackend(Backend):
    def __init__(self, server_url: str) -> None:
        self.server_url = server_url
        self.schema = f"mw_test_{secrets.token_hex(6)}"
        sep = "&" if "?" in server_url else "?"
        super().__init__("postgres", f"{server_url}{sep}schema={self.schema}")

    async def _connect(self) -> Any:
        import asyncpg

        return await asyncpg.connect(self.server_url)

    async def raw_dump(self) -> bytes:
        conn = await self._connect()
        try:
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                self.schema,
            )
            assert tables, f"no tables in schema {self.schema}"
            out = []
            for (table,) in tables:
                rows = await conn.fetch(f'SELECT t::text FROM "{self.schema}"."{table}" t')
                out.append(f"{table}: " + "\n".join(r[0] for r in rows))
            return "\n".join(out).encode()
        finally:
            await conn.close()

    async def set_schema_version(self, version: int) -> None:
        conn = await self._connect()
        try:
            await conn.execute(
                f"UPDATE \"{self.schema}\".meta SET value = $1 WHERE name = 'schema_version'",
                version,
            )
        finally:
            await conn.close()

    async def cleanup(self) -> None:
        await super().cleanup()
        conn = await self._connect()
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()


def _memory(tmp_path: Path) -> Backend:
    # Each MemoryStorage object is a world of its own: `new()` shares nothing.
    return Backend("memory", "memory://")


def _sqlite(tmp_path: Path) -> Backend:
    return SQLiteBackend(tmp_path / "meterware.db")


def _postgres(tmp_path: Path) -> Backend:
    return PostgresBackend(require_postgres())


ALL_STORAGES = {
    "memory": pytest.param(_memory, marks=pytest.mark.memory, id="memory"),
    "sqlite": pytest.param(_sqlite, marks=pytest.mark.sqlite, id="sqlite"),
    "postgres": pytest.param(_postgres, marks=pytest.mark.postgres, id="postgres"),
}
"""Every backend, as pytest params of the `backend` fixture, each with its marker."""

DURABLE_STORAGES = [ALL_STORAGES["sqlite"], ALL_STORAGES["postgres"]]
"""The backends whose data outlives the store object (a restart, another process)."""


class RedisWindows(Backend):
    """Per-minute windows in Redis (a counter store, not a whole store): a database index
    of its own, flushed before and after."""

    DB = 11

    def __init__(self, server_url: str) -> None:
        self.redis_url = flush_redis_db(server_url, self.DB)
        super().__init__("redis", "async+" + self.redis_url)

    def new(self, **options: Any) -> Any:
        from meterware.windows import RedisCounters

        counters = RedisCounters(self.url)
        self.stores.append(counters)  # type: ignore[arg-type]
        return counters

    async def cleanup(self) -> None:
        await super().cleanup()
        flush_redis_db(self.redis_url, self.DB)


def _redis(tmp_path: Path) -> Backend:
    return RedisWindows(require_redis())


COUNTER_STORES = [
    *ALL_STORAGES.values(),
    pytest.param(_redis, marks=pytest.mark.redis, id="redis"),
]
"""Every place counters live: the stores, and Redis (per-minute windows)."""

SHARED_COUNTER_STORES = [*DURABLE_STORAGES, COUNTER_STORES[-1]]
"""The places counters live that several processes share."""
