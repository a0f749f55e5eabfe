"""Each endpoint as a reader of the stored notices: where a sender is with it
(`EndpointStatus`), the sender's state for it, and the store lease the sender holds on it
(`_LeaseHolder`, the lease half of `meterware.webhooks.sender.WebhookSender`; what the
lease guarantees is in `meterware.webhooks`).

It imports the endpoints, never the sender.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from meterware.errors import StorageError
from meterware.guard import bounded
from meterware.storage.base import Storage
from meterware.webhooks.endpoints import WebhookEndpoint

__all__ = ["EndpointStatus"]

log = logging.getLogger("meterware.webhooks")

T = TypeVar("T")


@dataclass
class EndpointStatus:
    """Where a sender is with one endpoint.

    `delivered` notices were answered 2xx, `rejected` given up on, `skipped` not sent
    (types it does not take, history older than `max_age` for a new endpoint), since the
    sender started; `failures` attempts failed. `holding`: the store's last answer to
    its taking the lease (a release leaves it as it was); `caught_up`: nothing was left
    after `position` (its cursor) when it last looked; `failing` consecutive attempts
    failed (`last_error` the latest), the next one not before `next_try`.
    `store_error`: why its last round could not read or write the store (None when it
    could).
    """

    name: str
    url: str
    delivered: int = 0
    rejected: int = 0
    skipped: int = 0
    failures: int = 0
    failing: int = 0
    last_error: str | None = None
    holding: bool = False
    caught_up: bool = False
    position: int | None = None
    next_try: float = 0.0
    store_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "url": self.url, "delivered": self.delivered,
            "rejected": self.rejected, "skipped": self.skipped, "failures": self.failures,
            "failing": self.failing, "last_error": self.last_error, "holding": self.holding,
            "caught_up": self.caught_up, "position": self.position,
            "store_error": self.store_error,
        }  # fmt: skip


@dataclass
class _Reader:
    """A sender's state for one endpoint."""

    endpoint: WebhookEndpoint
    status: EndpointStatus
    held_until: float = 0.0  # the lease, by our clock (0: not held)
    position: int | None = None  # the cursor, known while the lease is held throughout
    written: int = 0  # the cursor as last written or read
    fresh: bool = False  # no cursor in the store yet: a new endpoint
    head: str = ""  # the notice being retried
    refusals: int = 0  # its 4xx answers
    told: bool | None = None  # whether the log last said we hold the lease
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _LeaseLost(Exception):
    pass


class _LeaseHolder:
    """The lease on each endpoint's reader, and the bounded store calls, of a
    `WebhookSender` (which sets these attributes)."""

    store: Storage
    owner: str
    lease_ttl: float
    timeout: float
    clock: Callable[[], float]
    _reserve: float  # lease left to start a notice
    _store_failing: bool

    # -- the lease ----------------------------------------------------------------------

    def _holds(self, reader: _Reader) -> bool:
        """Whether the lease has `timeout` seconds left, by our clock: long enough for a
        cursor write."""
        return reader.held_until - self.clock() >= self.timeout

    async def _hold(self, reader: _Reader) -> bool:
        """Hold the lease with enough time left to send a notice and write the cursor:
        renewed when less than `2 × timeout + 1` s is left. A lease that lapsed meanwhile
        (a stalled process) counts as lost, even if taken again: the cursor is read
        again."""
        now = self.clock()
        if reader.held_until - now >= self._reserve:
            return True
        lapsed = reader.held_until <= now
        held = reader.status.holding = await self._take(reader, now)
        if held != reader.told:
            reader.told = held
            log.info(
                "%s: %s", reader.endpoint.reader,
                "this sender delivers" if held else "another sender holds the lease",
            )  # fmt: skip
        if not held or lapsed:
            reader.position = None
        return held

    async def _still_held(self, reader: _Reader) -> bool:
        """The fencing check before the cursor moves (see `meterware.webhooks`, The lease)."""
        if self._holds(reader):
            return True
        held = reader.status.holding = await self._take(reader, self.clock())
        if not held:
            reader.position = None
            log.warning(
                "%s: the lease was lost with a notice in flight: the cursor stays, "
                "the sender holding it sends that notice again", reader.endpoint.reader,
            )  # fmt: skip
        return held

    async def _take(self, reader: _Reader, now: float) -> bool:
        """Take or renew the lease in the store; whether we hold it."""
        work = self.store.take_lease(
            reader.endpoint.reader, self.owner, now=now, ttl=self.lease_ttl
        )
        held = await self._call(work, "lease")
        reader.held_until = now + self.lease_ttl if held else 0.0
        return held

    async def _release(self, reader: _Reader) -> None:
        if not reader.held_until:
            return
        reader.held_until, reader.position = 0.0, None
        try:
            await self._call(
                self.store.release_lease(reader.endpoint.reader, self.owner), "lease release"
            )
        except StorageError as exc:
            log.warning(
                "%s: could not release the lease (it expires by itself): %s",
                reader.endpoint.reader, exc,
            )  # fmt: skip

    # -- the store ----------------------------------------------------------------------

    async def _call(self, work: Coroutine[Any, Any, T], what: str) -> T:
        return await bounded(work, self.timeout, f"webhooks: {what}")

    def _store_failed(self, exc: StorageError) -> None:
        if not self._store_failing:
            self._store_failing = True
            log.warning("webhooks: the store fails (%s): trying again", exc)

    def _store_answers(self) -> None:
        if self._store_failing:
            self._store_failing = False
            log.warning("webhooks: the store answers again")
