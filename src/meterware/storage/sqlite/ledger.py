"""Counters and the usage ledger: reservations in windows, rollups written in chunks (with
their outbox events), the sums read from them, and prepaid credit grants."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from meterware.storage.base import FIRST_DAY, LAST_DAY
from meterware.storage.records import (
    BalanceDraw,
    Claim,
    CreditGrant,
    Grant,
    KeyTotals,
    Rollup,
    UsageBatch,
    UsageRow,
)
from meterware.storage.sql import ROLLUP_SELECT
from meterware.storage.sqlite.base import SQLiteBase
from meterware.storage.sqlite.sql import (
    ADD_DRAWS,
    ADD_OUTBOX,
    ADD_ROLLUPS,
    CHUNK,
    MONTH_USAGE,
    RELEASE,
    RESERVE,
    SET_LABELS,
    TOTALS,
    claim_row,
    draw_row,
    outbox_row,
    rollup_row,
)

__all__ = ["SQLiteLedger"]


class SQLiteLedger(SQLiteBase):
    """Counters, the usage ledger and prepaid credits."""

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
