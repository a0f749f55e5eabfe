"""Monthly quotas: exact counters per subject and billing period, served from leases.

A counter lives in the store and is exact across processes. `QuotaCounter` reserves
units in small blocks with the store's atomic `reserve` and hands them out without I/O.
It never admits more than the limit: every admitted unit was granted by the store
first. The cost of that speed is bounded and documented:

- a process that stops gracefully returns its unused units (`release_all`);
- a crash loses the unused part of its blocks: those units count as used for the rest of
  the period (at most one block per subject, ≤ `max_block`, and ≤ 1/8 of what remained);
- with several processes, a block held by a process that gets no more traffic is
  returned after `lease_idle` to 1.25 × `lease_idle` seconds; until then the others may
  refuse up to that many.

`quota_status` is the read model: what the usage endpoint and the CLI both report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meterware.clock import month_period
from meterware.errors import ConfigurationError, StorageError
from meterware.storage.base import Storage
from meterware.tiers import Limits

__all__ = ["QuotaCounter", "QuotaStatus", "credits_counter", "quota_status", "requests_counter"]

UNLIMITED = 2**62


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
    """Exact monthly counters with in-process blocks of reserved units (see module doc).

    `defer(counter, period, amount)` counts units of counters that have no limit (there
    is nothing to enforce, so they are only counted, write-behind).
    """

    def __init__(
        self,
        store: Storage,
        *,
        max_block: int = 1000,
        lease_idle: float = 60.0,
        defer: Callable[[str, str, int], None],
    ) -> None:
        if max_block < 1:
            raise ConfigurationError("quota_block must be >= 1")
        self.store = store
        self.defer = defer
        self.max_block = max_block
        self.lease_idle = lease_idle
        self._leases: dict[str, _Lease] = {}
        self._refills: dict[str, _Refill] = {}  # only while a counter's refill is under way
        self._next_scan = 0.0

    def __len__(self) -> int:
        return len(self._leases)

    async def take(
        self, counter: str, period: str, amount: int, limit: int | None, now: float
    ) -> bool:
        """Take `amount` units if the period's count stays within `limit`: from this
        process's block without I/O when it has them, else from the store."""
        if limit is None:
            self.defer(counter, period, amount)
            return True
        lease = self._leases.get(counter)
        if lease is not None and lease.period == period and lease.free >= amount:
            lease.free -= amount
            lease.touched = now
            return True
        return await self._refill(counter, period, amount, limit, now)

    def at_hand(self, counter: str, period: str, amount: int, limit: int | None) -> bool:
        """Whether `take` would be served without the store (no limit, or units held)."""
        if limit is None:
            return True
        lease = self._leases.get(counter)
        return lease is not None and lease.period == period and lease.free >= amount

    async def _refill(self, counter: str, period: str, amount: int, limit: int, now: float) -> bool:
        # One refill at a time per counter. The lock exists only while requests hold or
        # wait for it: kept for every counter, 10,000 keys meant 20,000 more objects for
        # each garbage collection to walk.
        refill = self._refills.get(counter)
        if refill is None:
            refill = self._refills[counter] = _Refill()
        refill.users += 1
        try:
            async with refill.lock:
                return await self._refill_locked(counter, period, amount, limit, now)
        finally:
            refill.users -= 1
            if not refill.users:
                del self._refills[counter]

    async def _refill_locked(
        self, counter: str, period: str, amount: int, limit: int, now: float
    ) -> bool:
        lease = await self._lease(counter, period)
        if lease.free < amount:
            # A block is at most max_block units, 1/8 of what remains (so the last
            # units go one at a time) and 1% of the limit (what a crash may cost).
            remaining = max(0, limit - lease.count)
            block = min(self.max_block, remaining // 8, max(1, limit // 100))
            want = max(amount - lease.free, block)
            granted, lease.count = await self.store.reserve(counter, period, want, limit)
            lease.free += granted
        lease.touched = now
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

    def give_back(self, counter: str, period: str, amount: int, limit: int | None) -> None:
        """Return units taken for a request that was then refused or not charged."""
        if limit is None:
            self.defer(counter, period, -amount)
            return
        lease = self._leases.get(counter)
        if lease is not None and lease.period == period:
            lease.free += amount

    async def force(self, counter: str, period: str, amount: int, limit: int | None) -> None:
        """Count `amount` more units whatever the limit (a cost raised at run time)."""
        if limit is None:
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

    async def release_idle(self, now: float) -> None:
        """Return the unused units of leases not touched for `lease_idle` seconds.

        The leases are scanned at most every `lease_idle / 4` seconds (a scan costs
        O(leases)): an idle lease goes back within 1.25 × `lease_idle`. Raises
        `StorageError` at the first failure; leases not returned are kept and tried again
        at the next scan.
        """
        interval = self.lease_idle / 4
        if self._next_scan - interval <= now < self._next_scan:  # (a clock set back: scan)
            return
        self._next_scan = now + interval
        cutoff = now - self.lease_idle
        for counter, lease in list(self._leases.items()):
            if lease.touched < cutoff and counter not in self._refills:
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
        idle = not lease.free and counter not in self._refills
        if self._leases.get(counter) is lease and idle:
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
    """Read a caller's monthly numbers: what the usage endpoint and the CLI both show.
    `counter` is the running process's, whose unused units are not requests made."""
    period = month_period(now, limits.anchor_day)
    requests, credits = requests_counter(subject), credits_counter(subject)
    if counter is not None:
        used = await counter.used(requests, period.id)
        spent = await counter.used(credits, period.id)
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
        monthly_credits_limit=limits.monthly_credits,
        monthly_credits=spent,
        total_requests=total,
    )
