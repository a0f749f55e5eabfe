"""The admission engine: exact counters served from leases.

Every limit meterware enforces is a counter with windows in a shared store: the
per-minute window of a key (or account), the calendar month's request quota, the
month's credit allowance. The store's one atomic operation, `reserve`, grants units of
a counter's current window without ever passing its limit. `Leases` reserves them in
blocks and hands them out without I/O; every unit handed out was granted by the store
first, so no number of processes can admit more than a window's limit.

Blocks, and what they cost:

- a block is at most `max_block` units, a share of the limit (1/40 for the minute,
  1/100 for the month), and 1/8 of what remains: near the limit, units go one at a time;
- when a request must wait for the store, one round trip tops up every counter the
  request needs that is running low; a lease below half a block is topped up in the
  background before it runs out;
- units held by one process are units the others cannot have: a process can be refused
  while others hold at most one block each of that window (an early refusal). Idle
  leases go back to the store after their `idle` seconds; a minute lease dies with its
  window;
- a crash loses the unused part of its blocks: those units count as used until their
  window ends;
- when the store says a window is full, requests are refused without asking it again
  for `recheck` seconds (units returned by other processes are seen after that); while
  the store cannot be reached, a window this process saw full stays refused until it
  ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

from meterware.errors import StorageError
from meterware.storage.records import Claim, Grant

__all__ = ["CounterStore", "Lease", "Leases", "Want"]

log = logging.getLogger("meterware")


class CounterStore(Protocol):
    """Where counters live: every `Storage`, and the Redis windows."""

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[Grant]: ...

    async def release(self, counter: str, window_end: float, amount: int) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class Want:
    """Units of one counter that a request needs.

    A window this request opens ends `window` seconds from now (a minute: 60) or, when
    `window` is 0, at `end` (a month: the period's end); `share` is the part of the
    limit one block may be, `idle` how long unused units may stay held.
    """

    counter: str
    amount: int
    limit: int
    share: float
    idle: float
    window: float = 0.0
    end: float = 0.0

    def window_end(self, now: float) -> float:
        """Where a window opened at `now` would end."""
        return now + self.window if self.window else self.end


class Lease:
    """Units of one counter's window held by this process."""

    __slots__ = ("count", "end", "free", "full_until", "idle", "limit", "low", "refill", "touched")

    def __init__(self, want: Want) -> None:
        self.end = 0.0  # the end of the window the units belong to (0: none yet)
        self.free = 0  # units reserved in the store and not handed out
        self.count = 0  # the window's count at our last reservation
        self.limit = want.limit
        self.idle = want.idle
        self.touched = 0.0
        self.full_until = 0.0  # the store said the window is full: refuse until then
        self.low = 0  # below this many free units, top the lease up in the background
        self.refill: asyncio.Future[None] | None = None  # a reservation under way

    def left(self, now: float) -> int:
        """Units of the window that no process has been handed out, as last seen here."""
        if self.end <= now:
            return self.limit
        return max(0, self.limit - self.count + self.free)


@dataclass(slots=True)
class _Reservation:
    leases: list[Lease]
    claims: list[Claim]
    done: asyncio.Future[None]


class Leases:
    """Leases of every counter this process uses (see module doc)."""

    def __init__(self, store: CounterStore, *, max_block: int = 1000, recheck: float = 1.0):
        self.store = store
        self.max_block = max_block
        self.recheck = recheck
        self._leases: dict[str, Lease] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.round_trips = 0

    def __len__(self) -> int:
        return len(self._leases)

    def get(self, counter: str) -> Lease | None:
        return self._leases.get(counter)

    def hand_out(self, want: Want, now: float, also: Sequence[Want] = ()) -> bool:
        """Take `want.amount` units from the lease if it has them now, without I/O (and
        top it up in the background when it runs low). False means only "not at hand":
        `take` decides."""
        lease = self._leases.get(want.counter)
        if lease is None or lease.free < want.amount or lease.end <= now:
            return False
        if lease.limit != want.limit:
            return False
        lease.free -= want.amount
        lease.touched = now
        if lease.free < lease.low and lease.refill is None:
            self._prefetch(want, also, now)
        return True

    async def take(self, want: Want, now: float, also: Sequence[Want] = ()) -> bool:
        """Take `want.amount` units, or refuse: from the lease without I/O when it has
        them, else from the store, topping up the counters of `also` in the same round
        trip. Raises `StorageError` when the store fails."""
        if self.hand_out(want, now, also):
            return True
        lease = self._leases.get(want.counter)
        if lease is not None and lease.full_until > now and lease.limit == want.limit:
            return False
        try:
            return await self._take_from_store(want, now, also)
        except StorageError:
            if lease is not None and _known_full(lease, want, now):
                return False  # the store is away, but this window was full when last seen
            raise

    async def take_upto(self, want: Want, now: float) -> int:
        """Take as many of `want.amount` units as the window has left, up to all of them:
        how many (from the lease when it has them, else topped up from the store first).
        Raises `StorageError` when the store fails."""
        lease = self._leases.get(want.counter)
        if lease is not None and lease.end > now and lease.limit == want.limit:
            if lease.free >= want.amount:
                return self._hand(lease, want.amount, now)
            if lease.full_until > now:
                return self._hand(lease, lease.free, now)
        lease = self._current(want, now)
        while lease.refill is not None:
            await asyncio.shield(lease.refill)
            lease = self._current(want, now)
        if lease.free < want.amount:
            await self._reserve([want], now, lease)
            lease = self._current(want, now)
        return self._hand(lease, min(lease.free, want.amount), now)

    @staticmethod
    def _hand(lease: Lease, units: int, now: float) -> int:
        lease.free -= units
        lease.touched = now
        return units

    async def _take_from_store(self, want: Want, now: float, also: Sequence[Want]) -> bool:
        lease = self._current(want, now)
        while lease.refill is not None:  # another request is reserving: wait, then look
            await asyncio.shield(lease.refill)
            lease = self._current(want, now)
            if lease.free >= want.amount:
                break
        else:
            if lease.free < want.amount:
                await self._reserve([want, *also], now, lease)
                lease = self._current(want, now)
        lease.touched = now
        if lease.free < want.amount:
            return False
        lease.free -= want.amount
        return True

    def _current(self, want: Want, now: float) -> Lease:
        """The counter's lease for a window live at `now` under `want.limit` (a new one
        when the window ended or the limit changed: its units are not this window's)."""
        lease = self._leases.get(want.counter)
        if lease is None or (
            lease.refill is None and (lease.end <= now or lease.limit != want.limit)
        ):
            if lease is not None and lease.free and lease.end > now:
                self.spawn(self._release(want.counter, lease.end, lease.free))
            lease = self._leases[want.counter] = Lease(want)
        return lease

    async def _reserve(self, wants: Sequence[Want], now: float, first: Lease) -> None:
        """One round trip: the first want's block, and a block for each other want whose
        lease runs low and is not being refilled already."""
        await self._perform(self._prepare(wants, now, first), now)

    def _prepare(self, wants: Sequence[Want], now: float, first: Lease) -> _Reservation:
        """Choose the claims and mark their leases as being refilled (no await: a request
        that comes meanwhile waits for this reservation instead of making another)."""
        leases, claims = [first], [self._claim(first, wants[0], now)]
        for want in wants[1:]:
            lease = self._current(want, now)
            if lease.refill is None and lease.free * 2 < self._block(lease, want):
                leases.append(lease)
                claims.append(self._claim(lease, want, now))
        done = asyncio.get_running_loop().create_future()
        for lease in leases:
            lease.refill = done
        return _Reservation(leases, claims, done)

    async def _perform(self, reservation: _Reservation, now: float) -> None:
        leases, claims = reservation.leases, reservation.claims
        try:
            grants = await self.store.reserve(claims, now)
            self.round_trips += 1
        finally:
            for lease in leases:
                lease.refill = None
            reservation.done.set_result(None)
        for lease, claim, grant in zip(leases, claims, grants, strict=True):
            if grant.window_end != lease.end:  # units of another window than we held
                lease.end, lease.free = grant.window_end, 0
            lease.free += grant.granted
            lease.count = grant.count
            lease.limit = claim.limit
            lease.touched = max(lease.touched, now)
            lease.full_until = now + self.recheck if grant.count >= claim.limit else 0.0
            lease.low = grant.granted // 2  # half a block left: top it up in the background

    def _block(self, lease: Lease, want: Want) -> int:
        remaining = max(0, want.limit - lease.count) if lease.end else want.limit
        return min(self.max_block, max(1, int(want.limit * want.share)), remaining // 8)

    def _claim(self, lease: Lease, want: Want, now: float) -> Claim:
        short = want.amount - lease.free if lease.end > now else want.amount
        units = max(short, self._block(lease, want))
        return Claim(want.counter, units, want.limit, want.window_end(now))

    def _prefetch(self, want: Want, also: Sequence[Want], now: float) -> None:
        """Top the lease up in the background, before it runs out."""
        reservation = self._prepare([want, *also], now, self._leases[want.counter])
        self.spawn(self._perform(reservation, now))

    def spawn(self, work: Awaitable[None], what: str = "") -> None:
        """Run store work in the background (kept until done, so that `release_all` can
        wait for it). A failure is logged when `what` names the work; otherwise the next
        request tries again."""

        async def run() -> None:
            try:
                await work
            except StorageError as exc:
                if what:
                    log.warning("could not count %s: %s", what, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def give_back(self, counter: str, amount: int, now: float) -> None:
        """Return units taken for a request that was refused later, or not charged."""
        lease = self._leases.get(counter)
        if lease is not None and lease.end > now:
            lease.free += amount
            lease.full_until = 0.0

    async def force(self, want: Want, now: float) -> None:
        """Count `want.amount` more units whatever the limit (a cost raised at run time)."""
        lease = self._current(want, now)
        if lease.free >= want.amount:
            lease.free -= want.amount
            return
        claim = Claim(want.counter, want.amount, 2**62, want.window_end(now))
        (grant,) = await self.store.reserve([claim], now)
        self.round_trips += 1
        if grant.window_end == lease.end:
            lease.count = grant.count

    async def _release(self, counter: str, end: float, amount: int) -> None:
        await self.store.release(counter, end, amount)
        self.round_trips += 1

    async def release_idle(self, now: float) -> None:
        """Return the unused units of leases idle for their `idle` seconds, and forget
        leases whose window has ended. Raises `StorageError` at the first failure; what
        was not returned is kept, and tried again next time."""
        for counter, lease in list(self._leases.items()):
            if lease.refill is not None:
                continue
            if lease.end <= now:
                del self._leases[counter]
            elif lease.touched + lease.idle <= now:
                await self._return(counter, lease)

    async def drain(self) -> None:
        """Wait for the background store work under way (refills, releases, extras)."""
        while self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await next(iter(self._background))

    async def release_all(self) -> None:
        """Return every unused unit (graceful shutdown); raises `StorageError` after trying
        them all if any could not be returned."""
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        failed: StorageError | None = None
        for counter, lease in list(self._leases.items()):
            try:
                await self._return(counter, lease)
            except StorageError as exc:
                failed = exc
        if failed is not None:
            raise failed

    def forget_all(self) -> None:
        """Drop every lease without returning its units (the store was replaced)."""
        self._leases = {k: v for k, v in self._leases.items() if v.refill is not None}

    def forget(self, counters: Sequence[str]) -> None:
        """Drop these counters' leases (their limits changed), returning unused units in
        the background."""
        for counter in counters:
            lease = self._leases.get(counter)
            if lease is not None and lease.refill is None:
                del self._leases[counter]
                if lease.free:
                    self.spawn(self._release(counter, lease.end, lease.free))

    async def _return(self, counter: str, lease: Lease) -> None:
        """Give a lease's unused units back, then forget the lease. If the store fails,
        the units stay in the lease, to be handed out or returned later."""
        free, lease.free = lease.free, 0  # out of reach of requests while we wait
        if free:
            try:
                await self._release(counter, lease.end, free)
            except StorageError:
                lease.free += free
                raise
        if self._leases.get(counter) is lease and not lease.free and lease.refill is None:
            del self._leases[counter]


def _known_full(lease: Lease, want: Want, now: float) -> bool:
    """Whether the lease says this window was full when the store last answered."""
    return (
        lease.end > now
        and lease.limit == want.limit
        and lease.count >= want.limit
        and lease.free < want.amount
    )
