"""What PostgreSQL hands to readers elsewhere: the outbox and the notices, each reader's
cursor and rejections, and the leases that let one process at a time deliver."""

from __future__ import annotations

import json
from collections.abc import Sequence

from meterware.storage.postgres.base import PostgresBase
from meterware.storage.records import Notice, OutboxEvent


class PostgresFeeds(PostgresBase):
    """The outbox and notices, read in order after a cursor; cursors, rejections, leases."""

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


class _Exists(Exception):
    """Rolls back adding a notice that is stored already."""
