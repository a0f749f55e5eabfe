"""Notices: thresholds of the month's quota and credit allowance (50, 80, 100%), prepaid
balances low and exhausted, keys created, rotated, revoked and expired, a concern failing
open and recovering — each stored once, across processes and restarts, and handed to the
host's `on_notice` hook once, in order."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meterware import Admin, Storage, cost
from meterware.storage import storage_from_url
from meterware.storage.records import Notice
from tests.servers import RedisServer, Uvicorn
from tests.test_scale_out import cli
from tests.utils import ROUTES, FakeClock, bearer, new_key, runtime_of, serve, starlette_app

TIERS = {
    "ten": {"monthly_requests": 10, "per_minute": None, "monthly_credits": 100},
    "prepaid": {"monthly_requests": None, "per_minute": None, "monthly_credits": 0},
    "minute": {"monthly_requests": None, "per_minute": 1000},
}


@cost(25, action="render")
async def render(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


ALL_ROUTES = [*ROUTES, Route("/render", render, methods=["POST"])]


class Hook:
    """An `on_notice` hook that keeps what it was given."""

    def __init__(self) -> None:
        self.seen: list[Notice] = []

    async def __call__(self, notice: Notice) -> None:
        self.seen.append(notice)

    def types(self) -> list[str]:
        return [n.type for n in self.seen]


async def deliver(app: Any) -> None:
    """Flush the ledger (thresholds other calls crossed, balances), then store and deliver
    the notices."""
    runtime = runtime_of(app)
    await runtime.leases.drain()
    await runtime.meter.flush(after=runtime._read_views)
    await runtime.notices()


async def test_quota_and_credit_thresholds_once_each(
    sqlite_store: Storage, clock: FakeClock
) -> None:
    """10 requests a month, 100 credits: 50, 80 and 100% of each are told once, in
    order, with the numbers; a restarted app tells none of them again."""
    hook = Hook()
    app = starlette_app(sqlite_store, clock, routes=ALL_ROUTES, tiers=TIERS, on_notice=hook)
    key, secret = await new_key(sqlite_store, clock, tiers=TIERS, tier="ten")
    async with serve(app) as client:
        for _ in range(4):  # 4 renders: 100 credits; 4 requests
            assert (await client.post("/render", headers=bearer(secret))).status_code == 200
        for _ in range(8):  # 6 more requests, then 429s
            await client.get("/hello", headers=bearer(secret))
        await deliver(app)
    quota = [(n.data["percent"], n.data["used"]) for n in hook.seen if n.type == "quota.threshold"]
    credits = [n.data["percent"] for n in hook.seen if n.type == "credits.threshold"]
    assert quota == [(50, 5), (80, 8), (100, 10)]
    assert credits == [50, 80, 100]  # (75 then 100: 80 and 100 crossed by one call)
    assert all(n.key_id == key.id and n.account_id == key.account_id for n in hook.seen)
    assert hook.types()[0] == "key.created"
    assert {n.data["limit"] for n in hook.seen if n.type == "quota.threshold"} == {10}
    again = starlette_app(sqlite_store, clock, routes=ALL_ROUTES, tiers=TIERS, on_notice=hook)
    before = len(hook.seen)
    async with serve(again) as client:
        await client.get("/hello", headers=bearer(secret))
        await deliver(again)
    assert len(hook.seen) == before


async def test_key_lifecycle_notices(sqlite_store: Storage, clock: FakeClock) -> None:
    """Creating, rotating and revoking a key through Admin, and a key expiring, are told
    to the hook of the running app, in order."""
    hook = Hook()
    app = starlette_app(sqlite_store, clock, tiers=TIERS, on_notice=hook)
    admin = Admin(sqlite_store, tiers=TIERS, clock=clock)
    async with serve(app):
        key, _ = await admin.create_key(name="lived", tier="ten")
        await admin.rotate_key(key.id, grace=60)
        await admin.revoke_key(key.id)
        short, _ = await admin.create_key(
            name="short", account_id=key.account_id, expires_at=clock() + 30
        )
        await deliver(app)
        clock.advance(61)
        await deliver(app)
    assert hook.types() == ["key.created", "key.rotated", "key.revoked", "key.created",
                            "key.expired"]  # fmt: skip
    assert hook.seen[-1].key_id == short.id
    assert hook.seen[1].data == {"name": "lived", "grace_seconds": 60}


async def test_balance_low_then_exhausted(sqlite_store: Storage, clock: FakeClock) -> None:
    """A prepaid balance under 20% of its grants is low, at 0 exhausted; each once, and
    armed again by a new grant."""
    hook = Hook()
    app = starlette_app(sqlite_store, clock, routes=ALL_ROUTES, tiers=TIERS, on_notice=hook)
    admin = Admin(sqlite_store, tiers=TIERS, clock=clock)
    key, secret = await new_key(sqlite_store, clock, tiers=TIERS, tier="prepaid")
    await admin.grant_credits(key.account_id, 100, grant_id="first")
    async with serve(app) as client:
        for _ in range(5):
            await client.post("/render", headers=bearer(secret))
            await deliver(app)
        await admin.grant_credits(key.account_id, 30, grant_id="second")
        await runtime_of(app).tick()  # the grant reaches this process
        for _ in range(2):
            await client.post("/render", headers=bearer(secret))
            await deliver(app)
    kinds = [(n.type, n.data["balance"]) for n in hook.seen if n.type.startswith("balance.")]
    assert kinds == [("balance.exhausted", 0), ("balance.low", 5)]


@pytest.mark.slow
async def test_a_concern_failing_open_and_recovering(
    sqlite_store: Storage, clock: FakeClock
) -> None:
    """Per-minute windows on a private Redis: paused, the rate limit fails open (told
    once); resumed, it is back (told once)."""
    redis = RedisServer()
    redis.start()
    hook = Hook()
    app = starlette_app(
        sqlite_store, clock, tiers=TIERS, on_notice=hook, rate_limit_storage=redis.limits_url,
        storage_timeout=0.3, probe_interval=0.2,
    )  # fmt: skip
    _, secret = await new_key(sqlite_store, clock, tiers=TIERS, tier="minute")
    try:
        async with serve(app) as client:
            await client.get("/hello", headers=bearer(secret))
            runtime_of(app).minutes.forget_all()  # no units at hand: the next ask Redis
            redis.pause()
            try:
                for _ in range(3):
                    await client.get("/hello", headers=bearer(secret))
            finally:
                redis.resume()
            await asyncio.sleep(0.3)  # past the probe interval (the breaker's real timer)
            await client.get("/hello", headers=bearer(secret))
            await deliver(app)
    finally:
        redis.kill()
    told = [n for n in hook.seen if n.type.startswith("concern.")]
    assert [n.type for n in told] == ["concern.failing_open", "concern.recovered"]
    assert {n.data["concern"] for n in told} == {"rate_limit"}


@pytest.mark.slow
def test_thresholds_once_across_two_workers_and_a_restart(tmp_path: Path) -> None:
    """The Starlette example on two workers, 200 concurrent requests against a monthly
    quota of 100: each threshold is stored once; after a restart and more (refused)
    requests, still once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
    url = f"sqlite:///{tmp_path}/notices.db"
    env |= {"METERWARE_STORAGE": url,
            "METERWARE_TIERS": json.dumps({"hundred": {"monthly_requests": 100,
                                                       "per_minute": None}})}  # fmt: skip
    made = cli("keys", "create", "--name", "busy", "--tier", "hundred", env=env)

    async def burst(base: str, n: int) -> Counter[int]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
            answers = await asyncio.gather(*(
                client.get("/api/external/v1/websites", headers={"X-API-Key": made["key"]})
                for _ in range(n)))  # fmt: skip
        return Counter(a.status_code for a in answers)

    statuses: Counter[int] = Counter()
    for _ in range(2):  # a run, then a restart
        server = Uvicorn("starlette_app", env, tmp_path, workers=2)
        with server.running():
            statuses += asyncio.run(burst(server.base, 200))
            asyncio.run(asyncio.sleep(2.5))  # flushes, reads, notices stored

    async def stored() -> list[Notice]:
        async with storage_from_url(url) as store:
            return await store.notices_after(0, 1000)

    notices = asyncio.run(stored())
    thresholds = [n.id for n in notices if n.type == "quota.threshold"]
    print(f"\n2 workers × 2 runs, 400 requests against 100: {dict(statuses)}; {thresholds}")
    assert statuses == {200: 100, 429: 300}
    assert sorted(n.data["percent"] for n in notices if n.type == "quota.threshold") == [
        50, 80, 100]  # fmt: skip
    assert len(thresholds) == len(set(thresholds)) == 3


@pytest.mark.slow
async def test_the_app_delivers_signed_webhooks(sqlite_store: Storage, clock: FakeClock) -> None:
    """With an endpoint configured, the running app delivers each notice to it, signed
    as Standard Webhooks says (the receiver verifies with `standardwebhooks`), once."""
    from meterware import WebhookEndpoint
    from meterware.webhooks import new_secret
    from tests.webhook_receiver import WebhookReceiver

    clock.now = time.time()  # signatures carry the time: the receiver checks it is recent
    secret = new_secret()
    with WebhookReceiver(secret) as receiver:
        endpoint = WebhookEndpoint(receiver.url, secret)
        app = starlette_app(sqlite_store, clock, tiers=TIERS, webhooks=[endpoint])
        admin = Admin(sqlite_store, tiers=TIERS, clock=clock)
        async with serve(app):
            key, _ = await admin.create_key(name="hooked", tier="ten")
            await admin.revoke_key(key.id)
            for _ in range(100):  # the sender polls every second
                if receiver.distinct() >= 2:
                    break
                await asyncio.sleep(0.05)
        assert receiver.bad_signatures == 0
        assert [receiver.payloads[i]["type"] for i in receiver.deliveries] == [
            "key.created", "key.revoked"]  # fmt: skip
        assert receiver.duplicates() == 0
