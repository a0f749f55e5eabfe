"""A `Runtime`'s lifecycle and background work, as the mixin `Background`.

Background work runs in tasks of its own, so that one failing cannot hold up another:
the ledger's flush (every `flush_interval`, with backoff while the store fails), the key
poll (every `key_refresh`: revocations and key changes), and upkeep (idle quota leases
returned, ended windows forgotten). `tick()` runs the poll and the upkeep once, at the
clock's time: tests move a fake clock and tick instead of sleeping.

`Background` declares the services it works with; `meterware.runtime.Runtime` wires them.
Imports the services, never the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from meterware.admission import Admission, Plan
from meterware.clock import Clock
from meterware.config import Settings
from meterware.errors import ConfigurationError, StorageError
from meterware.guard import Breaker, bounded
from meterware.keycache import KeyCache
from meterware.leases import Leases
from meterware.ledger import Meter
from meterware.metrics import Metrics
from meterware.notices import Notifier, balance_notice, key_notice, outage_notice
from meterware.reported import MonthViews
from meterware.storage import Storage
from meterware.storage.records import Notice
from meterware.tiers import TierTable
from meterware.webhooks import WebhookEndpoint, WebhookSender

__all__ = ["Background"]

log = logging.getLogger("meterware")

UPKEEP_EVERY = 1.0  # seconds between background upkeep runs (idle leases, ended windows)
NOTICES_EVERY = 1.0  # seconds between storing and delivering notices
EXPIRY_EVERY = 60.0  # seconds between looks for keys that expired
EXPIRY_LOOKBACK = 86_400.0  # at start, expiries of the last day are noticed


class Background:
    """Starts and stops a runtime's services, and runs their background work (see module
    doc); a mixin of `Runtime`, which sets every attribute declared here."""

    settings: Settings
    clock: Clock
    metrics: Metrics | None
    store: Storage
    breaker: Breaker
    keys: KeyCache | None
    views: MonthViews
    meter: Meter
    leases: Leases
    minutes: Leases  # the per-minute windows' leases: `leases` itself, or their own store's
    admission: Admission
    notifier: Notifier
    tiers: TierTable
    webhooks: list[WebhookEndpoint]
    _owns_store: bool
    _webhooks_stop: asyncio.Event
    _sending: asyncio.Task[None] | None
    _expiries_seen: float
    _plans: dict[int, Plan]
    _started: bool
    _starting: asyncio.Lock
    _tasks: list[asyncio.Task[None]]
    _stopping: bool

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        """Open storage, check the tiers of stored keys, start the background tasks.

        Called on lifespan startup, or by the first request where there is no lifespan.
        """
        async with self._starting:
            if self._started:
                return
            if not self.store.opened:
                await self.store.open()
            else:
                self._owns_store = False
            unknown = {t for t in await self.store.key_tiers() if not self.tiers.knows(t)}
            if unknown:
                raise ConfigurationError(
                    f"stored keys use tiers the tier table does not know: {sorted(unknown)}"
                )
            if self.keys is not None:
                await self.keys.start()
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._flushing()),
                loop.create_task(self._every(self.settings.key_refresh, self.poll_keys)),
                loop.create_task(
                    self._every(min(UPKEEP_EVERY, self.settings.lease_idle / 4), self.upkeep)
                ),
            ]
            self._tasks.append(loop.create_task(self._every(NOTICES_EVERY, self.notices)))
            if self.webhooks:  # (one process at a time delivers to an endpoint: a lease)
                sender = WebhookSender(self.store, self.webhooks, clock=self.clock)
                self._webhooks_stop.clear()
                self._sending = loop.create_task(sender.run(self._webhooks_stop))
            if self.metrics is not None:
                self._tasks.append(loop.create_task(self.metrics.publish_every(1.0)))
            self._started = True

    async def stop(self) -> None:
        """Flush everything, return unused quota, close what meterware opened."""
        if not self._started:
            return
        self._started = False
        self._stopping = True
        self.meter.wake()
        flushing, *others = self._tasks
        for task in others:
            task.cancel()
        try:  # let the flush task finish the flush it may be in
            await asyncio.wait_for(asyncio.shield(flushing), timeout=10)
        except asyncio.TimeoutError:
            flushing.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._stopping = False
        if self.meter.writing:  # writes that outlived their flush: their outcome first
            await asyncio.wait(self.meter.writing, timeout=self.settings.background_timeout)
        for attempt in range(3):
            if await self.meter.flush():
                break
            await asyncio.sleep(0.2 * (attempt + 1))
        else:
            log.error(
                "usage could not be written at shutdown: %d aggregates lost", self.meter.pending
            )
        for leases in {self.leases, self.minutes}:
            try:
                await leases.release_all()
            except StorageError as exc:
                log.warning("could not return unused quota at shutdown: %s", exc)
        await self.notifier.close()
        if self._sending is not None:  # stopped, not cancelled: a delivery in flight ends first
            self._webhooks_stop.set()
            try:
                await asyncio.wait_for(self._sending, timeout=self.settings.background_timeout + 1)
            except (asyncio.TimeoutError, StorageError) as exc:
                log.warning("the webhook sender did not stop cleanly: %r", exc)
        if self.minutes is not self.leases:
            await self.minutes.store.close()
        if self._owns_store:
            await self.store.close()

    async def tick(self) -> None:
        """Run the key poll and the upkeep once, now (tests call it after moving time)."""
        await self.poll_keys()
        await self.upkeep()

    def _notify(self, notice: Notice) -> None:
        self.notifier.emit(notice)

    def _outage(self, concern: str, failing: bool, reason: str) -> None:
        self.notifier.emit(outage_notice(concern, failing, reason, self.clock()))

    async def notices(self) -> None:
        """Store the notices emitted, hand stored ones to `on_notice`, and look for keys
        that expired (every minute)."""
        now = self.clock()
        if now >= self._expiries_seen + EXPIRY_EVERY:
            since = self._expiries_seen or now - EXPIRY_LOOKBACK
            timeout = self.settings.background_timeout
            for key in await bounded(self.store.keys_expired(since, now), timeout, "expiries"):
                self.notifier.emit(key_notice("expired", key, now))
            self._expiries_seen = now
        await self.notifier.run()

    async def poll_keys(self) -> None:
        """Drop cached keys that changed in the store (revoked, rotated, re-tiered)."""
        if self.keys is not None:
            await self.keys.poll()

    async def upkeep(self) -> None:
        """Return idle leases, forget those whose window ended; let the store look for
        trouble of its own (a SQLite file replaced, say)."""
        if await self.store.check():  # other data now: nothing cached from it holds
            if self.keys is not None:
                self.keys.forget()
            for leases in {self.leases, self.minutes}:
                leases.forget_all()
            self._plans.clear()
        now = self.clock()
        for leases in {self.leases, self.minutes}:
            await leases.release_idle(now)

    async def _flushing(self) -> None:
        while not self._stopping:
            await self.meter.wait()
            if self._stopping:
                return
            await self.meter.flush(after=self._read_views)

    def _flushed(self, seconds: float, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.flush(seconds, ok)
            self.metrics.ledger_pending(self.meter.pending)
            if not ok:
                self.metrics.store_error("ledger")

    def _ledger_written(self) -> None:
        """A flush's write succeeded: the store answers again (a flush with nothing to
        write says nothing of the store)."""
        self.breaker.answered()
        self.admission.outages.recovered("storage")

    async def _read_views(self) -> None:
        """After a flush: the month's counts read again (thresholds other processes'
        calls crossed), and the balances of the accounts whose grants paid."""
        now = self.clock()
        timeout = self.settings.background_timeout
        try:
            views = await bounded(self.views.read(self.store, now), timeout, "month's counts")
            for view in views:
                if view.used >= view.next_requests or view.credits >= view.next_credits:
                    self.admission.crossed(view, now)
            for account_id in self.meter.drawn:
                grants = await bounded(self.store.grants(account_id), timeout, "grants")
                draws = await bounded(self.store.balance_draws(account_id), timeout, "draws")
                used: dict[str, int] = {}
                for d in draws:
                    used[d.grant_id] = used.get(d.grant_id, 0) + d.credits
                live = [g for g in grants if g.expires_at is None or g.expires_at > now]
                balance = sum(g.amount - used.get(g.grant_id, 0) for g in live)
                notice = balance_notice(account_id, balance, grants, now)
                if notice is not None:
                    self.notifier.emit(notice)
        except StorageError as exc:
            log.debug("could not read the month's counts or balances: %s", exc)

    async def _every(self, interval: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except StorageError as exc:
                log.debug("background storage work failed: %s", exc)
            except Exception:
                log.exception("meterware background task error")
