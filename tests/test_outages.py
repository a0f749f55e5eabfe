"""Outages of real servers under real traffic: a private Redis killed and restarted, a
private PostgreSQL stopped and started, while an app in process keeps serving.

Nothing is restarted on the app's side: it must ride out the outage and recover alone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from meterware.storage import Storage, storage_from_url
from tests.backends import unavailable
from tests.servers import PG_BIN, PostgresServer, RedisServer
from tests.utils import bearer, new_key, runtime_of, serve, starlette_app

pytestmark = pytest.mark.slow

MINUTE_FAILED = "rate limit storage failed"


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster for this module (each test uses a schema of its own)."""
    if not (PG_BIN / "initdb").exists():
        unavailable(f"no PostgreSQL binaries in {PG_BIN}")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server, killed afterwards."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not on PATH")
    with RedisServer() as server:
        yield server


@pytest.fixture
async def pg(postgres_server: PostgresServer) -> AsyncIterator[PostgresServer]:
    """The private PostgreSQL, running again after the test whatever it did to it."""
    yield postgres_server
    if not postgres_server.running():
        await asyncio.to_thread(postgres_server.start)


@pytest.fixture
async def store(pg: PostgresServer) -> AsyncIterator[Storage]:
    """An open store on a fresh schema of the private PostgreSQL."""
    s = storage_from_url(f"{pg.url}?schema=mw_{secrets.token_hex(4)}")
    await s.open()
    yield s
    await s.close()


def clock() -> float:
    return time.time()


async def call(client: httpx.AsyncClient, secret: str, path: str = "/image") -> httpx.Response:
    """One request, bounded in time."""
    method = client.post if path == "/image" else client.get
    return await asyncio.wait_for(method(path, headers=bearer(secret)), timeout=15)


def code(answer: httpx.Response) -> Any:
    """The status, and the error code of a refusal."""
    if answer.status_code < 400:
        return answer.status_code
    return answer.status_code, answer.json()["error"]["code"]


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# -- Redis -------------------------------------------------------------------------------


async def test_redis_outage_fails_open_and_recovers(
    store: Storage, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
):
    """Redis killed: requests pass, one warning; Redis back: limits apply again, no restart."""
    _, one = await new_key(store, clock, per_minute=3)
    _, two = await new_key(store, clock, per_minute=3)
    app = starlette_app(
        store, clock, rate_limit_storage=redis_server.limits_url, probe_interval=0.2
    )
    caplog.set_level(logging.WARNING, logger="meterware")
    async with serve(app) as client:
        before = [code(await call(client, one, "/hello")) for _ in range(4)]

        await asyncio.to_thread(redis_server.kill)
        during = [code(await call(client, secret, "/hello")) for secret in [one, two] * 6]
        failed = messages(caplog, MINUTE_FAILED)

        await asyncio.to_thread(redis_server.start)
        await asyncio.sleep(0.2)  # the probe interval: then the next request tries Redis
        after = [code(await call(client, two, "/hello")) for _ in range(4)]
    print(f"\nRedis outage: before {before}, during {Counter(during)}, after {after}")
    print(f"  warnings: {failed} then {messages(caplog, 'is back')}")

    assert before == [200, 200, 200, (429, "RATE_LIMITED")]
    # key one's window was full when Redis went: it stays refused until the window ends;
    # key two's limit is not enforced while Redis is away
    assert during == [(429, "RATE_LIMITED"), 200] * 6
    assert len(failed) == 1 and "admitting requests" in failed[0]
    assert after == [200, 200, 200, (429, "RATE_LIMITED")]
    assert len(messages(caplog, "rate limit storage is back")) == 1


# -- PostgreSQL --------------------------------------------------------------------------


async def test_postgres_outage_refuses_what_needs_storage_and_loses_no_usage(
    store: Storage,
    pg: PostgresServer,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
):
    """PostgreSQL down: cached key passes, others 503 + Retry-After; back: no usage lost."""
    # per_minute high: refusals count toward the minute window too, and must not end it.
    warm, warm_secret = await new_key(store, clock, tier="enterprise", per_minute=1000)
    small, small_secret = await new_key(store, clock, monthly_limit=50, per_minute=1000)
    fresh, fresh_secret = await new_key(store, clock, per_minute=1000)
    # (enterprise reserves quota in blocks of 1000, monthly_limit 50 one unit at a time)
    app = starlette_app(store, clock, rate_limit_storage=redis_server.limits_url)
    admitted: Counter[str] = Counter()
    caplog.set_level(logging.WARNING, logger="meterware")

    async def tally(name: str, secret: str) -> Any:
        answer = await call(client, secret)
        if answer.status_code == 200:
            admitted[name] += 1
        return answer

    async with serve(app) as client:
        mw = runtime_of(app)
        for _ in range(3):
            assert (await tally("warm", warm_secret)).status_code == 200
            assert (await tally("small", small_secret)).status_code == 200

        await asyncio.to_thread(pg.stop)
        outage: dict[str, list[Any]] = {"warm": [], "small": [], "fresh": []}
        retry_after = set()
        for _ in range(10):  # 2 s of traffic: flushes fail meanwhile
            outage["warm"].append(code(await tally("warm", warm_secret)))
            for name, secret in (("small", small_secret), ("fresh", fresh_secret)):
                answer = await tally(name, secret)
                outage[name].append(code(answer))
                retry_after.add(answer.headers.get("retry-after"))
            await asyncio.sleep(0.2)
        buffered, failures = mw.meter.pending, mw.meter.failures

        await asyncio.to_thread(pg.start)
        back = {
            name: code(await tally(name, secret))
            for name, secret in (("small", small_secret), ("fresh", fresh_secret),
                                 ("warm", warm_secret))
        }  # fmt: skip
        flushed = await mw.meter.flush()
        await mw.leases.release_all()  # what a graceful stop does: exact counters below
        ledger = {}
        for name, key in (("warm", warm), ("small", small), ("fresh", fresh)):
            totals = await store.key_totals(key.id)
            count = await store.counter(f"month:{key.id}", clock())
            ledger[name] = (totals.requests, totals.calls, totals.credits, count)

    print(
        f"\nPostgreSQL outage: during { {n: Counter(c) for n, c in outage.items()} }, "
        f"Retry-After {retry_after}; {buffered} aggregates buffered after {failures} failed "
        f"flushes; back {back}; admitted {dict(admitted)}; ledger (requests, calls, "
        f"credits, monthly count) {ledger}"
    )
    unavailable = (503, "STORAGE_UNAVAILABLE")
    assert outage == {"warm": [200] * 10, "small": [unavailable] * 10, "fresh": [unavailable] * 10}
    assert retry_after == {"5"}
    assert buffered > 0 and failures > 0
    assert back == {"small": 200, "fresh": 200, "warm": 200}
    assert flushed
    assert admitted == {"warm": 14, "small": 4, "fresh": 1}
    for name, n in admitted.items():
        assert ledger[name] == (n, n, 30 * n, n), name
    assert len(messages(caplog, "usage flush failed")) == 1


async def test_idle_quota_returned_during_an_outage_is_not_lost(
    store: Storage, pg: PostgresServer, caplog: pytest.LogCaptureFixture
):
    """Quota of a lease idle during a PostgreSQL outage is returned after it: count exact."""
    key, secret = await new_key(store, clock, tier="enterprise")  # a block of 1000 units
    app = starlette_app(store, clock, lease_idle=0.3, flush_interval=0.1)
    async with serve(app) as client:
        mw = runtime_of(app)
        for _ in range(3):
            assert (await call(client, secret)).status_code == 200
        await asyncio.to_thread(pg.stop)
        await asyncio.sleep(1.5)  # the lease is idle: the background task tries to return it
        await asyncio.to_thread(pg.start)
        for _ in range(50):  # 10 s at most
            if await mw.meter.flush():
                break
            await asyncio.sleep(0.2)
        await mw.leases.release_all()
        count = await store.counter(f"month:{key.id}", clock())
    print(f"\nidle lease during an outage: monthly count {count} for 3 admitted requests")
    assert count == 3


async def test_fail_open_admits_everything_it_can_while_postgres_is_down(
    store: Storage,
    pg: PostgresServer,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
):
    """fail_open=True: known keys pass while PostgreSQL is down; unknown secrets get 503."""
    _, small = await new_key(store, clock, monthly_limit=50, per_minute=1000)
    _, credits = await new_key(store, clock, monthly_credits=10_000, per_minute=1000)
    _, fresh = await new_key(store, clock, per_minute=1000)
    app = starlette_app(
        store, clock, fail_open=True, rate_limit_storage=redis_server.limits_url,
        probe_interval=0.2,
    )  # fmt: skip
    caplog.set_level(logging.WARNING, logger="meterware")
    async with serve(app) as client:
        mw = runtime_of(app)
        warm = [code(await call(client, s)) for s in (small, credits)]
        await asyncio.to_thread(pg.stop)
        during = [code(await call(client, s)) for s in (small, credits) * 5]
        unknown = code(await call(client, fresh))
        await asyncio.to_thread(pg.start)
        await asyncio.sleep(0.25)  # past the probe interval: the next lookup tries again
        after = [code(await call(client, s)) for s in (small, credits, fresh)]
        assert await mw.meter.flush()
        rows = await store.usage(
            account_id="acct_1", key_id=None, first_day="2000-01-01", last_day="2100-01-01"
        )
    print(
        f"\nfail_open=True, PostgreSQL down: {Counter(during)}, unknown secret {unknown}; "
        f"after {after}; ledger calls {sum(r.calls for r in rows)}"
    )
    assert warm == [200, 200]
    assert during == [200] * 10
    assert unknown == (503, "STORAGE_UNAVAILABLE")
    assert after == [200, 200, 200]
    assert sum(r.calls for r in rows) == 2 + 10 + 3  # every admitted /image call
    assert len(messages(caplog, "without quota checks")) == 1
    assert len(messages(caplog, "without credits checks")) == 1
