"""The write-behind ledger: what was admitted and charged, recorded in memory now and
written to the store in batches.

`Meter` aggregates per (account, key, action, UTC day), and the runtime's background
task writes the aggregates in one transaction every `flush_interval` seconds or
`flush_batch` events. Memory is bounded by distinct aggregates, not by calls, and by
`max_pending` while the store fails. A failed flush keeps its aggregates and retries
with backoff. What a hard crash (SIGKILL, power loss) can lose: the calls of the last
`flush_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from meterware.clock import day_of, midnight
from meterware.metering import Cost
from meterware.storage.base import Storage
from meterware.storage.records import KeyActivity, Rollup, UsageBatch

__all__ = ["Meter"]

log = logging.getLogger("meterware")


class Meter:
    """The write-behind ledger: record in memory now, write in batches later."""

    def __init__(
        self,
        store: Storage,
        *,
        flush_interval: float = 0.5,
        flush_batch: int = 10_000,
        max_pending: int = 100_000,
    ) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.flush_batch = flush_batch
        self.max_pending = max_pending
        self._rollups: dict[tuple[str, str, str, str], Rollup] = {}
        self._activity: dict[str, KeyActivity] = {}
        self._labels: dict[str, str] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._events = 0
        self._dropped = 0
        self._day = ""
        self._day_end = 0.0
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self.failures = 0

    @property
    def pending(self) -> int:
        """Distinct aggregates waiting to be written."""
        return len(self._rollups) + len(self._activity) + len(self._counts)

    def _today(self, now: float) -> str:
        if now >= self._day_end or now < self._day_end - 86400:
            day = day_of(now)
            self._day = day.isoformat()
            self._day_end = midnight(day) + 86400
        return self._day

    def admitted(self, key_id: str | None, now: float) -> None:
        """Count a request admitted to the host's handler (total_requests, last use).

        Each admitted request is one event toward `flush_batch`."""
        self._events += 1
        if self._events >= self.flush_batch:
            self._wakeup.set()
        if key_id is None:
            return
        activity = self._activity.get(key_id)
        if activity is None:
            if self.pending >= self.max_pending:
                return self._drop()
            self._activity[key_id] = KeyActivity(key_id, 1, now)
        else:
            activity.requests += 1
            activity.last_used_at = now

    def charge(
        self, account_id: str, key_id: str | None, cost: Cost, credits: int, now: float
    ) -> None:
        """Record a successful call that cost `credits` (> 0) under `cost.action`."""
        day = self._today(now)
        rollup = self._rollups.get((account_id, key_id or "", cost.action, day))
        if rollup is None:
            if self.pending >= self.max_pending:
                return self._drop()
            rollup = Rollup(account_id, key_id or "", cost.action, day, 1, credits)
            self._rollups[(account_id, key_id or "", cost.action, day)] = rollup
            self._labels[cost.action] = cost.label
        else:
            rollup.calls += 1
            rollup.credits += credits

    def count(self, counter: str, period: str, amount: int) -> None:
        """Add to a counter that has no limit to enforce (write-behind)."""
        key = (counter, period)
        self._counts[key] = self._counts.get(key, 0) + amount

    def _drop(self) -> None:
        if self._dropped == 0:
            log.error(
                "usage buffer full (%d aggregates): dropping usage until the next flush succeeds",
                self.max_pending,
            )
        self._dropped += 1

    def _take(self) -> UsageBatch:
        batch = UsageBatch(
            rollups=list(self._rollups.values()),
            activity=list(self._activity.values()),
            labels=self._labels,
            counters=[(c, p, n) for (c, p), n in self._counts.items() if n],
        )
        self._rollups, self._activity, self._labels, self._counts = {}, {}, {}, {}
        self._events = 0
        return batch

    def _put_back(self, batch: UsageBatch) -> None:
        for r in batch.rollups:
            rollup = self._rollups.setdefault(
                (r.account_id, r.key_id, r.action, r.day),
                Rollup(r.account_id, r.key_id, r.action, r.day, 0, 0),
            )
            rollup.calls += r.calls
            rollup.credits += r.credits
        for a in batch.activity:
            activity = self._activity.setdefault(a.key_id, KeyActivity(a.key_id, 0, a.last_used_at))
            activity.requests += a.requests
            activity.last_used_at = max(activity.last_used_at, a.last_used_at)
        for action, label in batch.labels.items():
            self._labels.setdefault(action, label)
        for counter, period, amount in batch.counters:
            self.count(counter, period, amount)

    async def flush(self) -> bool:
        """Write what is pending in one transaction; on failure keep it and return False."""
        async with self._lock:
            batch = self._take()
            if not batch:
                return True
            try:
                await self.store.record(batch)
            except BaseException as exc:  # cancelled too: the batch must not be lost
                self._put_back(batch)
                if not isinstance(exc, Exception):
                    raise
                if self.failures == 0:
                    log.warning("usage flush failed, keeping %d aggregates: %s", self.pending, exc)
                self.failures += 1
                return False
            if self.failures:
                log.warning("usage flush recovered after %d failed attempts", self.failures)
                self.failures = 0
            if self._dropped:
                log.error("%d usage events were dropped: the buffer was full", self._dropped)
                self._dropped = 0
            return True

    def wake(self) -> None:
        """End the current `wait` early."""
        self._wakeup.set()

    async def wait(self) -> None:
        """Sleep until the next flush is due: the interval (longer after failures) or a
        full batch."""
        delay = self.flush_interval * min(2**self.failures, 60)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
        self._wakeup.clear()
