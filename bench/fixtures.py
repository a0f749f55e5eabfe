"""What the benchmarks run against: the servers, and stores filled with keys.

`Stores` makes each store once per run, in a temporary directory (SQLite) or a
PostgreSQL schema of its own (dropped at the end), and creates keys in it on demand
through meterware's own `create_key`: every key has its own account and tier `bench`.
The same keys serve every key count (the 100-key runs use the first 100).

Servers: `BENCH_POSTGRES` (default `postgresql://postgres@127.0.0.1:5432/test`) and
`BENCH_REDIS` (default `async+redis://127.0.0.1:6379`); a variant that needs one that is
unreachable is skipped with a note (`Stores.problem`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from bench.apps import PEPPER, TIER, TIERS
from meterware import Admin, SecretHasher, Storage, storage_from_url

PG_URL = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS", "async+redis://127.0.0.1:6379")

HASHER = SecretHasher(pepper=PEPPER)


def say(message: str) -> None:
    """Progress, on stderr (the table is the only thing on stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def postgres_problem(url: str = PG_URL) -> str | None:
    """Why PostgreSQL cannot be used, or None when `SELECT 1` works."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install -e '.[postgres]')"
    try:
        conn = await asyncpg.connect(url, timeout=3)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def redis_problem(url: str = REDIS_URL) -> str | None:
    """Why Redis cannot be used, or None when it answers PING."""
    try:
        import coredis  # noqa: F401  (what limits' async+redis:// storage needs)
    except ImportError:
        return "coredis is not installed (pip install -e '.[redis]')"
    parts = urlsplit(url.removeprefix("async+"))
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 2) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            if not s.recv(64).startswith(b"+PONG"):
                return "no PONG"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


async def add_keys(store: Storage, count: int, *, concurrency: int = 1) -> list[str]:
    """Create `count` keys (each with its own account); their secrets."""
    admin = Admin(store, pepper=PEPPER, tiers=TIERS)

    async def one(i: int) -> str:
        _, secret = await admin.create_key(
            name=f"bench key {i}", tier=TIER, account_id=f"acct_bench_{i}_{secrets.token_hex(3)}"
        )
        return secret

    made: list[str] = []
    for start in range(0, count, concurrency):
        chunk = range(start, min(count, start + concurrency))
        made += await asyncio.gather(*(one(i) for i in chunk))
    return made


class Stores:
    """The stores of one run, each made once and grown to the number of keys asked for."""

    def __init__(self, *, postgres: bool = True) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="meterware-bench-"))
        self.want_postgres = postgres
        self._memory: Storage | None = None
        self._secrets: dict[str, list[str]] = {"memory": [], "sqlite": [], "postgres": []}
        self.sqlite_url = f"sqlite:///{self.workdir / 'bench.db'}"
        self.pg_schema = f"mw_bench_{os.getpid()}_{secrets.token_hex(3)}"
        sep = "&" if "?" in PG_URL else "?"
        self.pg_url = f"{PG_URL}{sep}schema={self.pg_schema}"
        self.redis_url = REDIS_URL
        self._pg_checked = False
        self.pg_problem: str | None = None
        self.redis_problem: str | None = None

    async def memory(self, n: int) -> tuple[Storage, list[str]]:
        """An open `memory://` store with at least `n` keys, and the first `n` secrets."""
        if self._memory is None:
            self._memory = storage_from_url("memory://")
            await self._memory.open()
        await self._grow("memory", self._memory, n, concurrency=100)
        return self._memory, self._secrets["memory"][:n]

    async def sqlite(self, n: int) -> tuple[str, list[str]]:
        """The URL of a SQLite file with at least `n` keys, and the first `n` secrets."""
        if len(self._secrets["sqlite"]) < n:
            store = storage_from_url(self.sqlite_url)
            async with store:
                await self._grow("sqlite", store, n)
        return self.sqlite_url, self._secrets["sqlite"][:n]

    async def _check_servers(self) -> None:
        if not self._pg_checked:
            self._pg_checked = True
            if not self.want_postgres:
                self.pg_problem = self.redis_problem = "disabled (--no-postgres)"
            else:
                self.pg_problem = await postgres_problem()
                self.redis_problem = redis_problem()

    async def postgres_ready(self) -> str | None:
        """Why PostgreSQL cannot be used, or None."""
        await self._check_servers()
        return f"PostgreSQL unavailable: {self.pg_problem}" if self.pg_problem else None

    async def redis_ready(self) -> str | None:
        """Why Redis cannot be used, or None."""
        await self._check_servers()
        return f"Redis unavailable: {self.redis_problem}" if self.redis_problem else None

    async def problem(self, needs: Iterable[str]) -> str | None:
        """Why a variant that needs these servers ("postgres", "redis") cannot run, or None."""
        for server in needs:
            problem = await (self.postgres_ready() if server == "postgres" else self.redis_ready())
            if problem:
                return problem
        return None

    async def postgres(self, n: int) -> tuple[str, list[str]]:
        """The URL (with `?schema=`) of a PostgreSQL schema with at least `n` keys."""
        problem = await self.postgres_ready()
        if problem:
            raise RuntimeError(problem)
        if len(self._secrets["postgres"]) < n:
            store = storage_from_url(self.pg_url)
            async with store:
                await self._grow("postgres", store, n, concurrency=8)
        return self.pg_url, self._secrets["postgres"][:n]

    async def _grow(self, name: str, store: Storage, n: int, concurrency: int = 1) -> None:
        have = self._secrets[name]
        if len(have) >= n:
            return
        started = time.perf_counter()
        have += await add_keys(store, n - len(have), concurrency=concurrency)
        say(f"{name}: {n} keys ready ({time.perf_counter() - started:.1f} s to create)")

    async def close(self) -> None:
        if self._memory is not None:
            await self._memory.close()
        if self._pg_checked and not self.pg_problem:
            with contextlib.suppress(Exception):
                import asyncpg

                conn = await asyncpg.connect(PG_URL, timeout=3)
                try:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{self.pg_schema}" CASCADE')
                finally:
                    await conn.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
