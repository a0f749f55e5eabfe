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
from meterware.leases import Leases, Want
from meterware.ledger import Meter
from meterware.metering import Cost
from meterware.storage.memory import MemoryStorage
from meterware.storage.sqlite import SQLiteStorage
from tests.utils import at, bearer, new_key, serve, starlette_app


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
        assert await store.counter(f"month:{key.id}", clock()) == 3  # blocks returned


async def test_month_rollover_never_over_admits():
    """Units of the old month's block are never handed out in the new month: the first
    request of April opens April's window, and March's units end with March."""
    store = MemoryStorage()
    await store.open()
    leases = Leases(store)
    march_end, april_end = at("2026-04-01T00:00:00"), at("2026-05-01T00:00:00")
    march = Want("month:k", 1, 10_000, 1 / 100, 60.0, end=march_end)
    assert await leases.take(march, march_end - 1)
    lease = leases.get("month:k")
    assert lease is not None and lease.free > 0
    april = Want("month:k", 1, 10_000, 1 / 100, 60.0, end=april_end)
    assert await leases.take(april, march_end)
    lease = leases.get("month:k")
    assert lease is not None and lease.end == april_end
    assert lease.count - lease.free == 1
    assert await store.counter("month:k", march_end) == lease.count


async def test_cancelled_flush_keeps_the_usage():
    """A flush cancelled while writing leaves the write to finish: its aggregates come
    back if the write fails (and are not counted twice if it succeeds)."""
    store = MemoryStorage()
    await store.open()
    meter = Meter(store)
    started = asyncio.Event()
    fail = asyncio.Event()

    async def slow_record(batch):
        started.set()
        await fail.wait()
        raise StorageError("the write failed in the end")

    store.record = slow_record  # type: ignore[method-assign]
    image = Cost(30, "image_to_html", "Image → HTML")
    meter.admitted("a", "k1", image, 1.0)
    meter.charge("a", "k1", image, 30, 1.0)
    meter.admitted("a", "k2", Cost(0, "upload", "Upload"), 1.0)
    task = asyncio.create_task(meter.flush())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert meter.pending == 0 and len(meter.writing) == 1  # the write goes on; in doubt
    fail.set()
    await asyncio.gather(*meter.writing, return_exceptions=True)
    assert meter.pending == 2  # it failed: nothing is lost


async def test_credits_outage_does_not_cost_a_monthly_request(clock):
    """A 503 from the credits check gives the request's quota unit back."""
    store = MemoryStorage()
    await store.open()
    _, secret = await new_key(store, clock, monthly_limit=50, monthly_credits=1000)
    real_reserve = store.reserve

    async def reserve(claims, now):
        if any(claim.counter.startswith("credits:") for claim in claims):
            raise StorageError("credits store down")
        return await real_reserve(claims, now)

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
