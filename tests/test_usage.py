"""The usage endpoint in both reference formats, field by field."""

from __future__ import annotations

import json
import time
from datetime import datetime

import httpx
import pytest

from meterware import Caller
from tests.utils import bearer, new_key, serve, starlette_app

DAYS_ERROR = b'{"error":"days must be an integer from 1 to 90"}'


def credits_app(sqlite_store, clock, **options):
    return starlette_app(
        sqlite_store, clock, usage_path="/api/v1/usage", usage_format="credits", **options
    )


async def test_credits_report_shape(sqlite_store, clock):
    """The credits report has reference A's fields, types and window."""
    key, secret = await new_key(sqlite_store, clock)
    async with serve(credits_app(sqlite_store, clock)) as client:
        clock.set("2026-04-10T09:00:00")
        await client.post("/image", headers=bearer(secret))
        clock.set("2026-04-12T14:29:00")
        await client.post("/image", headers=bearer(secret))
        clock.set("2026-04-12T14:30:00")
        report = (await client.get("/api/v1/usage", headers=bearer(secret))).json()
    assert list(report) == ["period", "key", "summary", "daily"]
    assert report["period"] == {
        "start": "2026-03-13T00:00:00.000Z",
        "end": "2026-04-12T14:30:00.000Z",
        "days": 30,
    }
    assert report["key"] == {
        "id": key.id,
        "name": "Production Key",
        "lastUsed": "2026-04-12T14:29:00.000Z",
    }
    assert report["summary"] == {
        "totalCalls": 2,
        "totalCredits": 60,
        "byEndpoint": {"image_to_html": {"calls": 2, "credits": 60, "label": "Image → HTML"}},
    }
    daily = report["daily"]
    assert len(daily) == 31
    assert daily[0] == {"date": "2026-03-13", "calls": 0, "credits": 0}
    assert daily[-1] == {"date": "2026-04-12", "calls": 1, "credits": 30}
    assert daily[-3] == {"date": "2026-04-10", "calls": 1, "credits": 30}
    assert sum(d["calls"] for d in daily) == 2


@pytest.mark.parametrize("raw", ["0", "91", "-1", "1.5", "abc", "", "1e1", "3O", "+5", "100000"])
async def test_bad_days_is_a_400(sqlite_store, clock, raw):
    """days outside 1-90 or not an integer answers 400 {"error": ...}."""
    _, secret = await new_key(sqlite_store, clock)
    async with serve(credits_app(sqlite_store, clock)) as client:
        response = await client.get("/api/v1/usage", params={"days": raw}, headers=bearer(secret))
    assert response.status_code == 400
    assert response.content == DAYS_ERROR


@pytest.mark.parametrize(
    ("days", "first"), [("1", "2026-04-11"), ("7", "2026-04-05"), ("90", "2026-01-12")]
)
async def test_days_window(sqlite_store, clock, days, first):
    """days=N gives N+1 daily entries from midnight of today-N to today."""
    _, secret = await new_key(sqlite_store, clock)
    async with serve(credits_app(sqlite_store, clock)) as client:
        report = (await client.get(f"/api/v1/usage?days={days}", headers=bearer(secret))).json()
    assert report["period"]["days"] == int(days)
    assert report["period"]["start"] == f"{first}T00:00:00.000Z"
    assert report["daily"][0]["date"] == first
    assert report["daily"][-1]["date"] == "2026-04-12"
    assert len(report["daily"]) == int(days) + 1


async def test_window_across_the_year_end(sqlite_store, clock):
    """A window spanning 31 Dec -> 1 Jan lists every date and puts calls on the right day."""
    _, secret = await new_key(sqlite_store, clock)
    async with serve(credits_app(sqlite_store, clock)) as client:
        clock.set("2026-12-31T23:59:59.900")
        await client.post("/image", headers=bearer(secret))
        clock.set("2027-01-01T00:00:00")
        await client.post("/image", headers=bearer(secret))
        await client.post("/image", headers=bearer(secret))
        clock.set("2027-01-02T08:00:00")
        report = (await client.get("/api/v1/usage?days=3", headers=bearer(secret))).json()
    assert report["daily"] == [
        {"date": "2026-12-30", "calls": 0, "credits": 0},
        {"date": "2026-12-31", "calls": 1, "credits": 30},
        {"date": "2027-01-01", "calls": 2, "credits": 60},
        {"date": "2027-01-02", "calls": 0, "credits": 0},
    ]
    assert report["period"]["start"] == "2026-12-30T00:00:00.000Z"


async def test_calls_before_the_window_are_left_out(sqlite_store, clock):
    """Calls older than start are not in the summary."""
    _, secret = await new_key(sqlite_store, clock)
    async with serve(credits_app(sqlite_store, clock)) as client:
        clock.set("2026-04-04T23:59:59")
        await client.post("/image", headers=bearer(secret))
        clock.set("2026-04-12T10:00:00")
        week = (await client.get("/api/v1/usage?days=7", headers=bearer(secret))).json()
        month = (await client.get("/api/v1/usage", headers=bearer(secret))).json()
    assert week["summary"]["totalCalls"] == 0
    assert month["summary"]["totalCalls"] == 1


async def test_key_id_scoping(sqlite_store, clock):
    """keyId reports another key of the account; a foreign or unknown id answers the same 404."""
    mine, secret = await new_key(sqlite_store, clock)
    sibling, sibling_secret = await new_key(sqlite_store, clock, name="Staging Key")
    foreign, _ = await new_key(sqlite_store, clock, account_id="acct_2", name="Theirs")
    async with serve(credits_app(sqlite_store, clock)) as client:
        await client.post("/image", headers=bearer(sibling_secret))
        other = await client.get(f"/api/v1/usage?keyId={sibling.id}", headers=bearer(secret))
        own = await client.get("/api/v1/usage", headers=bearer(secret))
        theirs = await client.get(f"/api/v1/usage?keyId={foreign.id}", headers=bearer(secret))
        missing = await client.get(
            "/api/v1/usage?keyId=key_0000000000000000", headers=bearer(secret)
        )
        bad = await client.get("/api/v1/usage?keyId=%20drop%20table", headers=bearer(secret))
    assert other.json()["key"]["id"] == sibling.id
    assert other.json()["key"]["name"] == "Staging Key"
    assert other.json()["summary"]["totalCredits"] == 30
    assert own.json()["key"]["id"] == mine.id
    assert own.json()["key"]["lastUsed"] is None
    assert own.json()["summary"]["totalCredits"] == 0
    assert (theirs.status_code, theirs.content) == (missing.status_code, missing.content)
    assert theirs.status_code == 404
    assert theirs.content == b'{"error":"API key not found"}'
    assert bad.status_code == 400 and set(bad.json()) == {"error"}


async def test_account_principal_gets_the_whole_account(sqlite_store, clock):
    """A caller that is an account (host resolver) sees all its keys and no `key` object."""
    _, s1 = await new_key(sqlite_store, clock)
    two, s2 = await new_key(sqlite_store, clock, name="two")
    async with serve(credits_app(sqlite_store, clock)) as client:
        await client.post("/image", headers=bearer(s1))
        await client.post("/image", headers=bearer(s2))

    async def resolve(secret: str) -> Caller | None:
        return Caller(account_id="acct_1", key_id=None, name="Acme") if secret == "acct" else None

    async with serve(credits_app(sqlite_store, clock, resolver=resolve)) as client:
        report = (await client.get("/api/v1/usage", headers={"X-API-Key": "acct"})).json()
        scoped = await client.get(f"/api/v1/usage?keyId={two.id}", headers={"X-API-Key": "acct"})
    assert "key" not in report
    assert report["summary"]["totalCalls"] == 2
    assert scoped.json()["key"]["id"] == two.id
    assert scoped.json()["summary"]["totalCalls"] == 1


async def test_by_endpoint_order_and_labels(sqlite_store, clock):
    """byEndpoint lists actions by credits, most first, each with its label."""
    from starlette.routing import Route

    from meterware import cost

    @cost(10, action="figma_export", label="Figma Export")
    async def figma(request):
        from starlette.responses import PlainTextResponse

        return PlainTextResponse("ok")

    _, secret = await new_key(sqlite_store, clock, tier="enterprise")
    from tests.utils import ROUTES

    app = credits_app(sqlite_store, clock, routes=[*ROUTES, Route("/figma", figma)])
    async with serve(app) as client:
        for _ in range(5):
            await client.get("/figma", headers=bearer(secret))
        await client.post("/image", headers=bearer(secret))
        report = (await client.get("/api/v1/usage", headers=bearer(secret))).json()
    assert list(report["summary"]["byEndpoint"].items()) == [
        ("figma_export", {"calls": 5, "credits": 50, "label": "Figma Export"}),
        ("image_to_html", {"calls": 1, "credits": 30, "label": "Image → HTML"}),
    ]


async def test_credits_errors_use_the_flat_envelope(sqlite_store, clock):
    """With usage_format='credits', 401 and 429 bodies are {"error": ...}."""
    _, secret = await new_key(sqlite_store, clock, per_minute=1)
    async with serve(credits_app(sqlite_store, clock)) as client:
        unauthorized = await client.get("/api/v1/usage")
        await client.get("/api/v1/usage", headers=bearer(secret))
        limited = await client.get("/api/v1/usage", headers=bearer(secret))
        wrong_method = await client.post("/api/v1/usage", headers=bearer(secret))
    assert unauthorized.content == b'{"error":"Invalid or missing API key"}'
    assert limited.status_code == 429
    assert limited.content == b'{"error":"Rate limit exceeded"}'
    assert limited.headers["retry-after"] == "60"
    assert wrong_method.status_code in (405, 429)


async def test_quota_status_shape(sqlite_store, clock):
    """The quota format has reference B's fields, nesting, types and timestamp."""
    clock.set("2026-02-07T12:00:00")
    key, secret = await new_key(sqlite_store, clock, tier="professional", name="Production API Key")
    app = starlette_app(
        sqlite_store, clock, usage_path="/api/external/v1/usage", usage_format="quota"
    )
    async with serve(app) as client:
        for _ in range(3):
            await client.get("/hello", headers={"X-API-Key": secret})
        response = await client.get("/api/external/v1/usage", headers={"X-API-Key": secret})
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "data": {
            "api_key": {
                "id": key.id,
                "name": "Production API Key",
                "permission": "full_access",
                "website_id": None,
            },
            "usage": {
                "monthly_requests": 3,
                "monthly_limit": 100000,
                "monthly_remaining": 99997,
                "monthly_reset_at": "2026-03-01T00:00:00.000Z",
                "total_requests": 3,
            },
            "rate_limits": {"requests_per_minute": 60},
            "subscription": {"tier": "professional"},
        },
        "timestamp": "2026-02-07T12:00:00.000Z",
    }
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-ratelimit-limit"] == "60"


async def test_quota_site_key_and_errors(sqlite_store, clock):
    """A site_access key reports its website_id; errors use reference B's envelope."""
    _, secret = await new_key(sqlite_store, clock, permission="site_access", website_id="site_9")
    app = starlette_app(sqlite_store, clock, usage_path="/u", usage_format="quota")
    async with serve(app) as client:
        ok = (await client.get("/u", headers=bearer(secret))).json()
        denied = await client.get("/u")
    assert ok["data"]["api_key"]["permission"] == "site_access"
    assert ok["data"]["api_key"]["website_id"] == "site_9"
    body = json.loads(denied.content)
    assert body == {
        "success": False,
        "error": {
            "message": "Invalid or missing API key",
            "code": "UNAUTHORIZED",
            "timestamp": "2026-04-12T14:30:00.000Z",
        },
    }


async def test_total_requests_outlives_the_month(sqlite_store, clock):
    """total_requests keeps counting across months; monthly_requests starts again."""
    clock.set("2026-01-31T23:00:00")
    _, secret = await new_key(sqlite_store, clock)
    app = starlette_app(sqlite_store, clock, usage_path="/u", usage_format="quota")
    async with serve(app) as client:
        for _ in range(4):
            await client.get("/hello", headers=bearer(secret))
        clock.set("2026-02-01T01:00:00")
        await client.get("/hello", headers=bearer(secret))
        usage = (await client.get("/u", headers=bearer(secret))).json()["data"]["usage"]
    assert usage["monthly_requests"] == 1
    assert usage["total_requests"] == 5
    assert usage["monthly_reset_at"] == "2026-03-01T00:00:00.000Z"


async def test_mounted_usage_app_keeps_its_own_format(sqlite_store, clock):
    """A UsageApp('credits') mounted by the host answers in its format, not the default."""
    from starlette.routing import Mount

    from meterware import UsageApp
    from tests.utils import ROUTES

    _, secret = await new_key(sqlite_store, clock)
    routes = [*ROUTES, Mount("/report", app=UsageApp("credits"))]
    async with serve(starlette_app(sqlite_store, clock, routes=routes)) as client:
        report = (await client.get("/report/?days=1", headers=bearer(secret))).json()
    assert report["period"]["days"] == 1
    assert list(report) == ["period", "key", "summary", "daily"]


async def test_configured_envelope_governs_the_usage_endpoints_errors(sqlite_store, clock):
    """envelope='wrapped' with the credits format: the endpoint's 400 and 404 are wrapped too."""
    _, secret = await new_key(sqlite_store, clock)
    app = credits_app(sqlite_store, clock, envelope="wrapped")
    async with serve(app) as client:
        bad_days = await client.get("/api/v1/usage?days=0", headers=bearer(secret))
        unknown = await client.get("/api/v1/usage?keyId=key_nope", headers=bearer(secret))
        refused = await client.get("/api/v1/usage")
    assert bad_days.status_code == 400
    assert bad_days.json() == {
        "success": False,
        "error": {
            "message": "days must be an integer from 1 to 90",
            "code": "BAD_REQUEST",
            "timestamp": "2026-04-12T14:30:00.000Z",
        },
    }
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "NOT_FOUND"
    assert refused.json()["error"]["code"] == "UNAUTHORIZED"


async def test_usage_app_without_the_middleware_answers_401_now():
    """A UsageApp reached without the middleware in front answers 401 stamped with the
    current time (not 1970)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from meterware import UsageApp

    app = Starlette(routes=[Mount("/usage", app=UsageApp("quota"))])
    before = time.time()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        answer = await client.get("/usage/")
    assert answer.status_code == 401
    stamped = datetime.fromisoformat(answer.json()["error"]["timestamp"].replace("Z", "+00:00"))
    assert before - 1 <= stamped.timestamp() <= time.time() + 1
