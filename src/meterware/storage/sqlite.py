"""The embedded default: one SQLite file, WAL mode, one long-lived aiosqlite connection.

Writes that must be atomic across processes sharing the file (`reserve`, `record`) are
single statements or `BEGIN IMMEDIATE` transactions; `busy_timeout` makes a second process
wait for the lock instead of failing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

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
    retiring,
)
from meterware.storage.records import (
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
    LIVE_KEYS,
    ROLLUP_SELECT,
    STORED_KEY_COLUMNS,
    V1_ROLLUP_COLUMNS,
    V1Key,
    dump_queries,
    key_select,
    key_values,
    snapshot_of,
    v1_to_v2,
    v2_to_v3,
)
from meterware.storage.sqlite_sql import (
    ADD_DRAWS,
    ADD_OUTBOX,
    ADD_ROLLUPS,
    CHUNK,
    DROP_V1,
    FROM_V1,
    FROM_V2_ACCOUNTS,
    FROM_V2_KEYS,
    MONTH_USAGE,
    RELEASE,
    RESERVE,
    SCHEMA,
    SET_LABELS,
    TOTALS,
    V1_COUNTERS,
    V1_KEYS,
    V4,
    WINDOWS,
    claim_row,
    draw_row,
    outbox_row,
    rollup_row,
)

__all__ = ["SQLiteStorage"]

log = logging.getLogger("meterware")


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


class SQLiteStorage(Storage, Transferable):
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db`.

    Options: `busy_timeout` - seconds to wait for another process's write lock before
    failing with `StorageError`. Defaults to 1.0 (the middleware's `storage_timeout`).

    A connection that cannot write (the file or its directory read-only, say) is opened
    again before the next operation, so the store recovers once writing works; a file
    deleted or replaced while in use is noticed by `check()` and opened again.
    """

    resource_attribute = "_db"
    driver_errors = (sqlite3.Error,)

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
        """Schema 2 to 3: plans move to accounts (see `sql.v2_to_v3`)."""
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

    # -- accounts and keys -----------------------------------------------------------

    async def ensure_account(self, account: Account) -> bool:
        async with self._write:
            cur = await self.db.execute(
                f"INSERT OR IGNORE INTO accounts ({', '.join(ACCOUNT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(ACCOUNT_COLUMNS))})",
                tuple(getattr(account, c) for c in ACCOUNT_COLUMNS),
            )
            return cur.rowcount == 1

    async def get_account(self, account_id: str) -> Account | None:
        row = await self._one(
            f"SELECT {', '.join(ACCOUNT_COLUMNS)} FROM accounts WHERE id = ?", (account_id,)
        )
        return None if row is None else Account(*row)

    async def list_accounts(self) -> list[Account]:
        rows = await self._all(f"SELECT {', '.join(ACCOUNT_COLUMNS)} FROM accounts ORDER BY id")
        return [Account(*r) for r in rows]

    async def update_account(self, account_id: str, **changes: Any) -> Account | None:
        check_account_updatable(changes)
        if changes:
            async with self._write, self._transaction():
                sets = ", ".join(f"{name} = ?" for name in changes)
                cur = await self.db.execute(
                    f"UPDATE accounts SET {sets} WHERE id = ?", (*changes.values(), account_id)
                )
                if cur.rowcount and "tier" in changes:
                    version = await self._next_version()
                    await self.db.execute(
                        "UPDATE keys SET version = ? WHERE account_id = ?", (version, account_id)
                    )
        return await self.get_account(account_id)

    async def create_key(
        self, key: ApiKey, secret_hash: str, *, live_limit: int | None = None, now: float = 0.0
    ) -> bool:
        async with self._write, self._transaction():
            if live_limit is not None:
                (live,) = await self._one(
                    LIVE_KEYS.format(p="", a="?1", n="?2"), (key.account_id, now)
                )
                if live >= live_limit:
                    return False
            version = await self._next_version()
            await self.db.execute(
                f"INSERT INTO keys ({', '.join(STORED_KEY_COLUMNS)}, version) "
                f"VALUES ({', '.join('?' * (len(STORED_KEY_COLUMNS) + 1))})",
                (*key_values(key), version),
            )
            await self.db.execute(
                "INSERT INTO key_secrets (hash, key_id, expires_at) VALUES (?, ?, NULL)",
                (secret_hash, key.id),
            )
        return True

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self._one(f"SELECT {key_select()} FROM keys k WHERE k.id = ?", (key_id,))
        return None if row is None else ApiKey(*row)

    async def find_key(self, secret_hash: str, now: float) -> ApiKey | None:
        row = await self._one(
            f"SELECT {key_select()}, s.expires_at FROM key_secrets s "
            "JOIN keys k ON k.id = s.key_id "
            "WHERE s.hash = ? AND (s.expires_at IS NULL OR s.expires_at > ?)",
            (secret_hash, now),
        )
        return None if row is None else retiring(ApiKey(*row[:-1]), row[-1])

    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        if account_id is None:
            rows = await self._all(f"SELECT {key_select()} FROM keys k ORDER BY created_at, id")
        else:
            rows = await self._all(
                f"SELECT {key_select()} FROM keys k WHERE account_id = ? ORDER BY created_at, id",
                (account_id,),
            )
        return [ApiKey(*r) for r in rows]

    async def update_key(self, key_id: str, **changes: Any) -> ApiKey | None:
        check_updatable(changes)
        async with self._write, self._transaction():
            version = await self._next_version()
            sets = "".join(f"{name} = ?, " for name in changes)
            cur = await self.db.execute(
                f"UPDATE keys SET {sets}version = ? WHERE id = ?",
                (*changes.values(), version, key_id),
            )
            if cur.rowcount == 0:
                return None
        return await self.get_key(key_id)

    async def add_secret(self, key_id: str, secret_hash: str, *, retire_old_at: float) -> None:
        async with self._write, self._transaction():
            version = await self._next_version()
            await self.db.execute(
                "UPDATE key_secrets SET expires_at = min(coalesce(expires_at, ?), ?) "
                "WHERE key_id = ?",
                (retire_old_at, retire_old_at, key_id),
            )
            await self.db.execute(
                "INSERT INTO key_secrets (hash, key_id, expires_at) VALUES (?, ?, NULL)",
                (secret_hash, key_id),
            )
            await self.db.execute("UPDATE keys SET version = ? WHERE id = ?", (version, key_id))

    async def key_changes(self, since: int) -> tuple[int, list[str]]:
        row = await self._one("SELECT value FROM meta WHERE name = 'key_seq'")
        cursor = int(row[0])
        if since <= 0 or cursor <= since:
            return cursor, []
        rows = await self._all("SELECT id FROM keys WHERE version > ?", (since,))
        return cursor, [r[0] for r in rows]

    async def keys_expired(self, after: float, until: float) -> list[ApiKey]:
        rows = await self._all(
            f"SELECT {key_select()} FROM keys k WHERE k.expires_at > ? AND k.expires_at <= ? "
            "ORDER BY k.expires_at, k.id",
            (after, until),
        )
        return [ApiKey(*r) for r in rows]

    async def key_tiers(self) -> set[str]:
        rows = await self._all(
            "SELECT tier FROM keys WHERE tier IS NOT NULL UNION SELECT tier FROM accounts"
        )
        return {r[0] for r in rows}

    # -- counters --------------------------------------------------------------------

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[Grant]:
        rows = json.dumps([claim_row(c) for c in claims])
        async with self._write:
            found = await self._all(RESERVE, (rows, now))
        grants = {str(r[0]): Grant(int(r[1]), int(r[2]), float(r[3])) for r in found}
        return [grants[c.counter] for c in claims]

    async def release(self, counter: str, window_end: float, amount: int) -> None:
        async with self._write:
            await self.db.execute(RELEASE, (counter, window_end, amount))

    async def counter(self, counter: str, now: float) -> int:
        row = await self._one(
            "SELECT count FROM windows WHERE counter = ? AND window_end > ?", (counter, now)
        )
        return 0 if row is None else int(row[0])

    # -- usage ledger ----------------------------------------------------------------

    async def record(self, batch: UsageBatch) -> None:
        # Each table is written by statements over a JSON array of up to CHUNK rows (one
        # parameter): one trip to the connection's thread per chunk, where executemany
        # releases and re-takes the GIL for every row. While the thread runs a chunk, the
        # event loop serves requests: a big flush never holds the loop for long. A chunk's
        # rows are built just before it is sent, so they die young (cheap to collect).
        if not batch:
            return
        async with self._write, self._transaction():
            await self._write_rows(ADD_ROLLUPS, batch.rollups, rollup_row)
            await self._write_rows(SET_LABELS, list(batch.labels.items()), tuple)
            await self._write_rows(ADD_DRAWS, batch.draws, draw_row)
            if batch.outbox:
                events = [r for r in batch.rollups if r.requests or r.calls or r.credits]
                for start in range(0, len(events), CHUNK):
                    (last,) = await self._one("SELECT coalesce(max(seq), 0) FROM outbox")
                    rows = json.dumps([outbox_row(r) for r in events[start : start + CHUNK]])
                    await self.db.execute(ADD_OUTBOX, (rows, last, self._store_id, batch.time))

    async def _write_rows(
        self, statement: str, items: Sequence[Any], row: Callable[[Any], tuple[Any, ...]]
    ) -> None:
        for start in range(0, len(items), CHUNK):
            rows = json.dumps([row(item) for item in items[start : start + CHUNK]])
            await self.db.execute(statement, (rows,))

    async def usage(
        self, *, account_id: str, key_id: str | None, first_day: str, last_day: str
    ) -> list[UsageRow]:
        columns = "day, action, sum(calls), sum(credits), sum(requests)"
        if key_id is None:
            rows = await self._all(
                f"SELECT {columns} FROM usage_daily "
                "WHERE account_id = ? AND day BETWEEN ? AND ? GROUP BY day, action "
                "ORDER BY day, action",
                (account_id, first_day, last_day),
            )
        else:
            rows = await self._all(
                f"SELECT {columns} FROM usage_daily "
                "WHERE account_id = ? AND key_id = ? AND day BETWEEN ? AND ? "
                "GROUP BY day, action ORDER BY day, action",
                (account_id, key_id, first_day, last_day),
            )
        return [UsageRow(*r) for r in rows]

    async def totals(
        self,
        *,
        account_id: str,
        key_id: str | None,
        first_day: str = FIRST_DAY,
        last_day: str = LAST_DAY,
    ) -> KeyTotals:
        if key_id is None:
            row = await self._one(TOTALS, (account_id, first_day, last_day))
        else:
            row = await self._one(
                TOTALS.replace("account_id = ?", "account_id = ? AND key_id = ?"),
                (account_id, key_id, first_day, last_day),
            )
        return KeyTotals(int(row[0]), int(row[1]), int(row[2]), row[3])

    async def month_usage(
        self, subjects: Sequence[tuple[str, str | None, str]]
    ) -> list[tuple[int, int]]:
        if not subjects:
            return []
        rows = await self._all(MONTH_USAGE, (json.dumps(list(subjects)),))
        return [(int(r[0]), int(r[1])) for r in rows]

    async def rollups(
        self,
        *,
        account_id: str | None = None,
        key_id: str | None = None,
        first_day: str = FIRST_DAY,
        last_day: str = LAST_DAY,
    ) -> list[Rollup]:
        rows = await self._all(
            f"SELECT {ROLLUP_SELECT} FROM usage_daily WHERE day BETWEEN ?1 AND ?2 "
            "AND (?3 IS NULL OR account_id = ?3) AND (?4 IS NULL OR key_id = ?4) "
            "ORDER BY day, account_id, key_id, action",
            (first_day, last_day, account_id, key_id),
        )
        return [Rollup(*r) for r in rows]

    async def labels(self) -> dict[str, str]:
        return {r[0]: r[1] for r in await self._all("SELECT action, label FROM actions")}

    # -- prepaid credits ---------------------------------------------------------------

    async def add_grant(self, grant: CreditGrant) -> bool:
        async with self._write, self._transaction():
            cur = await self.db.execute(
                "INSERT OR IGNORE INTO grants (account_id, grant_id, amount, granted_at, "
                "expires_at) VALUES (?, ?, ?, ?, ?)",
                (grant.account_id, grant.grant_id, grant.amount, grant.granted_at,
                 grant.expires_at),
            )  # fmt: skip
            if cur.rowcount != 1:
                return False
            version = await self._next_version()
            await self.db.execute(
                "UPDATE keys SET version = ? WHERE account_id = ?", (version, grant.account_id)
            )
        return True

    async def grants(self, account_id: str) -> list[CreditGrant]:
        rows = await self._all(
            "SELECT account_id, grant_id, amount, granted_at, expires_at FROM grants "
            "WHERE account_id = ? ORDER BY expires_at IS NULL, expires_at, granted_at, grant_id",
            (account_id,),
        )
        return [CreditGrant(*r) for r in rows]

    async def balance_draws(
        self, account_id: str, *, first_day: str = FIRST_DAY, last_day: str = LAST_DAY
    ) -> list[BalanceDraw]:
        rows = await self._all(
            "SELECT account_id, grant_id, action, day, credits FROM balance_daily "
            "WHERE account_id = ? AND day BETWEEN ? AND ? ORDER BY day, action, grant_id",
            (account_id, first_day, last_day),
        )
        return [BalanceDraw(*r) for r in rows]

    # -- export and notices ------------------------------------------------------------

    async def outbox_after(self, seq: int, limit: int) -> list[OutboxEvent]:
        rows = await self._all(
            "SELECT seq, id, account_id, key_id, action, day, requests, calls, credits, time "
            "FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [OutboxEvent(*r) for r in rows]

    async def outbox_seq_before(self, time: float) -> int:
        row = await self._one("SELECT coalesce(max(seq), 0) FROM outbox WHERE time < ?", (time,))
        return int(row[0])

    async def cursor(self, name: str) -> int | None:
        row = await self._one("SELECT position FROM cursors WHERE name = ?", (name,))
        return None if row is None else int(row[0])

    async def advance_cursor(
        self,
        name: str,
        position: int,
        *,
        rejected: Sequence[tuple[int, str, str]] = (),
        now: float = 0.0,
    ) -> None:
        async with self._write, self._transaction():
            await self.db.executemany(
                "INSERT OR IGNORE INTO rejections (name, seq, id, reason, at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(name, seq, id_, why, now) for seq, id_, why in rejected],
            )
            await self.db.execute(
                "INSERT INTO cursors (name, position) VALUES (?1, ?2) ON CONFLICT (name) "
                "DO UPDATE SET position = max(position, excluded.position)",
                (name, position),
            )

    async def rejections(self, name: str) -> list[tuple[int, str, str, float]]:
        rows = await self._all(
            "SELECT seq, id, reason, at FROM rejections WHERE name = ? ORDER BY seq", (name,)
        )
        return [(int(r[0]), str(r[1]), str(r[2]), float(r[3])) for r in rows]

    async def take_lease(self, name: str, owner: str, *, now: float, ttl: float) -> bool:
        async with self._write:
            row = await self._one(
                "INSERT INTO leases (name, owner, until) VALUES (?1, ?2, ?3 + ?4) "
                "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until "
                "WHERE leases.owner = excluded.owner OR leases.until <= ?3 RETURNING owner",
                (name, owner, now, ttl),
            )
        return row is not None

    async def release_lease(self, name: str, owner: str) -> None:
        async with self._write:
            await self.db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    async def add_notice(self, notice: Notice) -> bool:
        # One statement: numbered on from the last, unless its id is there (INSERT OR
        # IGNORE would use up a number even when it inserts nothing).
        async with self._write:
            cur = await self.db.execute(
                "INSERT INTO notices (seq, id, type, account_id, key_id, data, created_at) "
                "SELECT (SELECT coalesce(max(seq), 0) + 1 FROM notices), ?1, ?2, ?3, ?4, ?5, ?6 "
                "WHERE NOT EXISTS (SELECT 1 FROM notices WHERE id = ?1)",
                (notice.id, notice.type, notice.account_id, notice.key_id,
                 json.dumps(dict(notice.data)), notice.created_at),
            )  # fmt: skip
            return cur.rowcount == 1

    async def notices_after(self, seq: int, limit: int) -> list[Notice]:
        rows = await self._all(
            "SELECT id, type, account_id, key_id, data, created_at, seq FROM notices "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [Notice(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6]) for r in rows]

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
