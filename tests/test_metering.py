"""Credit metering: where @cost may be placed, runtime costs, what is charged, 402 before
the handler, and the write-behind ledger (visibility, shutdown, failures)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from meterware import MeterwareMiddleware, StorageError, cost, set_cost
from meterware.storage.sqlite import SQLiteStorage
from tests.utils import bearer, new_key, runtime_of, serve, starlette_app


async def ledger(sqlite_store, key_id, day="2026-04-12"):
    """The key's charged calls and credits by action on a day (what the credits report
    shows: requests that cost nothing are left out)."""
    rows = await sqlite_store.usage(account_id="acct_1", key_id=key_id, first_day=day, last_day=day)
    return {r.action: (r.calls, r.credits) for r in rows if r.calls}


def fastapi_app(sqlite_store, clock, **options):
    app = FastAPI()
    app.add_middleware(MeterwareMiddleware, storage=sqlite_store, clock=clock, **options)
    return app


# -- where @cost can go -----------------------------------------------------------------


async def test_fastapi_decorator_above_and_below(sqlite_store, clock):
    """@cost works above and below FastAPI's route decorator."""
    app = fastapi_app(sqlite_store, clock)

    @cost(30, action="above")
    @app.post("/above")
    async def above() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/below")
    @cost(15, action="below", label="Below")
    async def below() -> dict[str, bool]:
        return {"ok": True}

    key, secret = await new_key(sqlite_store, clock)
    async with serve(app) as client:
        assert (await client.post("/above", headers=bearer(secret))).status_code == 200
        assert (await client.post("/below", headers=bearer(secret))).status_code == 200
    assert await ledger(sqlite_store, key.id) == {"above": (1, 30), "below": (1, 15)}
    assert (await sqlite_store.labels())["below"] == "Below"


async def test_fastapi_included_router_and_mounted_sub_app(sqlite_store, clock):
    """@cost is found on routes of an included APIRouter and of a mounted FastAPI app."""
    app = fastapi_app(sqlite_store, clock)
    router = APIRouter(prefix="/v1")

    @router.post("/export")
    @cost(10)
    async def export() -> dict[str, bool]:
        return {"ok": True}

    sub = FastAPI()

    @sub.get("/items/{item_id}")
    @cost(7, action="item")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    outer = APIRouter()

    @outer.get("/nested/{n}")
    @cost(2, action="nested")
    async def nested(n: int) -> dict[str, int]:
        return {"n": n}

    app.include_router(router)
    app.include_router(outer, prefix="/api")
    app.mount("/sub", sub)
    key, secret = await new_key(sqlite_store, clock)
    async with serve(app) as client:
        assert (await client.post("/v1/export", headers=bearer(secret))).status_code == 200
        assert (await client.get("/sub/items/3", headers=bearer(secret))).status_code == 200
        assert (await client.get("/api/nested/4", headers=bearer(secret))).status_code == 200
    assert await ledger(sqlite_store, key.id) == {
        "export": (1, 10),
        "item": (1, 7),
        "nested": (1, 2),
    }


async def test_starlette_route_endpoint_and_mount(sqlite_store, clock):
    """@cost works on Starlette Route functions, HTTPEndpoint methods and in Mounts."""

    @cost(3)
    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain")

    class Thing(HTTPEndpoint):
        @cost(5, action="thing_read")
        async def get(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("read")

        @cost(9, action="thing_write")
        async def post(self, request: Request) -> PlainTextResponse:
            return PlainTextResponse("write")

    inner = Starlette(routes=[Route("/deep/{n}", plain)])
    routes = [Route("/plain", plain), Route("/thing", Thing), Mount("/mounted", routes=[
        Route("/thing", Thing), Mount("/again", app=inner)])]  # fmt: skip
    key, secret = await new_key(sqlite_store, clock)
    async with serve(starlette_app(sqlite_store, clock, routes=routes)) as client:
        calls = [("GET", "/plain"), ("GET", "/thing"), ("POST", "/thing"),
                 ("GET", "/mounted/thing"), ("GET", "/mounted/again/deep/1")]  # fmt: skip
        for method, path in calls:
            assert (await client.request(method, path, headers=bearer(secret))).status_code == 200
    assert await ledger(sqlite_store, key.id) == {
        "plain": (2, 6),
        "thing_read": (2, 10),
        "thing_write": (1, 9),
    }


def test_cost_must_be_a_non_negative_integer():
    """@cost refuses negative, fractional and boolean costs."""
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="non-negative integer"):
            cost(bad)  # type: ignore[arg-type]


async def test_default_cost_for_unmarked_routes(sqlite_store, clock):
    """Routes without @cost cost default_cost, reported under the function name."""
    key, secret = await new_key(sqlite_store, clock)
    async with serve(starlette_app(sqlite_store, clock, default_cost=2)) as client:
        await client.get("/hello", headers=bearer(secret))
        await client.post("/image", headers=bearer(secret))
    assert await ledger(sqlite_store, key.id) == {"hello": (1, 2), "image_to_html": (1, 30)}


async def test_runtime_cost(sqlite_store, clock):
    """set_cost() inside the handler sets what the call is charged."""

    @cost(10, action="sized")
    async def sized(request: Request) -> PlainTextResponse:
        set_cost(request, int(request.query_params["n"]))
        return PlainTextResponse("ok")

    async def bad(request: Request) -> PlainTextResponse:
        set_cost(request, -5)
        return PlainTextResponse("never")

    key, secret = await new_key(sqlite_store, clock)
    app = starlette_app(sqlite_store, clock, routes=[Route("/sized", sized), Route("/bad", bad)])
    async with serve(app) as client:
        await client.get("/sized?n=25", headers=bearer(secret))
        await client.get("/sized?n=4", headers=bearer(secret))
        await client.get("/sized?n=0", headers=bearer(secret))
        with pytest.raises(ValueError, match="non-negative"):
            await client.get("/bad", headers=bearer(secret))
    assert await ledger(sqlite_store, key.id) == {"sized": (2, 29)}


# -- what is charged --------------------------------------------------------------------


async def test_only_successful_calls_are_charged(sqlite_store, clock):
    """4xx, 5xx and raised exceptions are not charged; 2xx and 3xx are."""

    @cost(10, action="act")
    async def act(request: Request) -> PlainTextResponse:
        code = int(request.query_params["code"])
        if code == 0:
            raise RuntimeError("boom")
        return PlainTextResponse("x", status_code=code)

    key, secret = await new_key(sqlite_store, clock)
    async with serve(starlette_app(sqlite_store, clock, routes=[Route("/act", act)])) as client:
        for code in (200, 201, 302, 400, 404, 422, 500, 503):
            await client.get(f"/act?code={code}", headers=bearer(secret))
        with pytest.raises(RuntimeError):
            await client.get("/act?code=0", headers=bearer(secret))
    assert await ledger(sqlite_store, key.id) == {"act": (3, 30)}


async def test_charge_policy_is_configurable(sqlite_store, clock):
    """charge= takes a set of statuses or a predicate."""

    @cost(1, action="act")
    async def act(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", status_code=int(request.query_params["code"]))

    routes = [Route("/act", act)]
    key, secret = await new_key(sqlite_store, clock)
    async with serve(starlette_app(sqlite_store, clock, routes=routes, charge={200})) as client:
        for code in (200, 201, 404):
            await client.get(f"/act?code={code}", headers=bearer(secret))
    assert await ledger(sqlite_store, key.id) == {"act": (1, 1)}
    async with serve(
        starlette_app(sqlite_store, clock, routes=routes, charge=lambda s: s != 201)
    ) as c:
        for code in (200, 201, 404):
            await c.get(f"/act?code={code}", headers=bearer(secret))
    assert await ledger(sqlite_store, key.id) == {"act": (3, 3)}


async def test_client_disconnect_before_response_is_not_charged(sqlite_store, clock):
    """A client that disconnects before the response starts is not charged."""

    @cost(10, action="upload_big")
    async def upload(request: Request) -> PlainTextResponse:
        await request.body()
        return PlainTextResponse("stored")

    key, secret = await new_key(sqlite_store, clock)
    app = starlette_app(sqlite_store, clock, routes=[Route("/up", upload, methods=["POST"])])
    async with serve(app):
        sent = []

        async def receive():
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/up", "raw_path": b"/up", "root_path": "",
            "query_string": b"", "headers": [(b"x-api-key", secret.encode())],
            "client": ("127.0.0.1", 1), "server": ("test", 80),
        }  # fmt: skip
        with pytest.raises(Exception):  # noqa: B017, PT011 - Starlette's ClientDisconnect
            await app(scope, receive, send)
    assert await ledger(sqlite_store, key.id) == {}


async def test_zero_credit_calls_count_but_are_not_logged(sqlite_store, clock):
    """0-credit calls count as requests but never reach the credits ledger."""

    @cost(0, action="upload")
    async def upload(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    key, secret = await new_key(sqlite_store, clock)
    app = starlette_app(sqlite_store, clock, routes=[Route("/up", upload)])
    async with serve(app) as client:
        for _ in range(3):
            await client.get("/up", headers=bearer(secret))
    assert await ledger(sqlite_store, key.id) == {}
    assert (await sqlite_store.key_totals(key.id)).requests == 3
    assert "upload" not in await sqlite_store.labels()


# -- credit allowance -------------------------------------------------------------------


async def test_credit_allowance_refuses_with_402_before_the_handler(sqlite_store, clock):
    """With 50 monthly credits, a second 30-credit call gets 402 and its handler never runs."""
    runs = 0

    @cost(30, action="image_to_html")
    async def image(request: Request) -> PlainTextResponse:
        nonlocal runs
        runs += 1
        return PlainTextResponse("ok")

    @cost(15, action="small")
    async def small(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    key, secret = await new_key(sqlite_store, clock, monthly_credits=50)
    routes = [Route("/image", image), Route("/small", small)]
    async with serve(
        starlette_app(sqlite_store, clock, routes=routes, usage_path="/usage")
    ) as client:
        assert (await client.get("/image", headers=bearer(secret))).status_code == 200
        refused = await client.get("/image", headers=bearer(secret))
        assert (await client.get("/small", headers=bearer(secret))).status_code == 200
        usage = (await client.get("/usage", headers=bearer(secret))).json()["data"]["usage"]
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "INSUFFICIENT_CREDITS"
    assert runs == 1
    assert usage["monthly_requests"] == 2  # the 402 did not count
    assert await ledger(sqlite_store, key.id) == {"image_to_html": (1, 30), "small": (1, 15)}


async def test_failed_calls_give_their_credits_back(sqlite_store, clock):
    """Credits held for a call that fails are returned to the allowance."""

    @cost(30, action="flaky")
    async def flaky(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", status_code=int(request.query_params["code"]))

    _, secret = await new_key(sqlite_store, clock, monthly_credits=60)
    async with serve(starlette_app(sqlite_store, clock, routes=[Route("/f", flaky)])) as client:
        for _ in range(5):
            assert (await client.get("/f?code=500", headers=bearer(secret))).status_code == 500
        codes = [(await client.get("/f?code=200", headers=bearer(secret))).status_code
                 for _ in range(3)]  # fmt: skip
    assert codes == [200, 200, 402]


async def test_credit_allowance_from_the_tier(sqlite_store, clock):
    """A tier's monthly_credits applies to its keys."""
    tiers = {"metered": {"monthly_requests": 100, "per_minute": 100, "monthly_credits": 40}}
    _, secret = await new_key(sqlite_store, clock, tier="metered", tiers=tiers)
    async with serve(starlette_app(sqlite_store, clock, tiers=tiers)) as client:
        codes = [(await client.post("/image", headers=bearer(secret))).status_code
                 for _ in range(2)]  # fmt: skip
    assert codes == [200, 402]


# -- the write-behind ledger ------------------------------------------------------------


async def test_usage_visible_to_another_connection_within_one_second(sqlite_store, clock):
    """A charged call is in storage, as another process would read it, within 1 s."""
    key, secret = await new_key(sqlite_store, clock)
    async with (
        serve(starlette_app(sqlite_store, clock)) as client,
        SQLiteStorage(sqlite_store.url) as other,
    ):
        await client.post("/image", headers=bearer(secret))
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not await ledger(other, key.id):
            assert loop.time() - started < 1.0, "not visible within 1 s"
            await asyncio.sleep(0.02)


async def test_graceful_shutdown_loses_nothing(sqlite_store, clock):
    """With a long flush interval, shutdown still writes every call."""
    key, secret = await new_key(sqlite_store, clock, tier="enterprise")
    app = starlette_app(sqlite_store, clock, flush_interval=3600, flush_batch=10**6)
    async with serve(app) as client:
        await asyncio.gather(*(client.post("/image", headers=bearer(secret)) for _ in range(120)))
        assert await ledger(sqlite_store, key.id) == {}
    assert await ledger(sqlite_store, key.id) == {"image_to_html": (120, 3600)}
    assert (await sqlite_store.key_totals(key.id)).requests == 120


async def test_flush_failure_keeps_usage_and_recovers(sqlite_store, clock, monkeypatch, caplog):
    """While record() fails, requests still succeed, usage is kept, one warning is logged,
    and everything is written once storage recovers."""
    key, secret = await new_key(sqlite_store, clock, tier="enterprise")
    real_record = sqlite_store.record
    broken = True

    async def record(batch):
        if broken:
            raise StorageError("disk I/O error")
        await real_record(batch)

    monkeypatch.setattr(sqlite_store, "record", record)
    app = starlette_app(sqlite_store, clock, flush_interval=3600)
    with caplog.at_level(logging.WARNING, logger="meterware"):
        async with serve(app) as client:
            meter = runtime_of(app).meter
            for _ in range(10):  # a flush after each call, as the background task would
                assert (await client.post("/image", headers=bearer(secret))).status_code == 200
                assert not await meter.flush()
            assert meter.failures == 10 and meter.pending > 0
            broken = False
            assert await meter.flush()
            assert meter.failures == 0 and meter.pending == 0
    assert await ledger(sqlite_store, key.id) == {"image_to_html": (10, 300)}
    failed = [r for r in caplog.records if "flush failed" in r.message]
    assert len(failed) == 1
    assert any("recovered" in r.message for r in caplog.records)


async def test_pending_usage_is_bounded(sqlite_store, clock, monkeypatch, caplog):
    """Past max_pending aggregates, new usage is dropped and an error is logged once."""
    monkeypatch.setattr(sqlite_store, "record", _always_fails)
    app = starlette_app(sqlite_store, clock, flush_interval=3600, max_pending=3)
    secrets = [(await new_key(sqlite_store, clock, name=f"k{i}"))[1] for i in range(5)]
    with caplog.at_level(logging.ERROR, logger="meterware"):
        async with serve(app) as client:
            for secret in secrets:
                assert (await client.get("/hello", headers=bearer(secret))).status_code == 200
            assert runtime_of(app).meter.pending == 3
    assert len([r for r in caplog.records if "buffer full" in r.message]) == 1


async def _always_fails(batch):
    raise StorageError("down")


async def test_flush_runs_when_the_batch_fills(sqlite_store, clock):
    """flush_batch events wake the flusher before the interval."""
    key, secret = await new_key(sqlite_store, clock, tier="enterprise")
    app = starlette_app(sqlite_store, clock, flush_interval=3600, flush_batch=5)
    async with serve(app) as client:
        for _ in range(5):
            await client.post("/image", headers=bearer(secret))
        for _ in range(100):
            if await ledger(sqlite_store, key.id):
                break
            await asyncio.sleep(0.01)
        assert await ledger(sqlite_store, key.id) == {"image_to_html": (5, 150)}


async def test_usage_app_is_not_charged_when_mounted(sqlite_store, clock):
    """A UsageApp mounted by the host is authenticated but neither counted nor charged."""
    from meterware import UsageApp

    routes = [Mount("/my-usage", app=UsageApp("quota")), Route("/hello", lambda r: None)]
    key, secret = await new_key(sqlite_store, clock)
    async with serve(starlette_app(sqlite_store, clock, routes=routes, default_cost=5)) as client:
        assert (await client.get("/my-usage/")).status_code == 401
        answer = await client.get("/my-usage/", headers=bearer(secret))
    assert answer.status_code == 200
    assert answer.json()["data"]["usage"]["monthly_requests"] == 0
    assert await ledger(sqlite_store, key.id) == {}
