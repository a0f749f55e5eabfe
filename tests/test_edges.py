"""Edge cases: raw ASGI apps' lifespan, the month rollover under concurrency, cancelled
flushes, 503s that must not cost quota, meterware inside a mounted sub-app."""

from __future__ import annotations

import asyncio

import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from meterware import MeterwareMiddleware, StorageError
from meterware.ledger import Meter
from meterware.metering import Cost
from meterware.quota import QuotaCounter
from meterware.storage.memory import MemoryStorage
from meterware.storage.sqlite import SQLiteStorage
from tests.utils import FakeClock, bearer, new_key, serve, starlette_app


async def test_raw_asgi_app_gets_a_graceful_shutdown(tmp_path, clock):
    """Wrapping a raw ASGI app that ignores lifespan still flushes usage at shutdown."""

    async def raw(scope, receive, send):
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    url = f"sqlite:///{tmp_path}/raw.db"
    async with SQLiteStorage(url) as store:
        key, secret = await new_key(store, clock, tier="scale")
    app = MeterwareMiddleware(raw, storage=url, clock=clock, default_cost=1, flush_interval=3600)
    import httpx

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path in ("/a/1", "/a/2", "/b"):
                assert (await client.get(path, headers=bearer(secret))).status_code == 200
    async with SQLiteStorage(url) as store:
        rows = await store.usage(account_id="acct_1", key_id=key.id, first_day="2026-04-12",
                                 last_day="2026-04-12")  # fmt: skip
        assert [(r.action, r.calls, r.credits) for r in rows] == [("default", 3, 3)]
        assert (await store.key_totals(key.id)).requests == 3
        assert await store.counter(f"requests:{key.id}", "2026-04-01") == 3  # blocks returned


async def test_month_rollover_never_over_admits():
    """Units of the old month's block cannot be taken while they are being returned."""
    store = MemoryStorage()
    await store.open()
    clock = FakeClock()
    counter = QuotaCounter(store, defer=lambda *args: None)
    assert await counter.take("requests:k", "2026-03-01", 1, 10_000, clock())
    assert counter.unused("requests:k", "2026-03-01") > 0
    gate = asyncio.Event()
    real_release = store.release

    async def slow_release(*args):
        await gate.wait()
        await real_release(*args)

    store.release = slow_release  # type: ignore[method-assign]
    rollover = asyncio.create_task(counter.take("requests:k", "2026-04-01", 1, 10_000, clock()))
    await asyncio.sleep(0)
    # a request whose clock still read March: its units are gone from reach
    assert counter.unused("requests:k", "2026-03-01") == 0
    gate.set()
    assert await rollover
    assert await store.counter("requests:k", "2026-03-01") == 1


async def test_cancelled_flush_keeps_the_usage():
    """A flush cancelled while writing puts its aggregates back."""
    store = MemoryStorage()
    await store.open()
    meter = Meter(store)
    started = asyncio.Event()

    async def slow_record(batch):
        started.set()
        await asyncio.sleep(10)

    store.record = slow_record  # type: ignore[method-assign]
    meter.admitted("k1", 1.0)
    meter.charge("a", "k1", Cost(30, "image_to_html", "Image → HTML"), 30, 1.0)
    task = asyncio.create_task(meter.flush())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert meter.pending == 2


async def test_credits_outage_does_not_cost_a_monthly_request(clock):
    """A 503 from the credits check gives the request's quota unit back."""
    store = MemoryStorage()
    await store.open()
    _, secret = await new_key(store, clock, monthly_limit=50, monthly_credits=1000)
    real_reserve = store.reserve

    async def reserve(subject, period, want, limit):
        if subject.startswith("credits:"):
            raise StorageError("credits store down")
        return await real_reserve(subject, period, want, limit)

    store.reserve = reserve  # type: ignore[method-assign]
    async with serve(starlette_app(store, clock, usage_path="/u")) as client:
        for _ in range(5):
            assert (await client.post("/image", headers=bearer(secret))).status_code == 503
        usage = (await client.get("/u", headers=bearer(secret))).json()["data"]["usage"]
    assert usage["monthly_requests"] == 0


async def test_middleware_inside_a_mounted_sub_app(clock):
    """Exempt paths and usage_path are matched inside a mounted sub-app."""
    store = MemoryStorage()
    await store.open()
    _, secret = await new_key(store, clock)

    async def hello(request):
        return PlainTextResponse("hi")

    inner = Starlette(routes=[Route("/health", hello), Route("/hello", hello)])
    inner.add_middleware(MeterwareMiddleware, storage=store, clock=clock, usage_path="/usage")
    outer = Starlette(routes=[Mount("/api", app=inner)])
    async with serve(outer) as client:
        assert (await client.get("/api/health")).status_code == 200
        assert (await client.get("/api/hello", headers=bearer(secret))).status_code == 200
        usage = await client.get("/api/usage", headers=bearer(secret))
    assert usage.status_code == 200
    assert usage.json()["data"]["usage"]["monthly_requests"] == 1


async def test_response_headers_given_as_a_one_shot_iterable_are_all_kept(clock):
    """ASGI lets an app give its headers as any iterable: each is sent once, with ours."""
    store = MemoryStorage()
    await store.open()
    _, secret = await new_key(store, clock, tier="pro")

    async def raw(scope, receive, send):
        if scope["type"] != "http":
            return  # no lifespan of its own: meterware completes it
        headers = ((name, value) for name, value in [(b"content-type", b"text/plain")])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serve(MeterwareMiddleware(raw, storage=store, clock=clock)) as client:
        response = await client.get("/", headers=bearer(secret))
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["x-ratelimit-limit"] == "30"
    assert [n for n, _ in response.headers.raw].count(b"content-type") == 1
    await store.close()


async def test_last_use_is_the_latest_admission_even_when_requests_overlap(clock):
    """A long request that started first does not set a key's last use back."""
    store = MemoryStorage()
    await store.open()
    key, secret = await new_key(store, clock, tier="pro")
    release, entered = asyncio.Event(), asyncio.Event()

    async def slow(request):
        entered.set()
        await release.wait()
        return PlainTextResponse("slow")

    async def fast(request):
        return PlainTextResponse("fast")

    routes = [Route("/slow", slow), Route("/fast", fast)]
    app = starlette_app(store, clock, routes=routes, flush_interval=3600)
    async with serve(app) as client:
        first = asyncio.create_task(client.get("/slow", headers=bearer(secret)))
        await entered.wait()
        clock.advance(5)
        assert (await client.get("/fast", headers=bearer(secret))).status_code == 200
        release.set()
        assert (await first).status_code == 200
    assert (await store.key_totals(key.id)).last_used_at == clock()
    await store.close()
