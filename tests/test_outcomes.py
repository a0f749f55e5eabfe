"""What meterware decides, seen from outside: a scripted mix of requests through the
middleware gives the same counts in the Prometheus metrics (parsed with
prometheus_client's text parser) and, for known keys, in the ledger's refusals by
outcome — in one process, and under gunicorn with two uvicorn workers."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meterware import Admin, Metrics, MetricsApp, Storage, cost
from tests.test_metrics import Gunicorn, parse
from tests.test_scale_out import cli
from tests.utils import ROUTES, FakeClock, bearer, new_key, runtime_of, serve, starlette_app

DEAD_REDIS = "async+redis://127.0.0.1:1"  # nothing listens there: connections are refused
TIERS = {
    "small": {"monthly_requests": 3, "per_minute": 100, "monthly_credits": 40},
    "tight": {"monthly_requests": 100, "per_minute": 2, "monthly_credits": None},
}


@cost(30, action="render", label="Render")
async def render(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def requests_by_label(text: str) -> dict[tuple[str, str, str], float]:
    """`meterware_requests_total` by (outcome, tier, action), zeros left out."""
    found = parse(text).get("meterware_requests_total", {})
    return {
        (dict(labels)["outcome"], dict(labels)["tier"], dict(labels)["action"]): value
        for labels, value in found.items()
        if value
    }


async def test_a_mix_of_outcomes_in_the_metrics_and_the_ledger(
    sqlite_store: Storage, clock: FakeClock
) -> None:
    """admitted, unauthorized, forbidden, rate_limited, quota_exceeded and
    insufficient_credits, each counted exactly, by tier and action; the credits charged;
    the known keys' refusals in the ledger, by outcome."""
    metrics = Metrics()
    routes = [*ROUTES, Route("/render", render, methods=["POST"]),
              Route("/metrics", MetricsApp(metrics))]  # fmt: skip
    app = starlette_app(sqlite_store, clock, routes=routes, tiers=TIERS, metrics=metrics)
    small, small_secret = await new_key(sqlite_store, clock, tiers=TIERS, tier="small")
    tight, tight_secret = await new_key(
        sqlite_store, clock, tiers=TIERS, tier="tight", account_id="acct_2"
    )
    _, site_secret = await new_key(
        sqlite_store, clock, tiers=TIERS, tier="tight", account_id="acct_3",
        permission="site_access", website_id="site_1",
    )  # fmt: skip
    async with serve(app) as client:
        statuses: Counter[int] = Counter()
        for _ in range(2):
            statuses[(await client.get("/hello")).status_code] += 1  # no key
        statuses[(await client.get("/hello", headers=bearer("mw_" + "x" * 32))).status_code] += 1
        for _ in range(2):  # 30 credits each against 40 a month: one charged, one refused
            statuses[(await client.post("/render", headers=bearer(small_secret))).status_code] += 1
        for _ in range(3):  # the month's 3 requests: the render took 1 (the 402 gave its back)
            statuses[(await client.get("/hello", headers=bearer(small_secret))).status_code] += 1
        for _ in range(5):  # 2 a minute
            statuses[(await client.get("/hello", headers=bearer(tight_secret))).status_code] += 1
        statuses[
            (await client.get("/sites/site_2/stats", headers=bearer(site_secret))).status_code
        ] += 1
        scraped = (await client.get("/metrics")).text
        await runtime_of(app).meter.flush()
    assert statuses == {401: 3, 200: 5, 402: 1, 429: 4, 403: 1}
    assert requests_by_label(scraped) == {
        ("unauthorized", "none", "hello"): 3,
        ("admitted", "small", "render"): 1,
        ("insufficient_credits", "small", "render"): 1,
        ("admitted", "small", "hello"): 2,
        ("quota_exceeded", "small", "hello"): 1,
        ("admitted", "tight", "hello"): 2,
        ("rate_limited", "tight", "hello"): 3,
        ("forbidden", "tight", "site"): 1,
    }
    credits = parse(scraped)["meterware_credits_total"]
    assert {dict(k)["action"]: v for k, v in credits.items() if v} == {"render": 30}
    admin = Admin(sqlite_store, tiers=TIERS, clock=clock)
    by_key = await admin.usage(account_id=small.account_id, by="action")
    assert {line.action: line.outcomes for line in by_key.lines} == {
        "render": {"insufficient_credits": 1},
        "hello": {"quota_exceeded": 1},
    }
    assert (await admin.usage(key_id=tight.id)).total.outcomes == {"rate_limited": 3}


@pytest.mark.parametrize(("fail_open", "outcome", "status"),
                         [(True, "failed_open", 200), (False, "unavailable", 503)])  # fmt: skip
async def test_a_failing_store_in_the_metrics(
    sqlite_store: Storage, clock: FakeClock, fail_open: bool, outcome: str, status: int
) -> None:
    """Per-minute windows on a Redis that refuses connections: requests let through
    uncounted are `failed_open`, refused ones `unavailable`; the store error is counted
    under its concern, and the ledger has the key's `failed_open` requests."""
    metrics = Metrics()
    routes = [*ROUTES, Route("/metrics", MetricsApp(metrics))]
    app = starlette_app(
        sqlite_store, clock, routes=routes, metrics=metrics, rate_limit_storage=DEAD_REDIS,
        fail_open=fail_open, storage_timeout=0.5,
    )  # fmt: skip
    key, secret = await new_key(sqlite_store, clock, tier="pro")
    async with serve(app) as client:
        answers = [(await client.get("/hello", headers=bearer(secret))).status_code
                   for _ in range(4)]  # fmt: skip
        scraped = (await client.get("/metrics")).text
        await runtime_of(app).meter.flush()
    assert answers == [status] * 4
    assert requests_by_label(scraped) == {(outcome, "pro", "hello"): 4}
    errors = parse(scraped)["meterware_store_errors_total"]
    assert {dict(k)["concern"]: v for k, v in errors.items() if v} == {"rate_limit": 4}
    outcomes = (await Admin(sqlite_store, clock=clock).usage(key_id=key.id)).total.outcomes
    assert outcomes == {outcome: 4}


@pytest.mark.slow
def test_two_workers_count_the_mix_exactly(tmp_path: Path) -> None:
    """The Starlette example under gunicorn with two uvicorn workers, metrics in
    prometheus_client's multiprocess mode: the scripted mix, sent over new connections
    so that both workers serve it, scraped from any worker, equals the mix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
    env |= {"METERWARE_STORAGE": f"sqlite:///{tmp_path}/mix.db", "METERWARE_METRICS": "1",
            "METERWARE_TIERS": json.dumps(TIERS)}  # fmt: skip
    month = cli("keys", "create", "--name", "month", "--tier", "small", env=env)
    minute = cli("keys", "create", "--name", "minute", "--tier", "tight", env=env)
    site = cli("keys", "create", "--name", "site", "--tier", "tight", "--permission",
               "site_access", "--website-id", "site_1", env=env)  # fmt: skip
    server = Gunicorn(tmp_path, 2, target="app:app", app_dir="examples/starlette_app", env=env)
    server.start()
    try:
        sites = "/api/external/v1/websites"
        script = [(sites, None)] * 3 + [(sites, "mw_" + "y" * 32)] * 2
        script += [(sites, month["key"])] * 5 + [(sites, minute["key"])] * 6
        script += [("/api/external/v1/websites/site_2/stats", site["key"])] * 2
        statuses: Counter[int] = Counter()
        for path, secret in script:
            headers = {"X-API-Key": secret} if secret else {}
            with httpx.Client(base_url=server.base) as client:  # a new connection each
                statuses[client.get(path, headers=headers).status_code] += 1
        time.sleep(1.5)  # every worker publishes within a second
        scrapes = [requests_by_label(httpx.get(server.base + "/metrics").text) for _ in range(6)]
    finally:
        server.stop()
    assert statuses == {401: 5, 200: 5, 429: 6, 403: 2}
    expected = {
        ("unauthorized", "none", "websites"): 5,
        ("admitted", "small", "websites"): 3,
        ("quota_exceeded", "small", "websites"): 2,
        ("admitted", "tight", "websites"): 2,
        ("rate_limited", "tight", "websites"): 4,
        ("forbidden", "tight", "website_stats"): 2,
    }
    assert all(found == expected for found in scrapes), scrapes


async def test_mounted_apps_have_bounded_actions(sqlite_store: Storage, clock: FakeClock) -> None:
    """Requests to a mounted app without @cost are counted under the app's action, never
    under their path (ids in paths); `/keys` without its slash is the keys app's redirect,
    rate-limited like it and never counted toward the month."""
    from starlette.routing import Mount

    from meterware import KeysApp

    metrics = Metrics()
    routes = [*ROUTES, Mount("/keys", KeysApp()), Route("/metrics", MetricsApp(metrics))]
    app = starlette_app(sqlite_store, clock, routes=routes, metrics=metrics)
    key, secret = await new_key(sqlite_store, clock, tier="pro")
    async with serve(app) as client:
        bare = await client.get("/keys", headers=bearer(secret), follow_redirects=False)
        listed = await client.get("/keys/", headers=bearer(secret))
        rotated = await client.post(f"/keys/{key.id}/rotate", headers=bearer(secret))
        scraped = (await client.get("/metrics")).text
        await runtime_of(app).meter.flush()
    assert (bare.status_code, listed.status_code, rotated.status_code) == (307, 200, 200)
    assert "ratelimit" in bare.headers
    assert requests_by_label(scraped) == {("admitted", "pro", "keys"): 3}
    assert (await sqlite_store.totals(account_id=key.account_id, key_id=key.id)).requests == 0
