"""The lease engine (`meterware.leases`): blocks reserved from a store, handed out without
I/O, exact under concurrency and across processes, returned when idle, and the bound on
early refusals when several processes share a window."""

from __future__ import annotations

import asyncio

import pytest

from meterware.leases import Leases, Want
from meterware.storage import Storage
from meterware.storage.memory import MemoryStorage
from meterware.storage.sqlite import SQLiteStorage

NOW = 1_776_000_000.0
END = 1_777_593_600.0  # a month window's end


def month(limit: int, amount: int = 1, counter: str = "month:k") -> Want:
    return Want(counter, amount, limit, 1 / 100, 60.0, end=END)


def minute(limit: int, now: float = NOW, counter: str = "minute:k") -> Want:
    return Want(counter, 1, limit, 1 / 40, 5.0, window=60)


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.memory),
                        pytest.param("sqlite", marks=pytest.mark.sqlite)])  # fmt: skip
async def local_store(request, tmp_path):
    """An open store in process or on a SQLite file."""
    store = (
        MemoryStorage()
        if request.param == "memory"
        else SQLiteStorage(f"sqlite:///{tmp_path}/leases.db")
    )
    await store.open()
    yield store
    await store.close()


async def test_two_processes_worth_of_leases_never_over_admit(tmp_path):
    """Leases on two connections to one SQLite file grant exactly the limit."""
    url = f"sqlite:///{tmp_path}/shared.db"
    async with SQLiteStorage(url) as a, SQLiteStorage(url) as b:
        leases = [Leases(a), Leases(b)]
        results = await asyncio.gather(*(leases[i % 2].take(month(50), NOW) for i in range(200)))
        assert sum(results) == 50
        assert await a.counter("month:k", NOW) == 50


async def test_concurrent_takes_share_one_reservation(local_store: Storage):
    """Concurrent takes of one counter wait for one reservation (exactly the limit is
    granted), and no reservation is left marked as under way."""
    leases = Leases(local_store)
    results = await asyncio.gather(*(leases.take(month(20), NOW) for _ in range(50)))
    assert results.count(True) == 20
    assert await local_store.counter("month:k", NOW) == 20
    lease = leases.get("month:k")
    assert lease is not None and lease.refill is None


async def test_a_block_serves_many_requests_with_one_round_trip(local_store: Storage):
    """A high limit's block (1% of a month, 1/40 of a minute) serves requests without I/O:
    at steady state (800 requests a minute under 1,000/minute and 1,000,000/month), at
    most one round trip per 20 requests."""
    leases = Leases(local_store)
    for i in range(1600):
        now = NOW + i * 0.075
        assert await leases.take(minute(1000, now), now, also=[month(1_000_000)])
        assert await leases.take(month(1_000_000), now)
    await asyncio.sleep(0)  # background top-ups finish
    assert leases.round_trips <= 1600 / 20
    used = await local_store.counter("minute:k", NOW + 119)
    assert 800 <= used <= 800 + 25  # the second minute's requests, and a block held


async def test_idle_leases_are_returned(local_store: Storage):
    """Unused reserved units go back to the store after the lease's idle seconds."""
    leases = Leases(local_store)
    assert await leases.take(month(1000), NOW)
    assert await local_store.counter("month:k", NOW) > 1  # a block was reserved
    await leases.release_idle(NOW + 59)
    assert await local_store.counter("month:k", NOW) > 1
    await leases.release_idle(NOW + 60)
    assert await local_store.counter("month:k", NOW) == 1
    assert len(leases) == 0


async def test_a_lease_dies_with_its_window(local_store: Storage):
    """Units of a window are never handed out after it ends: the next take opens the
    next window in the store."""
    leases = Leases(local_store)
    assert await leases.take(minute(1000), NOW)
    lease = leases.get("minute:k")
    assert lease is not None and lease.free > 0 and lease.end == NOW + 60
    later = NOW + 60
    assert await leases.take(minute(1000, later), later)
    lease = leases.get("minute:k")
    assert lease is not None and lease.end == later + 60
    assert await local_store.counter("minute:k", later) == lease.count
    assert lease.count - lease.free == 1  # one taken in the new window


async def test_full_windows_refuse_without_asking_until_the_recheck(local_store: Storage):
    """Once the store says a window is full, refusals cost no round trip until `recheck`
    seconds have passed; then units another process returned are seen."""
    leases, other = Leases(local_store), Leases(local_store)
    assert await other.take(month(2), NOW)
    assert await leases.take(month(2), NOW)
    trips = leases.round_trips
    for _ in range(5):
        assert not await leases.take(month(2), NOW + 0.5)
    assert leases.round_trips == trips
    await local_store.release("month:k", END, 1)  # as the other process's idle return
    assert not await leases.take(month(2), NOW + 0.9)  # not rechecked yet
    assert await leases.take(month(2), NOW + 1.0)


async def test_a_new_limit_applies_to_what_remains(local_store: Storage):
    """When a key's limit changes, units already counted stay counted and the new limit
    applies at once (an upgrade admits again, a downgrade refuses)."""
    leases = Leases(local_store)
    for _ in range(3):
        assert await leases.take(month(3), NOW)
    assert not await leases.take(month(3), NOW)
    assert await leases.take(month(5), NOW)  # upgraded: 2 more
    assert await leases.take(month(5), NOW)
    assert not await leases.take(month(5), NOW)
    assert not await leases.take(month(4), NOW)  # downgraded below what was used
    assert await local_store.counter("month:k", NOW) == 5


async def test_early_refusals_are_bounded_by_the_blocks_others_hold(tmp_path):
    """With four processes sharing a window, one that is refused was refused while the
    others held at most a block each: at most 3 × (1/40 of 1,000) units unused."""
    url = f"sqlite:///{tmp_path}/early.db"
    stores = [SQLiteStorage(url) for _ in range(4)]
    for store in stores:
        await store.open()
    leases = [Leases(store) for store in stores]
    admitted = 0
    while await leases[admitted % 4].take(minute(1000), NOW):
        admitted += 1
    held = sum(lease.free for ls in leases if (lease := ls.get("minute:k")) is not None)
    assert admitted + held == 1000
    assert held <= 3 * 25
    print(f"\nfour processes, 1,000/minute: {admitted} admitted before the first refusal, "
          f"{held} units held by the others")  # fmt: skip
    for store in stores:
        await store.close()


async def test_give_back_and_force(local_store: Storage):
    """Units given back are handed out again; forced units count past the limit."""
    leases = Leases(local_store)
    assert await leases.take(month(10, amount=5, counter="credits:k"), NOW)
    leases.give_back("credits:k", 5, NOW)
    assert await leases.take(month(10, amount=10, counter="credits:k"), NOW)
    await leases.force(month(10, amount=7, counter="credits:k"), NOW)
    assert await local_store.counter("credits:k", NOW) == 17


async def test_release_all_returns_every_unused_unit(local_store: Storage):
    """A graceful stop gives every unused unit back."""
    leases = Leases(local_store)
    assert await leases.take(month(100_000), NOW)
    assert await leases.take(minute(100_000), NOW)
    await leases.release_all()
    assert await local_store.counter("month:k", NOW) == 1
    assert await local_store.counter("minute:k", NOW) == 1
