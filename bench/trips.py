"""Part 5: store round trips per admitted request at steady state.

For each backend (memory://, SQLite, PostgreSQL alone, PostgreSQL + Redis), one key of
tier `trips` (1,000 requests a minute, 1,000,000 a month) calls the full pipeline
(`@cost(5)`) in process, one request at a time as bench/inproc.py's driver does, each
followed by `await asyncio.sleep(0)`. The app runs on a fake clock (`clock=`) that
moves 0.075 s before each request: 800 requests a simulated minute, under the limit,
and 4,000 requests are 5 simulated minutes (5 minute windows). Every request must be
answered 200.

Counted: the calls of `reserve` and `release` that reach the counter stores, through
a counting proxy put in front of the store of each `Leases` of the runtime (`.leases`,
month and credits over the main store; `.minutes`, the per-minute windows, the same
object unless `rate_limit_storage` puts them elsewhere). A call is counted when it is
made, whether it succeeds or not, from the first request to the last; the proxies are
taken out before shutdown, whose returns are not counted. `Leases.round_trips`
(successful calls) is kept beside it in the JSON as a cross-check. Reported: round trips
per 100 admitted requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench import apps
from bench.fixtures import Stores, say
from bench.inproc import Lifespan, _receive, scope_for
from meterware import Admin, Storage, storage_from_url
from meterware.leases import CounterStore, Leases
from meterware.storage.records import Claim, Grant

REQUESTS = 4000
STEP = 0.075  # simulated seconds per request: 800 a minute


class FakeClock:
    """The app's clock: stands still until the driver moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counting:
    """A counter store that counts the `reserve` and `release` calls it passes on."""

    def __init__(self, inner: CounterStore) -> None:
        self.inner = inner
        self.reserves = 0
        self.releases = 0

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[Grant]:
        self.reserves += 1
        return await self.inner.reserve(claims, now)

    async def release(self, counter: str, window_end: float, amount: int) -> None:
        self.releases += 1
        await self.inner.release(counter, window_end, amount)

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Backend:
    name: str
    label: str
    needs: tuple[str, ...] = ()  # servers: "postgres", "redis"


BACKENDS = [
    Backend("memory", "memory://"),
    Backend("sqlite", "SQLite"),
    Backend("pg", "PostgreSQL alone", ("postgres",)),
    Backend("pg-redis", "PostgreSQL + Redis (windows)", ("postgres", "redis")),
]


async def _key(store: Storage) -> str:
    """A new key of tier `trips`, with an account of its own; its secret."""
    admin = Admin(store, pepper=apps.PEPPER, tiers=apps.TIERS)
    _, secret = await admin.create_key(name="round trips", tier=apps.TRIPS_TIER)
    return secret


async def _storage(backend: Backend, stores: Stores) -> tuple[str | Storage, str | None, str]:
    """The app's `storage` and `rate_limit_storage`, and the secret of a new key there."""
    if backend.name == "memory":
        memory = storage_from_url("memory://")
        await memory.open()
        return memory, None, await _key(memory)
    url = stores.sqlite_url if backend.name == "sqlite" else stores.pg_url
    store = storage_from_url(url)
    async with store:
        secret = await _key(store)
    return url, stores.redis_url if backend.name == "pg-redis" else None, secret


async def _count(backend: Backend, stores: Stores, requests: int) -> dict[str, Any]:
    storage, windows, secret = await _storage(backend, stores)
    clock = FakeClock(time.time())
    app = apps.meterware_app(storage, rate_limit_storage=windows, clock=clock)
    statuses: dict[int, int] = {}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    template = scope_for(apps.PATH, secret)
    async with Lifespan(app):
        rt = apps.runtime_of(app)
        engines: list[Leases] = [rt.leases] if rt.minutes is rt.leases else [rt.leases, rt.minutes]
        proxies = [Counting(leases.store) for leases in engines]
        trips_before = [leases.round_trips for leases in engines]
        for leases, proxy in zip(engines, proxies, strict=True):
            leases.store = proxy
        try:
            started = time.perf_counter()
            for _ in range(requests):
                clock.now += STEP
                await app(template.copy(), _receive, send)
                await asyncio.sleep(0)
            elapsed = time.perf_counter() - started
        finally:  # shutdown (and its returns, not counted) goes to the stores themselves
            for leases, proxy in zip(engines, proxies, strict=True):
                leases.store = proxy.inner
        counted = [(p.reserves, p.releases) for p in proxies]
        trips = [leases.round_trips - b for leases, b in zip(engines, trips_before, strict=True)]
    if isinstance(storage, Storage):
        await storage.close()
    admitted = statuses.get(200, 0)
    if admitted != requests:
        raise RuntimeError(f"trips {backend.name}: not every request answered 200: {statuses}")
    (main_reserves, main_releases), windows_apart = counted[0], len(counted) > 1
    window_reserves, window_releases = counted[1] if windows_apart else (0, 0)
    total = main_reserves + main_releases + window_reserves + window_releases
    return {
        "backend": backend.name,
        "label": backend.label,
        "requests": requests,
        "admitted": admitted,
        "simulated_seconds": requests * STEP,
        "seconds": elapsed,
        "main_reserves": main_reserves,
        "main_releases": main_releases,
        "window_reserves": window_reserves if windows_apart else None,
        "window_releases": window_releases if windows_apart else None,
        "round_trips": total,
        "leases_round_trips": sum(trips),
        "per_100": total / admitted * 100,
    }


async def run(stores: Stores, *, requests: int = REQUESTS) -> dict[str, dict[str, Any]]:
    """Round trips per backend (a `skip` with the reason when its servers are away)."""
    out: dict[str, dict[str, Any]] = {}
    for backend in BACKENDS:
        problem = await stores.problem(backend.needs)
        if problem:
            out[backend.name] = {"backend": backend.name, "label": backend.label, "skip": problem}
            continue
        out[backend.name] = result = await _count(backend, stores, requests)
        say(
            f"trips {backend.name}: {result['round_trips']} round trips for "
            f"{result['admitted']} requests ({result['per_100']:.2f} per 100), "
            f"{result['seconds']:.1f} s"
        )
    return out
