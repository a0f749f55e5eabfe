"""Tier limits: per-minute windows, calendar-month quotas with anchors, exactness under
real concurrency, persistence across restarts, and the rate-limit headers."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meterware import ConfigurationError, Tier, TierTable
from meterware.clock import isoformat_ms, month_period
from meterware.storage.memory import MemoryStorage
from meterware.storage.sqlite import SQLiteStorage
from tests.utils import FakeClock, at, bearer, new_key, serve, starlette_app

pytestmark = pytest.mark.clock_at("2026-02-07T12:00:00")


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.memory),
                        pytest.param("sqlite", marks=pytest.mark.sqlite)])  # fmt: skip
async def local_store(request, tmp_path):
    """An open store in process or on a SQLite file."""
    store = (
        MemoryStorage()
        if request.param == "memory"
        else SQLiteStorage(f"sqlite:///{tmp_path}/limits.db")
    )
    await store.open()
    yield store
    await store.close()


def iso(ts: float) -> str:
    return isoformat_ms(ts)


# -- calendar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "anchor", "start", "end"),
    [
        ("2026-02-07T12:00:00", 1, "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
        ("2026-12-31T23:59:59.999", 1, "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("2027-01-01T00:00:00", 1, "2027-01-01T00:00:00", "2027-02-01T00:00:00"),
        ("2027-02-15T00:00:00", 31, "2027-01-31T00:00:00", "2027-02-28T00:00:00"),
        ("2027-02-28T00:00:00", 31, "2027-02-28T00:00:00", "2027-03-31T00:00:00"),
        ("2028-02-28T12:00:00", 31, "2028-01-31T00:00:00", "2028-02-29T00:00:00"),
        ("2028-02-29T00:00:00", 30, "2028-02-29T00:00:00", "2028-03-30T00:00:00"),
        ("2027-02-28T23:59:59", 29, "2027-02-28T00:00:00", "2027-03-29T00:00:00"),
        ("2028-02-28T23:59:59", 29, "2028-01-29T00:00:00", "2028-02-29T00:00:00"),
        ("2026-12-31T00:00:00", 31, "2026-12-31T00:00:00", "2027-01-31T00:00:00"),
        ("2026-12-30T00:00:00", 31, "2026-11-30T00:00:00", "2026-12-31T00:00:00"),
    ],
)
def test_month_period(now, anchor, start, end):
    """Billing months: calendar months by default, anchors clamped to the month's end."""
    period = month_period(at(now), anchor)
    assert (period.start, period.end) == (at(start), at(end))


# -- per minute -------------------------------------------------------------------------


async def test_per_minute_limit_and_headers(local_store, clock):
    """per_minute=3 answers 200, 200, 200, 429 with X-RateLimit-Remaining 2, 1, 0, 0."""
    _, secret = await new_key(local_store, clock, per_minute=3)
    async with serve(starlette_app(local_store, clock)) as client:
        answers = []
        for _ in range(4):
            answers.append(await client.get("/hello", headers=bearer(secret)))
            clock.advance(1)
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert {a.headers["x-ratelimit-limit"] for a in answers} == {"3"}
    window_end = int(at("2026-02-07T12:01:00"))
    assert {a.headers["x-ratelimit-reset"] for a in answers} == {str(window_end)}
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert refused.headers["retry-after"] == "57"
    assert refused.headers["ratelimit"].startswith('"minute";r=0;t=57')


async def test_retry_after_is_never_too_early(local_store, clock):
    """A request sent exactly Retry-After seconds after a 429 is admitted."""
    _, secret = await new_key(local_store, clock, per_minute=2)
    async with serve(starlette_app(local_store, clock)) as client:
        await client.get("/hello", headers=bearer(secret))
        clock.advance(20.4)
        await client.get("/hello", headers=bearer(secret))
        refused = await client.get("/hello", headers=bearer(secret))
        assert refused.status_code == 429
        wait = int(refused.headers["retry-after"])
        assert wait == 40  # the window ends 39.6 s later: rounded up
        clock.advance(wait - 1)
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 429
        clock.advance(1)
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 200


async def test_rate_limit_by_account(local_store, clock):
    """rate_limit_by='account' (deprecated, with a warning) still shares one window among
    an account's keys, and only that: each key keeps its own monthly quota."""
    _, one = await new_key(local_store, clock, per_minute=2, monthly_limit=5)
    _, two = await new_key(local_store, clock, per_minute=2, monthly_limit=5, name="second")
    with pytest.warns(DeprecationWarning, match="limit_by"):
        app = starlette_app(local_store, clock, rate_limit_by="account", usage_path="/usage")
    async with serve(app) as client:
        codes = [
            (await client.get("/hello", headers=bearer(s))).status_code for s in (one, two, one)
        ]
        clock.advance(60)
        usage = (await client.get("/usage", headers=bearer(one))).json()["data"]["usage"]
    assert codes == [200, 200, 429]
    assert usage["monthly_requests"] == 1  # the key's own, not the account's 2


async def test_limit_by_account_shares_every_limit(local_store, clock):
    """limit_by='account': an account's keys share the minute window, the monthly quota
    and the monthly credits, and both report the account's numbers."""
    _, one = await new_key(local_store, clock, per_minute=3, monthly_limit=4)
    _, two = await new_key(local_store, clock, per_minute=3, monthly_limit=4, name="second")
    app = starlette_app(local_store, clock, limit_by="account", usage_path="/usage")
    async with serve(app) as client:
        minute = [(await client.get("/hello", headers=bearer(s))).status_code
                  for s in (one, two, one, two)]  # fmt: skip
        clock.advance(60)
        month = [(await client.get("/hello", headers=bearer(s))).status_code for s in (two, one)]
        clock.advance(60)
        usage = [
            (await client.get("/usage", headers=bearer(s))).json()["data"]["usage"]
            for s in (one, two)
        ]
    assert minute == [200, 200, 200, 429]
    assert month == [200, 429]  # 3 + 1 = the account's 4
    assert [u["monthly_requests"] for u in usage] == [4, 4]
    assert [u["monthly_remaining"] for u in usage] == [0, 0]
    assert [u["total_requests"] for u in usage] == [2, 2]  # each key's own lifetime


async def test_rate_limited_requests_do_not_count_toward_the_month(local_store, clock):
    """Requests refused with 429 do not use monthly quota."""
    _, secret = await new_key(local_store, clock, per_minute=1)
    async with serve(starlette_app(local_store, clock, usage_path="/usage")) as client:
        for _ in range(5):
            await client.get("/hello", headers=bearer(secret))
        clock.advance(60)
        usage = (await client.get("/usage", headers=bearer(secret))).json()
    assert usage["data"]["usage"]["monthly_requests"] == 1
    assert usage["data"]["usage"]["total_requests"] == 1


async def test_limits_package_storage(local_store, clock):
    """rate_limit_storage takes a limits async storage URI (here async+memory://)."""
    _, secret = await new_key(local_store, clock, per_minute=2)
    app = starlette_app(local_store, clock, rate_limit_storage="async+memory://")
    async with serve(app) as client:
        codes = [(await client.get("/hello", headers=bearer(secret))).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_sync_limits_storage_is_a_configuration_error():
    """A synchronous limits storage URI is refused with a hint to use async+."""
    with pytest.raises(ConfigurationError, match="async"):
        starlette_app("memory://", FakeClock(), rate_limit_storage="redis://127.0.0.1:6379")
    with pytest.raises(ConfigurationError, match="rate_limit_storage"):
        starlette_app("memory://", FakeClock(), rate_limit_storage="bogus://x")


# -- month ------------------------------------------------------------------------------


async def test_quota_exceeded_and_reset_across_the_year_end(local_store, clock):
    """monthly_limit=2 refuses the 3rd call with QUOTA_EXCEEDED until 1 Jan 00:00 UTC."""
    clock.set("2026-12-31T23:59:58")
    _, secret = await new_key(local_store, clock, monthly_limit=2)
    async with serve(starlette_app(local_store, clock)) as client:
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 200
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 200
        clock.advance(0.5)
        refused = await client.get("/hello", headers=bearer(secret))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "QUOTA_EXCEEDED"
        assert refused.headers["retry-after"] == "2"
        assert '"month";r=0;t=2' in refused.headers["ratelimit"]
        clock.set("2027-01-01T00:00:00")
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 200


async def test_anchor_day_moves_the_reset(local_store, clock):
    """A key anchored on the 31st resets on 28 Feb in a common year."""
    clock.set("2027-02-27T23:59:59")
    _, secret = await new_key(local_store, clock, monthly_limit=1, billing_anchor_day=31)
    async with serve(starlette_app(local_store, clock, usage_path="/usage")) as client:
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 200
        refused = await client.get("/hello", headers=bearer(secret))
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        usage = (await client.get("/usage", headers=bearer(secret))).json()["data"]["usage"]
        assert usage["monthly_reset_at"] == "2027-02-28T00:00:00.000Z"
        clock.set("2027-02-28T00:00:00")
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 200
        usage = (await client.get("/usage", headers=bearer(secret))).json()["data"]["usage"]
        assert usage["monthly_reset_at"] == "2027-03-31T00:00:00.000Z"
        assert usage["monthly_requests"] == 1


async def test_legacy_tier_is_limited_as_current_and_reported_as_given(local_store, clock):
    """A 'professional' key is limited as scale and reported as 'professional'."""
    _, secret = await new_key(local_store, clock, tier="Professional")
    async with serve(starlette_app(local_store, clock, usage_path="/usage")) as client:
        hello = await client.get("/hello", headers=bearer(secret))
        data = (await client.get("/usage", headers=bearer(secret))).json()["data"]
    assert hello.headers["x-ratelimit-limit"] == "60"
    assert hello.headers["ratelimit-policy"] == '"minute";q=60;w=60, "month";q=100000;w=2419200'
    assert data["subscription"] == {"tier": "Professional"}
    assert data["rate_limits"] == {"requests_per_minute": 60}
    assert data["usage"]["monthly_limit"] == 100_000


async def test_per_key_overrides_take_precedence(local_store, clock):
    """per_minute and monthly_limit overrides replace the tier's numbers."""
    _, secret = await new_key(local_store, clock, tier="enterprise", per_minute=5, monthly_limit=7)
    async with serve(starlette_app(local_store, clock, usage_path="/usage")) as client:
        await client.get("/hello", headers=bearer(secret))
        data = (await client.get("/usage", headers=bearer(secret))).json()["data"]
    assert data["rate_limits"]["requests_per_minute"] == 5
    assert data["usage"]["monthly_limit"] == 7
    assert data["usage"]["monthly_remaining"] == 6


async def test_custom_tier_table(local_store, clock):
    """Hosts replace the tier table; names are case-insensitive."""
    tiers = {"hobby": {"monthly_requests": 2, "per_minute": 100}}
    _, secret = await new_key(local_store, clock, tier="HOBBY", tiers=tiers)
    async with serve(starlette_app(local_store, clock, tiers=tiers)) as client:
        codes = [(await client.get("/hello", headers=bearer(secret))).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_unknown_tier_is_a_configuration_error():
    """Looking up a tier that is not in the table raises ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match="platinum"):
        TierTable().get("platinum")
    with pytest.raises(ConfigurationError):
        TierTable([Tier("a", 1, 1)], aliases={"b": "missing"})


async def test_usage_endpoint_does_not_count(local_store, clock):
    """Calls to the usage endpoint are not counted toward the monthly quota."""
    _, secret = await new_key(local_store, clock, monthly_limit=3)
    async with serve(starlette_app(local_store, clock, usage_path="/usage")) as client:
        for _ in range(5):
            usage = await client.get("/usage", headers=bearer(secret))
        assert usage.json()["data"]["usage"]["monthly_requests"] == 0
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 200


async def test_every_admitted_request_counts_whatever_its_status(local_store, clock):
    """Admitted requests count whether the handler answers 200, 404 or 500."""
    _, secret = await new_key(local_store, clock)
    async with serve(starlette_app(local_store, clock, usage_path="/usage")) as client:
        await client.get("/hello", headers=bearer(secret))
        await client.get("/status/404", headers=bearer(secret))
        await client.get("/nowhere", headers=bearer(secret))
        with pytest.raises(RuntimeError):
            await client.get("/fail", headers=bearer(secret))
        usage = (await client.get("/usage", headers=bearer(secret))).json()["data"]["usage"]
    assert usage["monthly_requests"] == 4
    assert usage["total_requests"] == 4


# -- exactness and persistence ----------------------------------------------------------


async def test_exact_under_200_concurrent_requests(local_store, clock):
    """200 concurrent requests against a key with 50 left admit exactly 50."""
    _, secret = await new_key(local_store, clock, monthly_limit=50, per_minute=10_000)

    async def slow(request: Request) -> PlainTextResponse:
        await asyncio.sleep(0.001)
        return PlainTextResponse("ok")

    app = starlette_app(local_store, clock, routes=[Route("/slow", slow)], usage_path="/usage")
    async with serve(app) as client:
        answers = await asyncio.gather(
            *(client.get("/slow", headers=bearer(secret)) for _ in range(200))
        )
        codes = [a.status_code for a in answers]
        usage = (await client.get("/usage", headers=bearer(secret))).json()["data"]["usage"]
    assert codes.count(200) == 50
    assert codes.count(429) == 150
    assert usage["monthly_requests"] == 50
    assert usage["monthly_remaining"] == 0


async def test_counts_survive_a_restart(tmp_path, clock):
    """On SQLite, a monthly count survives stopping and starting the app."""
    url = f"sqlite:///{tmp_path}/restart.db"
    async with SQLiteStorage(url) as store:
        _, secret = await new_key(store, clock, monthly_limit=5)
    for _ in range(3):
        async with serve(starlette_app(url, clock)) as client:
            await client.get("/hello", headers=bearer(secret))
    async with serve(starlette_app(url, clock, usage_path="/usage")) as client:
        usage = (await client.get("/usage", headers=bearer(secret))).json()["data"]["usage"]
        assert usage["monthly_requests"] == 3
        codes = [(await client.get("/hello", headers=bearer(secret))).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    async with serve(starlette_app(url, clock)) as client:
        refused = await client.get("/hello", headers=bearer(secret))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "QUOTA_EXCEEDED"


# -- headers ----------------------------------------------------------------------------


async def test_headers_on_success_and_errors(local_store, clock):
    """2xx and handler errors alike carry both header families."""
    _, secret = await new_key(local_store, clock, tier="scale")
    async with serve(starlette_app(local_store, clock)) as client:
        for path in ("/hello", "/status/404", "/status/503"):
            response = await client.get(path, headers=bearer(secret))
            assert response.headers["x-ratelimit-limit"] == "60"
            assert response.headers["ratelimit-policy"] == (
                '"minute";q=60;w=60, "month";q=100000;w=2419200'
            )
            assert response.headers["ratelimit"].startswith('"minute";r=')
            assert '"month";r=' in response.headers["ratelimit"]


async def test_header_families_are_configurable(local_store, clock):
    """rate_limit_headers chooses which header families are sent."""
    _, secret = await new_key(local_store, clock)
    async with serve(starlette_app(local_store, clock, rate_limit_headers=["ietf"])) as client:
        only_ietf = await client.get("/hello", headers=bearer(secret))
    async with serve(starlette_app(local_store, clock, rate_limit_headers=[])) as client:
        none = await client.get("/hello", headers=bearer(secret))
    assert "ratelimit" in only_ietf.headers and "x-ratelimit-limit" not in only_ietf.headers
    assert not any("ratelimit" in h for h in none.headers)


async def test_headers_set_by_the_handler_are_not_duplicated(local_store, clock):
    """A handler's own X-RateLimit-* / RateLimit headers win and are not doubled."""

    async def own(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x", headers={"X-RateLimit-Limit": "7", "RateLimit": "mine"})

    _, secret = await new_key(local_store, clock)
    async with serve(starlette_app(local_store, clock, routes=[Route("/own", own)])) as client:
        response = await client.get("/own", headers=bearer(secret))
    assert response.headers.get_list("x-ratelimit-limit") == ["7"]
    assert "x-ratelimit-remaining" not in response.headers
    assert response.headers.get_list("ratelimit") == ["mine"]
    assert "ratelimit-policy" not in response.headers


def test_reset_instant_is_first_instant_of_next_month():
    """monthly_reset_at for 7 Feb 2026 is 2026-03-01T00:00:00.000Z (reference B)."""
    period = month_period(datetime(2026, 2, 7, 12, tzinfo=timezone.utc).timestamp())
    assert iso(period.end) == "2026-03-01T00:00:00.000Z"
