"""The exporter: the store's usage outbox, sent to a sink in order, each event
acknowledged only once the sink has answered for it.

`Exporter(store, sink)` is a reader of the outbox with a name (`export:<sink>` by
default), whose cursor in the store is the last event it is done with. Each batch it
reads the events after the cursor, gives them the account's external id and Stripe
customer, sends them, and moves the cursor through the longest prefix of the batch
whose events the sink accepted or rejected. `meterware export` runs it
(`meterware.cli.export`).

Delivery
    *At least once* to the sink: the cursor passes an event only after the sink said it
    holds it (or will never take it). A crash, a kill or a lost answer between the
    sink's acceptance and the cursor's write sends the batch again. *Exactly once as the
    sink sees it*: ids are deterministic (`mwu_<store>_<seq>`) and every sink
    deduplicates by id (see `meterware.export.sinks`), so a resend is counted once, as
    long as it comes within the sink's dedupe window. The limits of that:

    - Stripe keeps identifiers for at least 24 hours (its documented minimum). An
      exporter stopped with a batch in flight (killed, or a Stripe outage it gave up on)
      and resumed more than a day later may count that batch twice there. At most one
      batch is at risk (`batch` events, after the cursor): before resuming after such a
      stop, look those identifiers up in Stripe (`meterware export --json` prints the
      cursor), or move the cursor past what Stripe already holds.
    - OpenMeter deduplicates `id` + `source` within its dedupe window (configurable);
      Lago keeps `transaction_id` per subscription; the file sinks keep the ids of the
      whole file.
    - Fencing: see the lease below.

    An event the sink will never take (older than Stripe's 35 days, an account without
    a Stripe customer, an event the system calls invalid) is *rejected*: recorded in
    the store with the sink's reason in the same write that moves the cursor
    (`store.rejections(reader)`, `meterware export --rejections`), logged at ERROR one
    line each, and counted in the `Summary`. It is never dropped silently, and the
    events after it still go out.

Ordering
    Events go out in outbox order (the commit order of the ledger's flushes), one batch
    after another; the cursor never passes an event that was not acknowledged and never
    moves back. Within a batch a sink may send concurrently (Stripe: 8 requests at once),
    so arrival order inside a batch is not guaranteed; billing systems aggregate by each
    event's timestamp. Events after the first one neither accepted nor rejected wait for
    the next try, even those the sink accepted (they are deduplicated then).

The lease
    One exporter per reader at a time: each batch takes (or renews) the store lease named
    like the reader for `lease_ttl` seconds, renews it every `lease_ttl / 3` while the
    batch is in flight and while it waits, and releases it when `run` ends. An exporter
    that finds the lease held elsewhere does nothing: `run_once` says so, `run(follow=
    False)` stops, `run(follow=True)` stands by and takes over once the holder releases
    the lease or stops renewing it (a crashed holder: within `lease_ttl`). *Fencing*:
    the lease is checked again right before the cursor moves; an exporter that lost it
    meanwhile does not move the cursor, and whoever holds it sends those events again
    (counted once, by id). The window left open: a process that stalls for more than
    `lease_ttl` between that check and the cursor's write. Then two exporters may send
    the same events, which the sinks deduplicate; the cursor never moves back.

Failures
    A batch the sink cannot take now (`SinkUnavailable`), or a store that fails or does
    not answer, is tried again after a backoff: 1 s doubling to 60 s, each wait drawn
    between half and all of it. A warning is logged when such an outage starts and when
    it ends, not for each try. With `follow` it retries forever; without, it gives up
    once the first attempt and `retries` retries have failed in a row
    (`Summary.unavailable` says why). Every call to the store is bounded by `timeout`
    seconds (`meterware.guard.bounded`).

Exit statuses of `meterware export`: 0 everything pending was sent (or the follow was
stopped); 1 the sink (or the store) stayed unavailable, or any other failure; 2 a bad
command line; 6 events were rejected (listed, and kept in the store); 7 another exporter
holds the lease. When several apply, the first in the order 1, 7, 6 is the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable

from meterware.errors import ConfigurationError, StorageError
from meterware.export.batch import _Batches
from meterware.export.results import Progress, Rejection, Summary
from meterware.export.sinks import Sink, SinkUnavailable
from meterware.guard import backoff_delay, lease_owner
from meterware.keys import Account
from meterware.storage.base import Storage

__all__ = ["Exporter", "Progress", "Rejection", "Summary"]

log = logging.getLogger("meterware.export")

GRACE = 5.0
"""Seconds a batch in flight may take to finish once `run` is told to stop."""


class Exporter(_Batches):
    """Sends the store's outbox to `sink` (see the module doc for the guarantees).

    - `store` - an open store (the one the middleware writes its outbox to).
    - `sink` - where the events go; the caller closes it.
    - `name` - the reader: its cursor, lease and rejections in the store. Defaults to
      `export:<sink.name>`. Two sinks of one kind (two Stripe meters) need two names.
    - `batch` - events read and sent at a time. Defaults to `sink.max_batch`.
    - `since` - where a new reader starts: after the last event written before this
      time (epoch seconds). A reader that has a cursor keeps it. Defaults to the start.
    - `owner` - who holds the lease. Defaults to `host:pid:random`.
    - `lease_ttl` - seconds the lease lasts unless renewed. Defaults to 30.
    - `clock` - the wall clock (leases, lag, rejection times). Defaults to `time.time`.
    - `on_lag` - called after each batch with the age in seconds of the oldest event
      not acknowledged (0 when caught up), for the `exporter_lag` gauge.
    - `timeout` - the bound of each store call, in seconds. Defaults to 10.
    - `backoff`, `max_backoff` - the first and the longest wait after a failure, in
      seconds. Default to 1 and 60.
    """

    def __init__(
        self,
        store: Storage,
        sink: Sink,
        *,
        name: str | None = None,
        batch: int | None = None,
        since: float | None = None,
        owner: str | None = None,
        lease_ttl: float = 30.0,
        clock: Callable[[], float] = time.time,
        on_lag: Callable[[float], None] | None = None,
        timeout: float = 10.0,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        if batch is not None and batch < 1:
            raise ConfigurationError(f"batch must be at least 1, not {batch}")
        if not lease_ttl > 0 or not timeout > 0 or not 0 < backoff <= max_backoff:
            raise ConfigurationError("lease_ttl > 0, timeout > 0 and 0 < backoff <= max_backoff")
        self.store = store
        self.sink = sink
        self.name = name or f"export:{sink.name}"
        self.batch = batch or sink.max_batch
        self.since = since
        self.owner = owner or lease_owner()
        self.lease_ttl = lease_ttl
        self.clock = clock
        self.on_lag = on_lag
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._accounts: dict[str, Account | None] = {}
        self._holding = False  # whether the last word from the store was that we hold the lease
        self._since_noted = False

    def __repr__(self) -> str:
        return f"Exporter({self.name!r}, {self.sink!r}, owner={self.owner!r})"

    # -- the loop ------------------------------------------------------------------------

    async def run(
        self,
        *,
        follow: bool,
        poll: float = 1.0,
        stop: asyncio.Event | None = None,
        retries: int = 5,
    ) -> Summary:
        """Send batches until caught up (`follow` False) or until `stop` is set.

        Following, it waits `poll` seconds when caught up or when another exporter holds
        the lease. On failure it backs off (see the module doc); without `follow` it
        gives up once 1 + `retries` attempts in a row have failed. When `stop` is set
        with a batch in flight, the batch gets a few seconds to finish, then is abandoned
        without acknowledging what it had not. The lease is released at the end.
        """
        stop = stop if stop is not None else asyncio.Event()
        summary = Summary(self.name)
        failures, outage_began, standing_by = 0, 0.0, False
        log.info("%s: sending to %r in batches of %d%s (lease owner %s)", self.name, self.sink,
                 self.batch, ", following" if follow else "", self.owner)  # fmt: skip
        try:
            while not stop.is_set():
                try:
                    progress = await self._unless_stopped(self.run_once, stop)
                except (SinkUnavailable, StorageError) as exc:
                    failures += 1
                    summary.failures += 1
                    if failures == 1:
                        outage_began = time.monotonic()
                        log.warning("%s: %s; trying again with backoff", self.name, exc)
                    if not follow and failures > retries:
                        summary.unavailable = str(exc)
                        log.error("%s: gave up after %d attempts: %s", self.name, failures, exc)
                        break
                    await self._pause(self._backoff(failures), stop)
                    continue
                if progress is None:
                    break
                if failures:
                    log.warning(
                        "%s: working again after %d failed attempts over %.0f s",
                        self.name, failures, time.monotonic() - outage_began,
                    )  # fmt: skip
                    failures = 0
                summary.add(progress)
                summary.lease_held = not progress.held
                if not progress.held:
                    if not follow:
                        break
                    if not standing_by:
                        log.info("%s: another exporter holds the lease: standing by", self.name)
                        standing_by = True
                    await self._pause(poll, stop)
                    continue
                if standing_by:
                    log.info("%s: took the lease over", self.name)
                    standing_by = False
                if progress.caught_up:
                    if not follow:
                        break
                    await self._pause(poll, stop)
        finally:
            await self._finish(summary)
        return summary

    async def _unless_stopped(
        self, batch: Callable[[], Awaitable[Progress]], stop: asyncio.Event
    ) -> Progress | None:
        """The batch's progress; None when `stop` was set and the batch did not end
        within `GRACE` seconds (then it is cancelled: nothing more is acknowledged)."""
        task = asyncio.ensure_future(batch())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=GRACE)
            if task.done():
                return task.result()
            log.warning(
                "%s: stopped with a batch in flight: abandoned, its events are sent again "
                "by the next run", self.name,
            )  # fmt: skip
            return None
        finally:
            for pending in (task, stopped):
                pending.cancel()
            await asyncio.gather(task, stopped, return_exceptions=True)

    def _backoff(self, failures: int) -> float:
        return backoff_delay(failures, self.backoff, self.max_backoff, random.random())

    async def _pause(self, seconds: float, stop: asyncio.Event) -> None:
        """Wait `seconds` or until `stop`, renewing a lease we hold every `lease_ttl / 3`."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), min(left, self.lease_ttl / 3))
            if self._holding and not stop.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(StorageError):
                    await self._take_lease()

    async def _finish(self, summary: Summary) -> None:
        """Release the lease; note where the cursor is and what is left after it."""
        if self._holding:
            self._holding = False
            try:
                await self._call(self.store.release_lease(self.name, self.owner), "lease release")
            except StorageError as exc:
                log.warning("%s: could not release the lease (it expires by itself): %s",
                            self.name, exc)  # fmt: skip
        try:
            position = await self._call(self.store.cursor(self.name), "cursor read")
            last = await self._call(self.store.outbox_seq_before(math.inf), "outbox read")
        except StorageError:
            return
        summary.position = position or 0
        summary.remaining = max(0, last - summary.position)
