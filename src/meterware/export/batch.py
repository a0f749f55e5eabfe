"""One batch of the exporter: the events after the cursor read from the outbox, given
their accounts, sent to the sink while the lease is renewed, and acknowledged as far as the
sink answered for them (`_Batches`, the batch half of `meterware.export.exporter.Exporter`;
the guarantees are in `meterware.export.exporter`).

It imports the events, the sinks and the results, never the exporter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from meterware.errors import StorageError
from meterware.export.events import UsageEvent
from meterware.export.results import Progress, Rejection
from meterware.export.sinks import Delivery, Sink, SinkUnavailable
from meterware.guard import bounded
from meterware.keys import Account
from meterware.storage.base import Storage
from meterware.storage.records import OutboxEvent

log = logging.getLogger("meterware.export")

T = TypeVar("T")


class _Batches:
    """The batch half of an `Exporter` (which sets these attributes)."""

    store: Storage
    sink: Sink
    name: str
    batch: int
    since: float | None
    owner: str
    lease_ttl: float
    clock: Callable[[], float]
    on_lag: Callable[[float], None] | None
    timeout: float
    _accounts: dict[str, Account | None]
    _holding: bool
    _since_noted: bool

    # -- one batch -----------------------------------------------------------------------

    async def run_once(self) -> Progress:
        """Send one batch and acknowledge what the sink answered for (see the exporter's doc).

        Raises `SinkUnavailable` when the sink cannot take the batch now (or acknowledged
        none of it), `StorageError` when the store fails or does not answer in time;
        nothing is acknowledged then.
        """
        if not await self._take_lease():
            return Progress(held=False)
        position = await self._position()
        rows = await self._call(self.store.outbox_after(position, self.batch), "outbox read")
        if not rows:
            self._report_lag(0.0)
            return Progress(held=True, position=position, caught_up=True)
        events = await self._events(rows)
        try:
            delivery = await self._send(events)
        except SinkUnavailable:
            self._report_lag(self.clock() - rows[0].time)
            raise
        done, rejected = _acknowledged(rows, delivery)
        if not done:
            self._report_lag(self.clock() - rows[0].time)
            raise SinkUnavailable(
                f"{self.sink.name}: the sink answered for none of the batch's first event "
                f"({rows[0].id}): sending it again later"
            )
        if not await self._take_lease():  # fencing: lost during the batch, not ours to move
            log.warning(
                "%s: another exporter took the lease during the batch: the cursor stays at "
                "%d (the events sent meanwhile are deduplicated by id when sent again)",
                self.name, position,
            )  # fmt: skip
            return Progress(held=False, read=len(rows), waiting=len(rows), position=position)
        end = done[-1].seq
        noted = [(r.seq, r.id, r.reason) for r in rejected]
        await self._call(
            self.store.advance_cursor(self.name, end, rejected=noted, now=self.clock()),
            "cursor write",
        )
        for r in rejected:
            log.error(
                "%s: event %s (seq %d, account %s) REJECTED by %s, it will not be sent "
                "again: %s", self.name, r.id, r.seq, r.account_id, self.sink.name, r.reason,
            )  # fmt: skip
        waiting = rows[len(done) :]
        if waiting:
            oldest: OutboxEvent | None = waiting[0]
        elif len(rows) < self.batch:
            oldest = None
        else:
            after = await self._call(self.store.outbox_after(end, 1), "outbox read")
            oldest = after[0] if after else None
        lag = 0.0 if oldest is None else max(0.0, self.clock() - oldest.time)
        self._report_lag(lag)
        return Progress(
            held=True,
            read=len(rows),
            sent=len(done) - len(rejected),
            rejected=tuple(rejected),
            waiting=len(waiting),
            position=end,
            caught_up=oldest is None,
            lag=lag,
        )

    async def _call(self, work: Coroutine[Any, Any, T], what: str) -> T:
        return await bounded(work, self.timeout, f"{self.name}: {what}")

    async def _take_lease(self) -> bool:
        self._holding = await self._call(
            self.store.take_lease(self.name, self.owner, now=self.clock(), ttl=self.lease_ttl),
            "lease",
        )
        return self._holding

    async def _position(self) -> int:
        """The cursor; a new reader's first position (with `since`) is written now."""
        position = await self._call(self.store.cursor(self.name), "cursor read")
        if position is not None:
            if self.since is not None and not self._since_noted:
                log.info("%s: the reader exists (at %d): since is ignored", self.name, position)
            self._since_noted = True
            return position
        if self.since is None:
            return 0
        start = await self._call(self.store.outbox_seq_before(self.since), "outbox read")
        await self._call(self.store.advance_cursor(self.name, start, now=self.clock()), "cursor")
        log.info("%s: a new reader, starting after outbox event %d", self.name, start)
        self._since_noted = True
        return start

    async def _events(self, rows: Sequence[OutboxEvent]) -> list[UsageEvent]:
        """The rows as usage events, with their account's external id and Stripe
        customer. Accounts are cached; one missing either is read again each batch, so a
        mapping added later is used (before the sink could reject an event for it)."""
        for account_id in dict.fromkeys(r.account_id for r in rows):
            known = self._accounts.get(account_id)
            if known is None or known.external_id is None or known.stripe_customer_id is None:
                self._accounts[account_id] = await self._call(
                    self.store.get_account(account_id), "account read"
                )
        events = []
        for r in rows:
            account = self._accounts.get(r.account_id)
            events.append(UsageEvent(
                id=r.id, seq=r.seq, account_id=r.account_id, key_id=r.key_id, action=r.action,
                day=r.day, requests=r.requests, calls=r.calls, credits=r.credits, time=r.time,
                external_id=account.external_id if account else None,
                stripe_customer_id=account.stripe_customer_id if account else None,
            ))  # fmt: skip
        return events

    async def _send(self, events: Sequence[UsageEvent]) -> Delivery:
        """The sink's answer, the lease renewed in the background meanwhile."""
        renewing = asyncio.ensure_future(self._keep_lease())
        try:
            return await self.sink.send(events)
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                if not await self._take_lease():
                    log.warning("%s: the lease was lost during a batch", self.name)
                    return
            except StorageError as exc:
                log.debug("%s: could not renew the lease: %s", self.name, exc)

    def _report_lag(self, seconds: float) -> None:
        if self.on_lag is not None:
            try:
                self.on_lag(seconds)
            except Exception:
                log.exception("%s: on_lag failed", self.name)


def _acknowledged(
    rows: Sequence[OutboxEvent], delivery: Delivery
) -> tuple[list[OutboxEvent], list[Rejection]]:
    """The longest prefix of `rows` the sink answered for (accepted or rejected), and the
    rejections in it."""
    accepted = set(delivery.accepted)
    done: list[OutboxEvent] = []
    rejected: list[Rejection] = []
    for row in rows:
        if row.id in accepted:
            done.append(row)
        elif row.id in delivery.rejected:
            done.append(row)
            rejected.append(Rejection(row.seq, row.id, row.account_id, delivery.rejected[row.id]))
        else:
            break
    return done, rejected
