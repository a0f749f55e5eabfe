"""What other processes read after the ledger: the outbox and its readers' cursors and
rejections, leases, and notices."""

from __future__ import annotations

import json
from collections.abc import Sequence

from meterware.storage.records import Notice, OutboxEvent
from meterware.storage.sqlite.base import SQLiteBase

__all__ = ["SQLiteOutbox"]


class SQLiteOutbox(SQLiteBase):
    """The outbox, cursors, leases and notices."""

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
