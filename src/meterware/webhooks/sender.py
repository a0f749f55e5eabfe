"""The webhook sender: the stored notices delivered to each endpoint, in order, one at a
time, retried with backoff, given up on past `refusals` or `max_age`, under a store lease
per endpoint (the guarantees are in `meterware.webhooks`).

It imports the endpoints, the HTTP attempt and the readers (their state and lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable, Collection, Sequence
from types import TracebackType

from meterware.errors import ConfigurationError, StorageError
from meterware.guard import backoff_delay, lease_owner
from meterware.storage.base import Storage, redact
from meterware.storage.records import Notice
from meterware.webhooks.endpoints import WebhookEndpoint, _require, signed_request
from meterware.webhooks.http import Attempt, _Poster
from meterware.webhooks.readers import EndpointStatus, _LeaseHolder, _LeaseLost, _Reader

__all__ = ["MAX_AGE", "WebhookSender", "retry_delay"]

log = logging.getLogger("meterware.webhooks")

FIRST_DELAY = 1.0  # seconds before the first retry
MAX_DELAY = 300.0  # the longest backoff
MAX_RETRY_AFTER = 3600.0  # the longest `retry-after` honoured
MAX_AGE = 3 * 86_400.0
"""How long a notice is retried, from its creation (the specification's schedule spans
about 3 days)."""
REFUSALS = 5  # 4xx answers (but 408, 409, 429) to one notice before it is given up on
POLL = 1.0  # seconds between looks for new notices when caught up
_HEADER_VALUE = re.compile(r"[!-~]{1,255}")  # what a webhook-id may be: visible ASCII


def retry_delay(failures: int, draw: float) -> float:
    """The wait after `failures` consecutive failed attempts (1 s doubling to 5 min),
    `draw` (from 0 to 1) placing it between half and all of that."""
    return backoff_delay(failures, FIRST_DELAY, MAX_DELAY, draw)


def _span(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:g} days"
    return f"{seconds / 3600:g} hours" if seconds >= 3600 else f"{seconds:g} s"


class WebhookSender(_LeaseHolder):
    """Delivers the stored notices to `endpoints` (see `meterware.webhooks` for guarantees).

    - `store` - an open store (the one notices are added to); the caller closes it.
    - `endpoints` - the `WebhookEndpoint`s, with distinct names.
    - `owner` - who holds the leases. Defaults to `host:pid:random`; a stable one (a
      pod's name) lets a restarted process resume at once. Never two live processes
      with one owner.
    - `lease_ttl` - seconds a lease lasts unless renewed: how long a crashed sender holds
      up another. Defaults to 30; more than `2 × timeout + 1`.
    - `timeout` - the bound of each HTTP call and each store call, in seconds.
      Defaults to 10.
    - `batch` - notices read from the store at a time. Defaults to 100.
    - `max_age` - how long a notice is retried, from its creation. Defaults to 3 days.
    - `refusals` - 4xx answers (but 408, 409, 429) to a notice before it is given up on.
      Defaults to 5.
    - `poll` - seconds between looks for new notices, in `run`. Defaults to 1.
    - `clock` - the wall clock (leases, backoff, ages, `webhook-timestamp`). Defaults
      to `time.time`.
    """

    def __init__(
        self,
        store: Storage,
        endpoints: Collection[WebhookEndpoint],
        *,
        owner: str | None = None,
        lease_ttl: float = 30.0,
        timeout: float = 10.0,
        batch: int = 100,
        max_age: float = MAX_AGE,
        refusals: int = REFUSALS,
        poll: float = POLL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _require()
        names = [e.name for e in endpoints]
        if not names:
            raise ConfigurationError("a webhook sender needs at least one endpoint")
        if len(set(names)) != len(names):
            raise ConfigurationError(f"webhook endpoints need distinct names: {sorted(names)}")
        if not timeout > 0 or not lease_ttl > 2 * timeout + 1:
            raise ConfigurationError("timeout > 0 and lease_ttl > 2 × timeout + 1 (seconds)")
        if batch < 1 or refusals < 1 or not max_age > 0 or not poll > 0:
            raise ConfigurationError("batch and refusals >= 1, max_age and poll > 0")
        self.store = store
        self.owner = owner or lease_owner()
        self.lease_ttl = lease_ttl
        self.timeout = timeout
        self.batch = batch
        self.max_age = max_age
        self.refusals = refusals
        self.poll = poll
        self.clock = clock
        self._reserve = 2 * timeout + 1  # lease left to start a notice
        self._readers = [_Reader(e, EndpointStatus(e.name, redact(e.url))) for e in endpoints]
        self._poster = _Poster(timeout)
        self._random = random.Random()
        self._stop: asyncio.Event | None = None
        self._store_failing = False

    def __repr__(self) -> str:
        return f"WebhookSender({[r.endpoint for r in self._readers]!r}, owner={self.owner!r})"

    @property
    def status(self) -> list[EndpointStatus]:
        """Where it is with each endpoint."""
        return [r.status for r in self._readers]

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the leases it holds, close its HTTP connections."""
        for reader in self._readers:
            await self._release(reader)
        await self._poster.aclose()

    # -- the loop -----------------------------------------------------------------------

    async def run_once(self) -> int:
        """Deliver what is pending to each endpoint whose lease it holds (or takes) and
        whose backoff has passed, until caught up or an attempt fails; the number of
        notices delivered. The endpoints are served concurrently."""
        counts = await asyncio.gather(*(self._round(r) for r in self._readers))
        return sum(counts)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, each endpoint in a loop of its own (a round, then
        `poll` seconds); then finish the notice in flight, release the leases and close
        the connections."""
        self._stop = stop
        try:
            await asyncio.gather(*(self._follow(r, stop) for r in self._readers))
        finally:
            self._stop = None
            await self.aclose()

    async def _follow(self, reader: _Reader, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._round(reader)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll)

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _round(self, reader: _Reader) -> int:
        status = reader.status
        before = status.delivered
        async with reader.lock:  # run_once and run on one sender: one round at a time
            try:
                if self.clock() >= status.next_try:
                    await self._deliver(reader)
                elif reader.held_until:  # backing off: keep the lease meanwhile
                    await self._hold(reader)
                status.store_error = None
                self._store_answers()
            except _LeaseLost:
                pass
            except StorageError as exc:
                reader.position = None  # read the cursor again
                status.store_error = str(exc)
                self._store_failed(exc)
            except Exception:
                reader.position = None
                log.exception("%s: delivery round failed", reader.endpoint.reader)
        return status.delivered - before

    async def _deliver(self, reader: _Reader) -> None:
        status = reader.status
        if not await self._hold(reader):
            return
        if reader.position is None:
            stored = await self._call(self.store.cursor(reader.endpoint.reader), "cursor read")
            reader.fresh = stored is None
            reader.position = reader.written = stored or 0
        position = reader.position
        status.position = reader.written
        while not self._stopping():
            notices = await self._call(
                self.store.notices_after(position, self.batch), "notices read"
            )
            status.caught_up = not notices
            if not notices:
                break
            for notice in notices:
                if self._stopping():
                    break
                if not await self._handle(reader, notice):
                    return
                reader.position = position = notice.seq
        if position > reader.written and self._holds(reader):  # skipped ones at the end
            await self._advance(reader, position)

    async def _handle(self, reader: _Reader, notice: Notice) -> bool:
        """Deliver one notice, skip it or give it up; False when the round must end (a
        failed attempt: the backoff runs)."""
        endpoint, status, now = reader.endpoint, reader.status, self.clock()
        too_old = now - notice.created_at >= self.max_age
        if not endpoint.wants(notice.type) or (reader.fresh and too_old):
            status.skipped += 1
            return True
        reader.fresh = False  # past the history a new endpoint skips
        if not _HEADER_VALUE.fullmatch(notice.id):
            await self._give_up(reader, notice, "its id cannot be a webhook-id header")
            return True
        if too_old and status.failing:
            why = f"not delivered within {_span(self.max_age)}: {status.last_error}"
            await self._give_up(reader, notice, why)
            return True
        if not await self._hold(reader) or reader.position is None:
            raise _LeaseLost  # lost, or lapsed and taken again: read the cursor again
        headers, body = signed_request(endpoint, notice, int(self.clock()))
        attempt = await self._poster.post(endpoint.url, headers, body)
        if attempt.ok:
            if not await self._still_held(reader):
                raise _LeaseLost
            await self._advance(reader, notice.seq)
            self._delivered(reader)
            return True
        self._failed(reader, notice, attempt)
        if notice.id != reader.head:
            reader.head, reader.refusals = notice.id, 0
        reader.refusals += attempt.refused
        if reader.refusals >= self.refusals:
            why = f"{attempt.describe()} to {reader.refusals} attempts"
            await self._give_up(reader, notice, why)
        elif self.clock() - notice.created_at >= self.max_age:
            why = f"not delivered within {_span(self.max_age)}: {attempt.describe()}"
            await self._give_up(reader, notice, why)
        return False

    def _delivered(self, reader: _Reader) -> None:
        status = reader.status
        status.delivered += 1
        if status.failing:
            log.warning(
                "%s delivers again after %d failed attempts",
                reader.endpoint.reader, status.failing,
            )  # fmt: skip
        status.failing, status.next_try, status.last_error = 0, 0.0, None
        reader.head, reader.refusals = "", 0

    def _failed(self, reader: _Reader, notice: Notice, attempt: Attempt) -> None:
        status = reader.status
        status.failures += 1
        status.failing += 1
        status.last_error = attempt.describe()
        delay = retry_delay(status.failing, self._random.random())
        if attempt.retry_after is not None:
            delay = max(delay, min(attempt.retry_after, MAX_RETRY_AFTER))
        status.next_try = self.clock() + delay
        level = logging.WARNING if status.failing == 1 else logging.INFO
        log.log(
            level,
            "%s (%s): notice %s not delivered (%s); next attempt in %.1f s",
            reader.endpoint.reader, status.url, notice.id, status.last_error, delay,
        )  # fmt: skip

    async def _give_up(self, reader: _Reader, notice: Notice, reason: str) -> None:
        if not await self._still_held(reader):
            raise _LeaseLost
        log.error(
            "%s: notice %s (seq %d, %s) GIVEN UP, it will not be sent again: %s",
            reader.endpoint.reader, notice.id, notice.seq, notice.type, reason,
        )  # fmt: skip
        await self._advance(reader, notice.seq, [(notice.seq, notice.id, reason)])
        reader.status.rejected += 1
        reader.head, reader.refusals = "", 0

    async def _advance(
        self, reader: _Reader, position: int, rejected: Sequence[tuple[int, str, str]] = ()
    ) -> None:
        work = self.store.advance_cursor(
            reader.endpoint.reader, position, rejected=rejected, now=self.clock()
        )
        await self._call(work, "cursor write")
        reader.position = reader.written = reader.status.position = position
