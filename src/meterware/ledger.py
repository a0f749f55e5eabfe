"""The write-behind ledger: what was admitted and charged, recorded in memory now and
written to the store in batches.

`Meter` aggregates per (account, key, action, UTC day): requests admitted, calls charged,
credits, last use. The runtime's background task writes the aggregates in one
transaction every `flush_interval` seconds or `flush_batch` events. Memory is bounded
by distinct aggregates, not by calls, and by `max_pending` while the store fails. A
failed flush keeps its aggregates and retries with backoff. What a hard crash (SIGKILL,
power loss) can lose: the calls of the last `flush_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from meterware.clock import day_of, midnight
from meterware.errors import StorageUnavailable
from meterware.metering import Cost
from meterware.storage.base import Storage
from meterware.storage.records import BalanceDraw, Rollup, UsageBatch

__all__ = ["Meter"]

log = logging.getLogger("meterware")


class Meter:
    """The write-behind ledger: record in memory now, write in batches later.

    `on_take` is called each time a flush takes what is pending (with no await between
    the two), so that whoever counts alongside the ledger knows what the flush carries;
    `on_written` each time a flush's write succeeded (the store is answering).
    """

    def __init__(
        self,
        store: Storage,
        *,
        flush_interval: float = 0.5,
        flush_batch: int = 10_000,
        max_pending: int = 100_000,
        on_take: Callable[[], None] = lambda: None,
        on_written: Callable[[], None] = lambda: None,
        on_flushed: Callable[[float, bool], None] = lambda seconds, ok: None,
        timeout: float = 10.0,
        outbox: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.flush_batch = flush_batch
        self.max_pending = max_pending
        self.on_take = on_take
        self.on_written = on_written
        self.on_flushed = on_flushed
        self.timeout = timeout
        self.outbox = outbox
        self.clock = clock
        self._rollups: dict[tuple[str, str, str, str], Rollup] = {}
        self._draws: dict[tuple[str, str, str, str], BalanceDraw] = {}
        self.drawn: set[str] = set()  # accounts whose grants paid in the last flush
        self._labels: dict[str, str] = {}
        self._events = 0
        self._dropped = 0
        self._day = ""
        self._day_end = 0.0
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self.failures = 0
        self.writing: set[asyncio.Future[None]] = set()  # writes that outlived their flush

    @property
    def pending(self) -> int:
        """Distinct aggregates waiting to be written."""
        return len(self._rollups)

    def _today(self, now: float) -> str:
        if now >= self._day_end or now < self._day_end - 86400:
            day = day_of(now)
            self._day = day.isoformat()
            self._day_end = midnight(day) + 86400
        return self._day

    def _rollup(
        self, account_id: str, key_id: str | None, action: str, now: float
    ) -> Rollup | None:
        """The pending rollup of this key, action and day (new if need be; None when the
        buffer is full)."""
        day = self._today(now)
        rollup = self._rollups.get((account_id, key_id or "", action, day))
        if rollup is None:
            if len(self._rollups) >= self.max_pending:
                self._drop()
                return None
            rollup = Rollup(account_id, key_id or "", action, day, 0, 0)
            self._rollups[(account_id, key_id or "", action, day)] = rollup
        return rollup

    def admitted(self, account_id: str, key_id: str | None, cost: Cost, now: float) -> None:
        """Count a request admitted to the host's handler under `cost.action`.

        Each admitted request is one event toward `flush_batch`."""
        self._events += 1
        if self._events >= self.flush_batch:
            self._wakeup.set()
        rollup = self._rollup(account_id, key_id, cost.action, now)
        if rollup is not None:
            rollup.requests += 1
            if rollup.last_used_at is None or now > rollup.last_used_at:
                rollup.last_used_at = now

    def charge(
        self, account_id: str, key_id: str | None, cost: Cost, credits: int, now: float
    ) -> None:
        """Record a successful call, admitted at `now`, that cost `credits` (> 0)."""
        rollup = self._rollup(account_id, key_id, cost.action, now)
        if rollup is not None:
            rollup.calls += 1
            rollup.credits += credits
            self._labels[cost.action] = cost.label  # the credits report shows it

    def refused(
        self, account_id: str, key_id: str | None, action: str, outcome: str, now: float
    ) -> None:
        """Count a request refused (or admitted while a check failed open) under `action`,
        by `outcome`: one of `OUTCOME_FIELDS`."""
        rollup = self._rollup(account_id, key_id, action, now)
        if rollup is not None:
            setattr(rollup, outcome, getattr(rollup, outcome) + 1)

    def drew(self, account_id: str, grant_id: str, action: str, credits: int, now: float) -> None:
        """Record credits a prepaid grant paid for (negative: given back)."""
        day = self._today(now)
        draw = self._draws.get((account_id, grant_id, day, action))
        if draw is None:
            draw = self._draws[(account_id, grant_id, day, action)] = BalanceDraw(
                account_id, grant_id, action, day, 0
            )
        draw.credits += credits

    def _drop(self) -> None:
        if self._dropped == 0:
            log.error(
                "usage buffer full (%d aggregates): dropping usage until the next flush succeeds",
                self.max_pending,
            )
        self._dropped += 1

    def _take(self) -> UsageBatch:
        self.on_take()
        batch = UsageBatch(
            rollups=list(self._rollups.values()),
            labels=self._labels,
            draws=[d for d in self._draws.values() if d.credits],
            outbox=self.outbox,
            time=self.clock(),
        )
        self.drawn = {d.account_id for d in self._draws.values()}
        self._rollups, self._labels, self._draws = {}, {}, {}
        self._events = 0
        return batch

    def _put_back(self, batch: UsageBatch) -> None:
        for r in batch.rollups:
            rollup = self._rollups.get((r.account_id, r.key_id, r.action, r.day))
            if rollup is None:
                self._rollups[(r.account_id, r.key_id, r.action, r.day)] = r
            else:
                rollup.add(r)
        for action, label in batch.labels.items():
            self._labels.setdefault(action, label)
        for d in batch.draws:
            draw = self._draws.get((d.account_id, d.grant_id, d.day, d.action))
            if draw is None:
                self._draws[(d.account_id, d.grant_id, d.day, d.action)] = d
            else:
                draw.credits += d.credits

    async def flush(self, after: Callable[[], Awaitable[None]] | None = None) -> bool:
        """Write what is pending in one transaction; on failure keep it and return False.
        `after` runs once the write succeeded, before any other flush may start.

        A write gets `timeout` seconds. One that takes longer is not cancelled (a cancel
        racing its commit could count it twice): it goes on in the background, its batch
        put back only if it fails in the end, and this flush reports a failure."""
        async with self._lock:
            batch = self._take()
            if batch:
                started = time.perf_counter()
                write = asyncio.ensure_future(self.store.record(batch))
                try:
                    done, _ = await asyncio.wait({write}, timeout=self.timeout)
                except BaseException:  # this flush was cancelled: the write's outcome decides
                    self._pending_write(write, batch)
                    raise
                if not done:
                    self._pending_write(write, batch)
                    late = f"usage flush: no answer within {self.timeout:g} s"
                    self.on_flushed(time.perf_counter() - started, False)
                    return self._failed(StorageUnavailable(late))
                error = write.exception()
                if error is not None:
                    self._put_back(batch)
                    self.on_flushed(time.perf_counter() - started, False)
                    return self._failed(error)
                self.on_flushed(time.perf_counter() - started, True)
                self.on_written()
                if self.failures:
                    log.warning("usage flush recovered after %d failed attempts", self.failures)
                    self.failures = 0
                if self._dropped:
                    log.error("%d usage events were dropped: the buffer was full", self._dropped)
                    self._dropped = 0
            if after is not None:
                await after()
            return True

    def _failed(self, exc: BaseException) -> bool:
        if self.failures == 0:
            log.warning("usage flush failed, keeping %d aggregates: %s", self.pending, exc)
        self.failures += 1
        return False

    def _pending_write(self, write: asyncio.Future[None], batch: UsageBatch) -> None:
        self.writing.add(write)
        write.add_done_callback(lambda done: self._written_late(done, batch))

    def _written_late(self, write: asyncio.Future[None], batch: UsageBatch) -> None:
        self.writing.discard(write)
        if write.cancelled() or write.exception() is not None:
            self._put_back(batch)

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
