"""What PostgreSQL counts: the limits' window counters, the usage ledger (rollups and
labels, written with the outbox in one transaction) and prepaid credits."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from meterware.storage.base import FIRST_DAY, LAST_DAY
from meterware.storage.postgres.base import PostgresBase
from meterware.storage.records import (
    OUTCOME_FIELDS,
    BalanceDraw,
    Claim,
    CreditGrant,
    Grant,
    KeyTotals,
    Rollup,
    UsageBatch,
    UsageRow,
)


class PostgresLedger(PostgresBase):
    """`reserve`, `release`, `counter`; `record` and the usage it sums; grants and draws."""

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
