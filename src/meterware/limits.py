"""Per-minute rate limits and monthly quotas.

Per minute: a fixed window of 60 s per subject (key, or account), starting at the
subject's first hit, the algorithm of `limits`' `FixedWindowRateLimiter`. At most
`limit` requests are admitted in a window; across a window edge a client can send up to
2 × `limit` within a short time (the known burst of fixed windows). The default
(`LocalWindows`) keeps one small entry per active subject in process: O(1) per request.
With `rate_limit_storage="async+redis://…"` the windows live in a `limits` storage, shared
by every process (`SharedWindows`).

Per month: a counter per subject and billing period in the store, exact across processes.
`QuotaCounter` reserves units in small blocks with the store's atomic `reserve` and hands
them out without I/O. It never admits more than the limit: every admitted unit was
granted by the store first. The cost of that speed is bounded and documented:

- a process that stops gracefully returns its unused units (`release_all`);
- a crash loses the unused part of its blocks: those units count as used for the rest of
  the period (at most one block per subject, ≤ `max_block`, and ≤ 1/8 of what remained);
- with several processes, a block held by a process that gets no more traffic is
  returned after `lease_idle` to 1.25 × `lease_idle` seconds; until then the others may
  refuse up to that many.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meterware.clock import Clock, MonthPeriod, month_period, system_clock
from meterware.errors import ConfigurationError, StorageError, StorageUnavailable
from meterware.storage.base import Storage
from meterware.tiers import Limits

__all__ = [
    "LocalWindows",
    "MinuteResult",
    "PeriodCache",
    "QuotaCounter",
    "QuotaStatus",
    "SharedWindows",
    "quota_status",
]

log = logging.getLogger("meterware")

UNLIMITED = 2**62
WINDOW = 60


@dataclass(slots=True)
class MinuteResult:
    """The outcome of one hit on a per-minute window."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: float


class LocalWindows:
    """In-process fixed windows: a dict of `[window_end, count]`, O(1) per hit."""

    local = True

    def __init__(self, clock: Clock = system_clock, window: int = WINDOW) -> None:
        self.clock = clock
        self.window = window
        self._windows: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._windows)

    async def hit(self, subject: str, limit: int) -> MinuteResult:
        return self.hit_now(subject, limit, self.clock())

    def hit_now(self, subject: str, limit: int, now: float) -> MinuteResult:
        """`hit` at `now`, without a coroutine: the in-process windows never wait."""
        entry = self._windows.get(subject)
        if entry is None or now >= entry[0]:
            entry = [now + self.window, 0]
            self._windows[subject] = entry
        if entry[1] >= limit:
            return MinuteResult(False, limit, 0, entry[0])
        entry[1] += 1
        return MinuteResult(True, limit, limit - int(entry[1]), entry[0])

    def peek(self, subject: str, limit: int) -> MinuteResult:
        """The window's state without counting a hit."""
        entry = self._windows.get(subject)
        now = self.clock()
        if entry is None or now >= entry[0]:
            return MinuteResult(True, limit, limit, now + self.window)
        return MinuteResult(entry[1] < limit, limit, max(0, limit - int(entry[1])), entry[0])

    def sweep(self) -> int:
        """Forget windows that have ended; how many were dropped."""
        now = self.clock()
        ended = [s for s, e in self._windows.items() if now >= e[0]]
        for subject in ended:
            del self._windows[subject]
        return len(ended)

    async def close(self) -> None:
        self._windows.clear()


class SharedWindows:
    """Fixed windows in a `limits` async storage (`async+redis://…`), shared by processes.

    One round trip per request (`incr`); the window's end is learnt from the first hit or,
    when another process opened the window, from one `get_expiry`, then cached.
    When the storage fails, requests pass (fail open) and a warning is logged once per
    outage.
    """

    local = False

    def __init__(
        self, uri: str, clock: Clock = system_clock, window: int = WINDOW, *, fail_open: bool = True
    ) -> None:
        from limits.aio.storage import Storage as LimitsAsyncStorage
        from limits.errors import ConfigurationError as LimitsConfigurationError
        from limits.storage import storage_from_string

        if not uri.startswith("async+"):
            raise ConfigurationError(
                f"rate_limit_storage must be an async limits storage, such as "
                f"'async+redis://host:6379' or 'async+memory://', not {uri.split('://')[0]}://"
            )
        try:
            storage = storage_from_string(uri)
        except LimitsConfigurationError as exc:
            raise ConfigurationError(f"rate_limit_storage: {exc}") from None
        if not isinstance(storage, LimitsAsyncStorage):
            raise ConfigurationError(
                f"rate_limit_storage must be an async limits storage, such as "
                f"'async+redis://host:6379' or 'async+memory://', not {uri.split('://')[0]}://"
            )
        self.storage = storage
        self.clock = clock
        self.window = window
        self._resets: dict[str, float] = {}
        self._failing = False
        self.fail_open = fail_open

    def __len__(self) -> int:
        return len(self._resets)

    async def hit(self, subject: str, limit: int) -> MinuteResult:
        key = f"meterware/minute/{subject}"
        now = self.clock()
        try:
            count = await self.storage.incr(key, self.window)
            reset_at = self._resets.get(subject)
            if count == 1 or reset_at is None or reset_at <= now:
                if count == 1:
                    reset_at = now + self.window
                else:
                    reset_at = now + max(0.0, await self.storage.get_expiry(key) - now)
                self._resets[subject] = reset_at
        except Exception as exc:
            if not self._failing:
                self._failing = True
                what = "admitting requests" if self.fail_open else "refusing requests"
                log.warning("rate limit storage failed, %s: %s", what, exc)
            if not self.fail_open:
                raise StorageUnavailable(f"rate limit storage: {exc}") from exc
            return MinuteResult(True, limit, limit, now + self.window)
        if self._failing:
            self._failing = False
            log.warning("rate limit storage is back")
        return MinuteResult(count <= limit, limit, max(0, limit - count), reset_at)

    def peek(self, subject: str, limit: int) -> MinuteResult:
        now = self.clock()
        return MinuteResult(True, limit, limit, self._resets.get(subject, now + self.window))

    def sweep(self) -> int:
        now = self.clock()
        ended = [s for s, r in self._resets.items() if r <= now]
        for subject in ended:
            del self._resets[subject]
        return len(ended)

    async def close(self) -> None:
        self._resets.clear()


def windows_from(
    uri: str | None, clock: Clock, *, fail_open: bool = True
) -> LocalWindows | SharedWindows:
    """The per-minute limiter for a `rate_limit_storage` setting (None: in process)."""
    if uri is None or uri in ("", "memory://", "local://"):
        return LocalWindows(clock)
    return SharedWindows(uri, clock, fail_open=fail_open)


class PeriodCache:
    """The current billing period per anchor day, recomputed only when it ends."""

    def __init__(self) -> None:
        self._periods: dict[int, MonthPeriod] = {}

    def get(self, now: float, anchor_day: int = 1) -> MonthPeriod:
        period = self._periods.get(anchor_day)
        if period is None or not period.start <= now < period.end:
            period = month_period(now, anchor_day)
            self._periods[anchor_day] = period
        return period


class _Lease:
    __slots__ = ("count", "free", "period", "touched")

    def __init__(self, period: str) -> None:
        self.period = period
        self.free = 0  # units reserved in the store and not yet handed out
        self.count = 0  # the store's count after our last reservation
        self.touched = 0.0


class _Refill:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # requests holding or waiting for the lock


class QuotaCounter:
    """Exact monthly counters with in-process blocks of reserved units (see module doc)."""

    def __init__(
        self,
        store: Storage,
        *,
        clock: Clock = system_clock,
        max_block: int = 1000,
        lease_idle: float = 60.0,
        defer: Callable[[str, str, int], None] | None = None,
    ) -> None:
        if max_block < 1:
            raise ConfigurationError("quota_block must be >= 1")
        self.store = store
        self.defer = defer
        self.clock = clock
        self.max_block = max_block
        self.lease_idle = lease_idle
        self._leases: dict[str, _Lease] = {}
        self._refills: dict[str, _Refill] = {}  # only while a counter's refill is under way
        self._next_scan = 0.0

    def __len__(self) -> int:
        return len(self._leases)

    async def take(self, counter: str, period: str, amount: int, limit: int | None) -> bool:
        """Take `amount` units if the period's count stays within `limit`.

        With no limit there is nothing to enforce: the units are only counted, through
        `defer` (the write-behind ledger) when one is set.
        """
        taken = self.take_now(counter, period, amount, limit, self.clock())
        if taken:
            return True
        return await self._refill(counter, period, amount, UNLIMITED if limit is None else limit)

    def take_now(
        self, counter: str, period: str, amount: int, limit: int | None, now: float
    ) -> bool:
        """`take` at `now` without I/O: True if units were at hand, False if the store
        must be asked (call `take`)."""
        if limit is None and self.defer is not None:
            self.defer(counter, period, amount)
            return True
        lease = self._leases.get(counter)
        if lease is not None and lease.period == period and lease.free >= amount:
            lease.free -= amount
            lease.touched = now
            return True
        return False

    async def _refill(self, counter: str, period: str, amount: int, limit: int) -> bool:
        # One refill at a time per counter. The lock exists only while requests hold or
        # wait for it: kept for every counter, 10,000 keys meant 20,000 more objects for
        # each garbage collection to walk.
        refill = self._refills.get(counter)
        if refill is None:
            refill = self._refills[counter] = _Refill()
        refill.users += 1
        try:
            async with refill.lock:
                return await self._refill_locked(counter, period, amount, limit)
        finally:
            refill.users -= 1
            if not refill.users:
                del self._refills[counter]

    async def _refill_locked(self, counter: str, period: str, amount: int, limit: int) -> bool:
        lease = await self._lease(counter, period)
        if lease.free < amount:
            # A block is at most max_block units, 1/8 of what remains (so the last
            # units go one at a time) and 1% of the limit (what a crash may cost).
            remaining = max(0, limit - lease.count)
            block = min(self.max_block, remaining // 8, max(1, limit // 100))
            want = max(amount - lease.free, block)
            granted, lease.count = await self.store.reserve(counter, period, want, limit)
            lease.free += granted
        lease.touched = self.clock()
        if lease.free < amount:
            return False
        lease.free -= amount
        return True

    async def _lease(self, counter: str, period: str) -> _Lease:
        lease = self._leases.get(counter)
        if lease is not None and lease.period == period:
            return lease
        old, lease = lease, _Lease(period)
        self._leases[counter] = lease  # requests still in the old period can no longer take
        if old is not None and old.free:
            free, old.free = old.free, 0
            await self.store.release(counter, old.period, free)
        return lease

    def give_back(self, counter: str, period: str, amount: int, limit: int | None = 0) -> None:
        """Return units taken for a request that was then refused or not charged."""
        if limit is None and self.defer is not None:
            self.defer(counter, period, -amount)
            return
        lease = self._leases.get(counter)
        if lease is not None and lease.period == period:
            lease.free += amount

    async def force(self, counter: str, period: str, amount: int, limit: int | None = 0) -> None:
        """Count `amount` more units whatever the limit (a cost raised at run time)."""
        if limit is None and self.defer is not None:
            self.defer(counter, period, amount)
            return
        lease = self._leases.get(counter)
        if lease is not None and lease.period == period and lease.free >= amount:
            lease.free -= amount
            return
        count = await self.store.add(counter, period, amount)
        if lease is not None and lease.period == period:
            lease.count = count

    def estimate(self, counter: str, period: str) -> int:
        """The period's count as last seen, without I/O (for response headers)."""
        lease = self._leases.get(counter)
        return lease.count - lease.free if lease is not None and lease.period == period else 0

    def unused(self, counter: str, period: str) -> int:
        """Units this process holds reserved and has not handed out."""
        lease = self._leases.get(counter)
        return lease.free if lease is not None and lease.period == period else 0

    async def used(self, counter: str, period: str) -> int:
        """The period's count as clients should see it: the store's, less our unused units."""
        return max(0, await self.store.counter(counter, period) - self.unused(counter, period))

    async def release_idle(self) -> None:
        """Return the unused units of leases not touched for `lease_idle` seconds.

        The leases are scanned at most every `lease_idle / 4` seconds (a scan costs
        O(leases), and this is called after every flush): an idle lease goes back within
        1.25 × `lease_idle`. Raises `StorageError` at the first failure; leases not
        returned are kept and tried again at the next scan.
        """
        now = self.clock()
        interval = self.lease_idle / 4
        if self._next_scan - interval <= now < self._next_scan:  # (a clock set back: scan)
            return
        self._next_scan = now + interval
        cutoff = now - self.lease_idle
        for counter, lease in list(self._leases.items()):
            if lease.touched < cutoff and not self._busy(counter):
                await self._return(counter, lease)

    async def release_all(self) -> None:
        """Return every unused unit (graceful shutdown); raises `StorageError` after trying
        them all if any could not be returned."""
        failed: StorageError | None = None
        for counter, lease in list(self._leases.items()):
            try:
                await self._return(counter, lease)
            except StorageError as exc:
                failed = exc
        if failed is not None:
            raise failed

    def _busy(self, counter: str) -> bool:
        """Whether a refill of `counter` is under way or waited for."""
        return counter in self._refills

    async def _return(self, counter: str, lease: _Lease) -> None:
        """Give a lease's unused units back to the store, then forget the lease. If the
        store fails, the units stay in the lease, to be handed out or returned later."""
        free, lease.free = lease.free, 0  # out of reach of requests while we wait
        if free:
            try:
                await self.store.release(counter, lease.period, free)
            except StorageError:
                lease.free += free
                raise
        if self._leases.get(counter) is lease and not lease.free and not self._busy(counter):
            del self._leases[counter]  # not refilled, and no refill under way


def requests_counter(subject: str) -> str:
    return f"requests:{subject}"


def credits_counter(subject: str) -> str:
    return f"credits:{subject}"


@dataclass(frozen=True)
class QuotaStatus:
    """One source of truth for what a caller has used and has left."""

    tier: str
    per_minute: int | None
    monthly_limit: int | None
    monthly_requests: int
    monthly_reset_at: float
    period_start: float
    monthly_credits_limit: int | None
    monthly_credits: int
    total_requests: int

    @property
    def monthly_remaining(self) -> int | None:
        if self.monthly_limit is None:
            return None
        return max(0, self.monthly_limit - self.monthly_requests)

    def as_dict(self, iso: Callable[[float], str]) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "requests_per_minute": self.per_minute,
            "monthly_requests": self.monthly_requests,
            "monthly_limit": self.monthly_limit,
            "monthly_remaining": self.monthly_remaining,
            "monthly_reset_at": iso(self.monthly_reset_at),
            "monthly_credits": self.monthly_credits,
            "monthly_credits_limit": self.monthly_credits_limit,
            "total_requests": self.total_requests,
        }


async def quota_status(
    store: Storage,
    *,
    subject: str,
    key_id: str | None,
    limits: Limits,
    now: float,
    counter: QuotaCounter | None = None,
) -> QuotaStatus:
    """Read a caller's monthly numbers: what the usage endpoint and the CLI both show."""
    period = month_period(now, limits.anchor_day)
    requests, credits = requests_counter(subject), credits_counter(subject)
    if counter is not None:
        used, spent = (
            await counter.used(requests, period.id),
            await counter.used(credits, period.id),
        )
    else:
        used = await store.counter(requests, period.id)
        spent = await store.counter(credits, period.id)
    total = (await store.key_totals(key_id)).requests if key_id else used
    return QuotaStatus(
        tier=limits.tier,
        per_minute=limits.per_minute,
        monthly_limit=limits.monthly_requests,
        monthly_requests=used,
        monthly_reset_at=period.end,
        period_start=period.start,
        monthly_credits_limit=limits.monthly_credits,
        monthly_credits=spent,
        total_requests=total,
    )
