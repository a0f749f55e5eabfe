"""Part 1: the app called directly as an ASGI callable, no network, one event loop.

Each request is a prebuilt GET scope (copied, since apps write into it), a `receive`
that returns one `http.request`, and a `send` that discards (counting any status other
than 200, which fails the run: a refused request is not a measurement). After every
request the driver awaits `asyncio.sleep(0)`, so meterware's background tasks (ledger
flush, key polling, lease top-ups and returns) run in the same loop and are paid for in
the batch's WALL-CLOCK time, which is what is reported: microseconds per request over a
batch.

Variants are measured in the same run, interleaved: every round runs every variant once,
in an order rotated by one each round, each with a fresh app whose lifespan is started
before and shut down after (outside the timing); only one app is up at a time, so no
variant pays for another's objects in a garbage collection. Before the timed batch every
key is touched once (filling the key cache and the leases of its minute and month) and
then again, rotating. Each meterware batch ends by writing its ledger (`Meter.flush`)
inside the timing: a batch pays for all of its own usage writes.

`measure_memory` counts what the middleware keeps per active key (key cache, leases,
month views) after requests from 100,000 distinct keys.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import apps
from bench.fixtures import Stores, say

ASGIApp = Callable[..., Awaitable[None]]

_REQUEST: dict[str, Any] = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> dict[str, Any]:
    return _REQUEST


def scope_for(path: str, secret: str | None, query: bytes = b"") -> dict[str, Any]:
    """An HTTP GET scope as uvicorn would build it, with the key in `X-API-Key`."""
    headers = [
        (b"host", b"bench.local"),
        (b"user-agent", b"meterware-bench/1"),
        (b"accept", b"*/*"),
    ]
    if secret is not None:
        headers.append((b"x-api-key", secret.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


class Lifespan:
    """Runs an ASGI app's lifespan startup on enter and its shutdown on exit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def _expect(self, wanted: str) -> None:
        assert self._task is not None
        getter = asyncio.ensure_future(self._from_app.get())
        done, _ = await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            self._task.result()  # raises the app's error
            raise RuntimeError(f"the app's lifespan ended before {wanted}")
        message = getter.result()
        if message["type"] != wanted:
            raise RuntimeError(f"lifespan: {message['type']}: {message.get('message', '')}")

    async def __aenter__(self) -> Lifespan:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self._task = asyncio.ensure_future(self.app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        await self._expect("lifespan.startup.complete")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        await self._expect("lifespan.shutdown.complete")
        assert self._task is not None
        await self._task


class Driver:
    """Calls an app with prebuilt scopes, rotating through one scope per key."""

    def __init__(self, app: ASGIApp, path: str, secrets: Sequence[str | None]) -> None:
        self.app = app
        self.scopes = [scope_for(path, s) for s in secrets]
        self.next = 0
        self.refused = 0
        self.statuses: dict[int, int] = {}
        try:  # once the app has started: its middleware stack is built
            self.meter: Any = apps.runtime_of(app).meter
        except LookupError:
            self.meter = None

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            self.refused += 1
            self.statuses[message["status"]] = self.statuses.get(message["status"], 0) + 1

    async def run(self, count: int) -> float:
        """Send `count` requests, one after the other, then write meterware's ledger; the
        wall-clock seconds taken."""
        app, scopes, send, receive = self.app, self.scopes, self._send, _receive
        n, i = len(scopes), self.next
        sleep = asyncio.sleep
        started = time.perf_counter()
        for _ in range(count):
            await app(scopes[i].copy(), receive, send)
            await sleep(0)
            i += 1
            if i == n:
                i = 0
        if self.meter is not None:
            await self.meter.flush()
        elapsed = time.perf_counter() - started
        self.next = i
        if self.refused:
            raise RuntimeError(f"{self.refused} requests were not answered 200: {self.statuses}")
        return elapsed

    async def touch_all(self, concurrency: int = 32) -> float:
        """Send one request per key, `concurrency` at a time; the seconds taken.

        Cold keys cost store round trips (key lookup, first reservations): concurrent,
        they overlap, and 10,000 of them do not take minutes.
        """
        app, send = self.app, self._send
        started = time.perf_counter()
        for start in range(0, len(self.scopes), concurrency):
            chunk = self.scopes[start : start + concurrency]
            await asyncio.gather(*(app(s.copy(), _receive, send) for s in chunk))
        if self.refused:
            raise RuntimeError(f"{self.refused} requests were not answered 200: {self.statuses}")
        self.next = 0
        return time.perf_counter() - started


# -- variants --------------------------------------------------------------------------


@dataclass
class Variant:
    """One app to measure; `build(n)` gives a fresh app and the secrets of `n` keys."""

    name: str
    label: str
    build: Callable[[int], Awaitable[tuple[ASGIApp, list[str]]]]
    needs: tuple[str, ...] = ()  # servers: "postgres", "redis"
    skip: str | None = None


def variants(stores: Stores) -> list[Variant]:
    async def bare(n: int) -> tuple[ASGIApp, list[str]]:
        _, secrets = await stores.sqlite(n)  # keys are only headers here
        return apps.bare_app(), secrets

    async def slow(n: int) -> tuple[ASGIApp, list[str]]:
        _, secrets = await stores.sqlite(n)
        return apps.slowapi_app(), secrets

    async def memory(n: int) -> tuple[ASGIApp, list[str]]:
        store, secrets = await stores.memory(n)
        return apps.meterware_app(store, metered_route=False), secrets

    async def memory_cost(n: int) -> tuple[ASGIApp, list[str]]:
        store, secrets = await stores.memory(n)
        return apps.meterware_app(store), secrets

    async def sqlite(n: int) -> tuple[ASGIApp, list[str]]:
        url, secrets = await stores.sqlite(n)
        return apps.meterware_app(url), secrets

    async def sqlite_metrics(n: int) -> tuple[ASGIApp, list[str]]:
        from meterware.metrics import Metrics

        url, secrets = await stores.sqlite(n)
        return apps.meterware_app(url, metrics=Metrics()), secrets

    async def postgres(n: int) -> tuple[ASGIApp, list[str]]:
        url, secrets = await stores.postgres(n)
        return apps.meterware_app(url), secrets

    async def postgres_redis(n: int) -> tuple[ASGIApp, list[str]]:
        url, secrets = await stores.postgres(n)
        return apps.meterware_app(url, rate_limit_storage=stores.redis_url), secrets

    return [
        Variant("bare", "bare Starlette", bare),
        Variant("slowapi", "+ slowapi (decorator, memory)", slow),
        Variant("mw-memory", "+ meterware memory://, no @cost", memory),
        Variant("mw-memory-cost", "+ meterware memory://, @cost(5)", memory_cost),
        Variant("mw-sqlite", "+ meterware SQLite, full pipeline", sqlite),
        Variant("mw-sqlite-metrics", "+ meterware SQLite, full, Prometheus on", sqlite_metrics),
        Variant("mw-pg", "+ meterware PostgreSQL alone, full", postgres, ("postgres",)),
        Variant(
            "mw-pg-redis",
            "+ meterware PostgreSQL + Redis, full",
            postgres_redis,
            ("postgres", "redis"),
        ),
    ]


@dataclass
class Measured:
    keys: int
    variant: str
    label: str
    us: list[float] = field(default_factory=list)  # per round
    added: list[float] = field(default_factory=list)  # per round, over that round's bare
    requests: list[int] = field(default_factory=list)  # timed requests, per round
    skip: str | None = None


async def _one(
    variant: Variant, n: int, batch: int, warmup: int, max_seconds: float
) -> tuple[float, int]:
    """µs per request of one timed batch, and its size.

    Warm-up: every key once (concurrently), then `warmup` requests one at a time, which
    also sizes the batch: `batch` requests, fewer if they would take over `max_seconds`
    (never fewer than 1,000).
    """
    app, secrets = await variant.build(n)
    async with Lifespan(app):
        driver = Driver(app, apps.PATH, secrets)
        await driver.touch_all()
        per_request = await driver.run(warmup) / warmup
        count = max(1000, min(batch, int(max_seconds / per_request)))
        gc.collect()
        elapsed = await driver.run(count)
    return elapsed / count * 1e6, count


async def run(
    stores: Stores,
    *,
    keys: Sequence[int],
    rounds: int,
    batch: int,
    warmup: int,
    max_seconds: float = 4.0,
    only: Sequence[str] | None = None,
) -> list[Measured]:
    """Every variant at every key count, interleaved over `rounds` rounds."""
    all_variants = [v for v in variants(stores) if only is None or v.name in only]
    for v in all_variants:
        v.skip = await stores.problem(v.needs)
    out: list[Measured] = []
    for n in keys:
        live = [v for v in all_variants if v.skip is None]
        results = {v.name: Measured(n, v.name, v.label, skip=v.skip) for v in all_variants}
        for v in live:  # create the keys before any timing
            await v.build(n)
        for r in range(rounds):
            order = live[r % len(live) :] + live[: r % len(live)]
            this_round: dict[str, float] = {}
            for v in order:
                us, count = await _one(v, n, batch, warmup, max_seconds)
                this_round[v.name] = us
                results[v.name].us.append(us)
                results[v.name].requests.append(count)
            bare = this_round.get("bare")
            if bare is not None:
                for name, us in this_round.items():
                    results[name].added.append(us - bare)
            say(
                f"in-process, {n} keys, round {r + 1}/{rounds}: "
                + ", ".join(f"{k} {v:.1f}" for k, v in this_round.items())
                + " µs/req"
            )
        out += results.values()
    return out


def summary(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


# -- memory per active key -------------------------------------------------------------

_PACKAGE = os.path.dirname(os.path.abspath(sys.modules["meterware"].__file__ or ""))
_STORAGE = os.path.join(_PACKAGE, "storage")


def _frozen(at: float) -> Callable[[], float]:
    """A clock that always says `at`."""
    return lambda: at


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def measure_memory(count: int) -> dict[str, Any]:
    """Bytes the middleware keeps per active key, after `count` distinct keys made one
    metered request each (memory:// store, ledger flushed).

    tracemalloc (one frame: an allocation belongs to the line that made it) counts what
    the traced requests left allocated, by file: meterware's own modules are the
    middleware (key cache, leases of each key's minute window and month, month views),
    `meterware/storage/` is the memory:// store's growth (its counters and totals). Then
    the process's RSS growth over the same requests in a fresh app and store, untraced.
    The app's clock is frozen at the start: no lease goes idle and no window ends, so
    every key's leases are still held at the end (all `count` keys active at once: the
    worst case).
    """
    from bench.fixtures import add_keys
    from meterware.storage.memory import MemoryStorage

    result: dict[str, Any] = {"keys": count}
    for traced in (True, False):
        store = MemoryStorage()
        await store.open()
        started = time.perf_counter()
        secrets = await add_keys(store, count, concurrency=100)
        say(f"memory: {count} keys in memory:// ({time.perf_counter() - started:.1f} s)")
        app = apps.meterware_app(store, clock=_frozen(time.time()))
        async with Lifespan(app):
            mw = apps.runtime_of(app)
            await Driver(app, apps.PATH, secrets[:1]).run(10)  # route cache, period, ...
            await mw.meter.flush()
            driver = Driver(app, apps.PATH, secrets)
            gc.collect()
            if traced:
                tracemalloc.start(1)
                before = tracemalloc.take_snapshot()
            rss = _rss()
            await driver.run(count)
            await mw.meter.flush()
            gc.collect()
            rss = _rss() - rss
            if traced:
                after = tracemalloc.take_snapshot()
                tracemalloc.stop()
                _attribute(result, after.compare_to(before, "lineno"), count)
                result.update(
                    cached_keys=len(mw.keys or ()),
                    leases=len(mw.leases),
                    minute_leases=None if mw.minutes is mw.leases else len(mw.minutes),
                    month_views=len(mw.views),
                )
            else:
                result["rss_bytes"] = rss
                result["rss_per_key"] = rss / count
        await store.close()
        del store, app, mw, driver, secrets
        gc.collect()
    return result


def _attribute(result: dict[str, Any], stats: list[tracemalloc.StatisticDiff], count: int) -> None:
    by = {"middleware": 0, "store": 0, "other": 0}
    lines: list[tuple[int, str]] = []
    for stat in stats:
        frame = stat.traceback[0]
        if frame.filename.startswith(_STORAGE):
            by["store"] += stat.size_diff
        elif frame.filename.startswith(_PACKAGE):
            by["middleware"] += stat.size_diff
            where = f"{os.path.relpath(frame.filename, _PACKAGE)}:{frame.lineno}"
            lines.append((stat.size_diff, where))
        else:
            by["other"] += stat.size_diff
    result.update({f"{k}_bytes": v for k, v in by.items()})
    result.update({f"{k}_per_key": v / count for k, v in by.items()})
    result["middleware_lines_per_key"] = {
        where: round(size / count, 1) for size, where in sorted(lines, reverse=True)[:8]
    }
