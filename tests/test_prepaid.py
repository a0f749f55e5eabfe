"""Prepaid credits: grants spent after the month's allowance, soonest expiry first, each
credit accounted for in the ledger and in the balance's movements; exact under
concurrency, across two workers, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from meterware import Admin, Conflict, InvalidValue, NotFound, Storage, cost, set_cost
from tests.backends import PostgresBackend, require_postgres
from tests.servers import Uvicorn
from tests.test_scale_out import cli
from tests.utils import FakeClock, bearer, new_key, runtime_of, serve, starlette_app

DAY = 86_400
TIERS = {
    "allowance": {"monthly_requests": None, "per_minute": None, "monthly_credits": 50},
    "prepaid": {"monthly_requests": None, "per_minute": None, "monthly_credits": 0},
    "unmetered": {"monthly_requests": None, "per_minute": None, "monthly_credits": None},
}


@cost(30, action="render", label="Render")
async def render(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@cost(10, action="flaky")
async def flaky(request: Request) -> PlainTextResponse:
    return PlainTextResponse("failed", status_code=500)


@cost(10, action="dynamic")
async def dynamic(request: Request) -> PlainTextResponse:
    set_cost(request, int(request.query_params["n"]))
    return PlainTextResponse("ok")


ROUTES = [
    Route("/render", render, methods=["POST"]),
    Route("/flaky", flaky, methods=["POST"]),
    Route("/dynamic", dynamic, methods=["POST"]),
]


async def calls(client: httpx.AsyncClient, secret: str, path: str, n: int) -> list[int]:
    return [(await client.post(path, headers=bearer(secret))).status_code for _ in range(n)]


async def settle(app: object) -> None:
    """Let background draws finish and write the ledger."""
    runtime = runtime_of(app)
    await runtime.leases.drain()
    await runtime.meter.flush()


async def test_allowance_first_then_grants_soonest_expiry_first(
    durable_store: Storage, clock: FakeClock
) -> None:
    """With 50 a month and grants of 40 (expiring in 10 days) and 100 (never): calls of
    30 take 30 from the month, then 20 + 10, then the 10-day grant's last 30, then the
    other grant; the balance explains every credit."""
    admin = Admin(durable_store, tiers=TIERS, clock=clock)
    key, secret = await new_key(durable_store, clock, tiers=TIERS, tier="allowance")
    await admin.grant_credits(key.account_id, 100, grant_id="pack")
    await admin.grant_credits(key.account_id, 40, grant_id="trial", expires_at=clock() + 10 * DAY)
    app = starlette_app(durable_store, clock, routes=ROUTES, tiers=TIERS)
    async with serve(app) as client:
        statuses = await calls(client, secret, "/render", 6)
        await settle(app)
    # 190 credits in all: 6 calls of 30 fit (180), the 7th would not
    assert statuses == [200] * 6
    balance = await admin.credits(key.account_id)
    assert {g.grant.grant_id: (g.used, g.remaining) for g in balance.grants} == {
        "trial": (40, 0),
        "pack": (90, 10),
    }
    assert balance.balance == 10
    assert [g.grant.grant_id for g in balance.grants] == ["trial", "pack"]  # spending order
    granted = sum(m.credits for m in balance.movements if m.kind == "grant")
    used = -sum(m.credits for m in balance.movements if m.kind == "use")
    assert (granted, used, granted - used) == (140, 130, balance.balance)
    month = await durable_store.totals(account_id=key.account_id, key_id=key.id)
    assert month.credits == 180  # 50 from the month, 130 from the grants
    async with serve(starlette_app(durable_store, clock, routes=ROUTES, tiers=TIERS)) as client:
        refused = await client.post("/render", headers=bearer(secret))
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "INSUFFICIENT_CREDITS"


async def test_an_expired_grant_stops_counting_at_its_expiry(
    durable_store: Storage, clock: FakeClock
) -> None:
    """A grant spends until its expiry and not a second after; its remainder shows as
    an expiry movement, and the balance is what live grants have left."""
    admin = Admin(durable_store, tiers=TIERS, clock=clock)
    key, secret = await new_key(durable_store, clock, tiers=TIERS, tier="prepaid")
    await admin.grant_credits(key.account_id, 100, grant_id="short", expires_at=clock() + 60)
    app = starlette_app(durable_store, clock, routes=ROUTES, tiers=TIERS)
    async with serve(app) as client:
        before = await calls(client, secret, "/render", 2)
        clock.advance(59.9)
        last = await calls(client, secret, "/render", 1)
        clock.advance(0.1)  # the expiry itself
        after = await calls(client, secret, "/render", 1)
        await settle(app)
    assert before + last + after == [200, 200, 200, 402]
    balance = await admin.credits(key.account_id)
    assert balance.balance == 0
    (line,) = balance.grants
    assert (line.used, line.state) == (90, "expired")
    assert [(m.kind, m.credits) for m in balance.movements] == [
        ("grant", 100), ("use", -90), ("expiry", -10)]  # fmt: skip


async def test_granting_an_id_twice_adds_once(durable_store: Storage, clock: FakeClock) -> None:
    """The same grant id adds its credits once; another amount under it is a conflict;
    bad amounts and unknown accounts are refused."""
    admin = Admin(durable_store, tiers=TIERS, clock=clock)
    key, _ = await new_key(durable_store, clock, tiers=TIERS, tier="prepaid")
    first, added = await admin.grant_credits(key.account_id, 500, grant_id="order-17")
    again, added_again = await admin.grant_credits(key.account_id, 500, grant_id="order-17")
    assert (added, added_again, again) == (True, False, first)
    assert (await admin.credits(key.account_id)).balance == 500
    with pytest.raises(Conflict):
        await admin.grant_credits(key.account_id, 400, grant_id="order-17")
    for amount in (0, -5, 2.5, True):
        with pytest.raises(InvalidValue):
            await admin.grant_credits(key.account_id, amount)  # type: ignore[arg-type]
    with pytest.raises(InvalidValue):
        await admin.grant_credits(key.account_id, 5, expires_at=clock() - 1)
    with pytest.raises(NotFound):
        await admin.grant_credits("acct_nobody", 5)


async def test_uncharged_calls_give_credits_back(durable_store: Storage, clock: FakeClock) -> None:
    """A call the charge rule does not charge (a 500) takes nothing from the balance."""
    admin = Admin(durable_store, tiers=TIERS, clock=clock)
    key, secret = await new_key(durable_store, clock, tiers=TIERS, tier="prepaid")
    await admin.grant_credits(key.account_id, 25, grant_id="g")
    app = starlette_app(durable_store, clock, routes=ROUTES, tiers=TIERS)
    async with serve(app) as client:
        assert await calls(client, secret, "/flaky", 5) == [500] * 5
        await settle(app)
    assert (await admin.credits(key.account_id)).balance == 25


async def test_a_raised_cost_draws_the_difference(durable_store: Storage, clock: FakeClock) -> None:
    """set_cost above the declared 10 draws the difference from the grants; past what
    they hold, the balance goes below zero by that difference only, and the next call
    is refused."""
    admin = Admin(durable_store, tiers=TIERS, clock=clock)
    key, secret = await new_key(durable_store, clock, tiers=TIERS, tier="prepaid")
    await admin.grant_credits(key.account_id, 40, grant_id="g")
    app = starlette_app(durable_store, clock, routes=ROUTES, tiers=TIERS)
    async with serve(app) as client:
        first = (await client.post("/dynamic?n=25", headers=bearer(secret))).status_code
        await settle(app)
        assert (await admin.credits(key.account_id)).balance == 15
        second = (await client.post("/dynamic?n=22", headers=bearer(secret))).status_code
        await settle(app)
        third = (await client.post("/dynamic?n=1", headers=bearer(secret))).status_code
        await settle(app)
    assert (first, second, third) == (200, 200, 402)
    assert (await admin.credits(key.account_id)).balance == -7  # 15 left, 22 charged


async def test_accounts_without_grants_keep_their_limits(
    durable_store: Storage, clock: FakeClock
) -> None:
    """No grant, no allowance: credits are unmetered as before; no grant, an allowance
    of 0: every call that costs credits is refused."""
    _, open_secret = await new_key(durable_store, clock, tiers=TIERS, tier="unmetered")
    _, closed_secret = await new_key(
        durable_store, clock, tiers=TIERS, tier="prepaid", account_id="acct_2"
    )
    async with serve(starlette_app(durable_store, clock, routes=ROUTES, tiers=TIERS)) as client:
        assert await calls(client, open_secret, "/render", 3) == [200] * 3
        assert await calls(client, closed_secret, "/render", 1) == [402]


async def test_concurrent_calls_never_overspend(durable_store: Storage, clock: FakeClock) -> None:
    """200 concurrent calls of 30 against 1,000 prepaid credits in two grants: at most
    33 admitted, and the ledger's draws equal what the admitted calls cost."""
    admin = Admin(durable_store, tiers=TIERS, clock=clock)
    key, secret = await new_key(durable_store, clock, tiers=TIERS, tier="prepaid")
    await admin.grant_credits(key.account_id, 400, grant_id="a", expires_at=clock() + DAY)
    await admin.grant_credits(key.account_id, 600, grant_id="b")
    app = starlette_app(durable_store, clock, routes=ROUTES, tiers=TIERS)
    async with serve(app) as client:
        answers = await asyncio.gather(
            *(client.post("/render", headers=bearer(secret)) for _ in range(200))
        )
        await settle(app)
    admitted = sum(a.status_code == 200 for a in answers)
    assert admitted == 33  # one process: no units held elsewhere, so no early refusal
    balance = await admin.credits(key.account_id)
    assert balance.balance == 1000 - 30 * admitted


# -- two workers -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape",
    [pytest.param("sqlite", marks=pytest.mark.sqlite),
     pytest.param("postgres", marks=pytest.mark.postgres)],
)  # fmt: skip
def test_two_workers_never_overspend(shape: str, tmp_path: Path) -> None:
    """The FastAPI example on two workers, 200 concurrent exports of 15 credits against
    an account with 1,000 prepaid credits in two grants: never more admitted than the
    grants pay for, and every admitted credit is in the ledger's draws."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
    backend = None
    if shape == "sqlite":
        env["METERWARE_STORAGE"] = f"sqlite:///{tmp_path}/prepaid.db"
    else:
        backend = PostgresBackend(require_postgres())
        env["METERWARE_STORAGE"] = backend.url
    env["METERWARE_TIERS"] = json.dumps(TIERS)
    try:
        made = cli("keys", "create", "--name", "prepaid", "--tier", "prepaid", env=env)
        for grant, amount in (("first", 400), ("second", 600)):
            cli("credits", "grant", made["account"], str(amount), "--id", grant, env=env)
        server = Uvicorn("fastapi_app", env, tmp_path, workers=2)
        with server.running():

            async def burst() -> Counter[int]:
                limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
                async with httpx.AsyncClient(limits=limits, timeout=60) as client:
                    answers = await asyncio.gather(*(
                        client.post(f"{server.base}/api/v1/code-export",
                                    headers={"X-API-Key": made["key"]})
                        for _ in range(200)))  # fmt: skip
                return Counter(a.status_code for a in answers)

            statuses = asyncio.run(burst())
        balance = cli("credits", "show", made["account"], env=env)
    finally:
        if backend is not None:
            asyncio.run(backend.cleanup())
    admitted = statuses[200]
    print(f"\n{shape}, 2 workers, 1,000 credits, 200 × 15: {dict(statuses)}; "
          f"balance {balance['balance']}")  # fmt: skip
    assert set(statuses) <= {200, 402}
    assert 15 * admitted <= 1000
    assert admitted >= 60  # early refusals: at most a block of each grant held elsewhere
    used = sum(g["used"] for g in balance["grants"])
    assert used == 15 * admitted
    assert balance["balance"] == 1000 - used
