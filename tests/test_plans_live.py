"""Plans, keys and usage operated while the API runs.

- an upgrade (the account's plan, from the admin API) lifts a key's monthly-quota 429
  within 2 s on the Starlette example under uvicorn, on SQLite and on PostgreSQL, and
  what was used this month stays used;
- a downgrade tightens the next minute's limit (in process, the clock moved by hand);
- the admin app's token: 503 with none configured, 401 (with a challenge) without it or
  with another, no API key needed, and nothing it does is counted;
- the admin and self-serve apps in the FastAPI example's OpenAPI schema;
- self-serve keys through both example apps under uvicorn, with real keys: list,
  create (at most 10 live), rotate, revoke; 403 for a site_access key; another account's
  key is a 404 exactly like an unknown id; never counted toward the month, rate-limited;
- `meterware usage --csv` totals equal the end-user endpoint's for the same key and days.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from meterware import Admin, AdminApp, Storage
from tests.backends import PostgresBackend, require_postgres
from tests.servers import Uvicorn
from tests.test_examples import load_example
from tests.utils import FakeClock, bearer, new_key, runtime_of, serve, starlette_app

TOKEN = "live-admin-token-0123456789abcdef"
TIERS = {
    "basic": {"monthly_requests": 5, "per_minute": 1000},
    "premium": {"monthly_requests": 50, "per_minute": 1000},
}
STATS = "/api/external/v1/websites"
QUOTA = "/api/external/v1/usage"


def environment(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
    env |= {"METERWARE_STORAGE": url, "METERWARE_ADMIN_TOKEN": TOKEN,
            "METERWARE_TIERS": json.dumps(TIERS)}  # fmt: skip
    return env


@pytest.fixture(
    params=[pytest.param("sqlite", marks=pytest.mark.sqlite),
            pytest.param("postgres", marks=pytest.mark.postgres)]
)  # fmt: skip
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/live.db"
        return
    backend = PostgresBackend(require_postgres())
    yield backend.url
    await backend.cleanup()


def admin(base: str, method: str, path: str, body: Any = None) -> Any:
    answer = httpx.request(method, f"{base}/admin{path}", json=body,
                           headers=bearer(TOKEN), timeout=10)  # fmt: skip
    assert answer.status_code in (200, 201), answer.text
    return answer.json()["data"]


@pytest.mark.slow
def test_an_upgrade_lifts_a_429_within_two_seconds(store_url: str, tmp_path: Path) -> None:
    """A key at its plan's monthly quota (5) gets 429; its account moved to a plan of 50
    through the admin API, the key is admitted again within 2 s, and its month still
    counts the 5 it used."""
    server = Uvicorn("starlette_app", environment(store_url), tmp_path, workers=2)
    with server.running():
        account = admin(server.base, "POST", "/accounts", {"tier": "basic"})["account"]
        made = admin(server.base, "POST", "/keys", {"name": "live", "account_id": account["id"]})
        key = {"X-API-Key": made["secret"]}
        answers = [httpx.get(server.base + STATS, headers=key).status_code for _ in range(8)]
        assert answers == [200] * 5 + [429] * 3
        admin(server.base, "PATCH", f"/accounts/{account['id']}", {"tier": "premium"})
        upgraded = time.monotonic()
        while httpx.get(server.base + STATS, headers=key).status_code != 200:
            assert time.monotonic() - upgraded < 2.0, "still refused 2 s after the upgrade"
            time.sleep(0.05)
        lifted = time.monotonic() - upgraded
        time.sleep(1.0)  # the ledger's flush bound, for the report below
        quota = httpx.get(server.base + QUOTA, headers=key).json()["data"]
    print(f"\nupgrade lifted the 429 after {lifted:.2f} s")
    assert quota["subscription"]["tier"] == "premium"
    assert quota["usage"]["monthly_limit"] == 50
    assert quota["usage"]["monthly_requests"] == 6  # 5 before, 1 after: the 429s never count
    assert quota["usage"]["monthly_remaining"] == 44


@pytest.mark.clock_at("2026-04-12T14:30:10")
async def test_a_downgrade_tightens_the_next_minute(
    durable_store: Storage, clock: FakeClock
) -> None:
    """An account on a plan of 100 per minute moved to 3 per minute: this minute keeps
    what it had counted; the next one admits exactly 3."""
    tiers = {"roomy": {"monthly_requests": None, "per_minute": 100},
             "tight": {"monthly_requests": None, "per_minute": 3}}  # fmt: skip
    app = starlette_app(durable_store, clock, tiers=tiers)
    key, secret = await new_key(durable_store, clock, tiers=tiers, tier="roomy")
    async with serve(app) as client:
        assert [(await client.get("/hello", headers=bearer(secret))).status_code
                for _ in range(10)] == [200] * 10  # fmt: skip
        await Admin(durable_store, tiers=tiers, clock=clock).set_tier(key.account_id, "tight")
        clock.advance(60)
        await runtime_of(app).tick()
        answers = [(await client.get("/hello", headers=bearer(secret))).status_code
                   for _ in range(6)]  # fmt: skip
    assert answers == [200] * 3 + [429] * 3


# -- the admin app's token ----------------------------------------------------------------


async def test_the_admin_token_refusals(sqlite_store: Storage, clock: FakeClock) -> None:
    """No token configured: 503 to everything. A token: 401 with a Bearer challenge when
    missing or wrong, in the middleware's envelope; right: answered, with no API key,
    and never counted as usage."""
    from starlette.routing import Mount

    from tests.utils import ROUTES

    off = starlette_app(sqlite_store, clock, routes=[*ROUTES, Mount("/admin", AdminApp(token=""))])
    async with serve(off) as client:
        answer = await client.get("/admin/accounts", headers=bearer("anything"))
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "ADMIN_DISABLED"

    on = starlette_app(
        sqlite_store, clock, routes=[*ROUTES, Mount("/admin", AdminApp(token=TOKEN))]
    )
    async with serve(on) as client:
        for headers in ({}, bearer("wrong"), {"Authorization": TOKEN}, {"X-API-Key": TOKEN}):
            answer = await client.get("/admin/accounts", headers=headers)
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"] == 'Bearer realm="meterware-admin"'
            assert answer.json()["error"]["code"] == "UNAUTHORIZED"
            assert "ratelimit" not in answer.headers
        made = await client.post("/admin/keys", json={"name": "k"}, headers=bearer(TOKEN))
        assert made.status_code == 201
        assert (await client.get("/admin/accounts", headers=bearer(TOKEN))).status_code == 200
        runtime = runtime_of(on)
        await runtime.meter.flush()
        assert runtime.meter.pending == 0
        account = made.json()["data"]["key"]["account"]
        assert (await sqlite_store.totals(account_id=account, key_id=None)).requests == 0


async def test_the_admin_app_without_middleware(tmp_path: Path) -> None:
    """Mounted in an app with no middleware, the admin app opens its own store."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    url = f"sqlite:///{tmp_path}/alone.db"
    app = Starlette(routes=[Mount("/admin", AdminApp(token=TOKEN, storage=url))])
    async with serve(app) as client:
        made = await client.post("/admin/accounts", json={"id": "acct_x"}, headers=bearer(TOKEN))
        assert made.status_code == 201
        listed = await client.get("/admin/accounts", headers=bearer(TOKEN))
        assert [a["id"] for a in listed.json()["data"]["accounts"]] == ["acct_x"]


async def test_openapi_documents_the_mounted_apps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The FastAPI example's schema has the admin endpoints under its own bearer token
    and the self-serve keys under the API key schemes; the schema is valid OpenAPI."""
    monkeypatch.setenv("METERWARE_ADMIN_TOKEN", TOKEN)
    app = load_example("fastapi_app", f"sqlite:///{tmp_path}/docs.db", monkeypatch)
    async with serve(app) as client:
        await client.get("/health")
        schema = (await client.get("/openapi.json")).json()
    validate(schema)
    assert schema["components"]["securitySchemes"]["MeterwareAdmin"]["scheme"] == "bearer"
    create = schema["paths"]["/admin/keys"]["post"]
    assert create["security"] == [{"MeterwareAdmin": []}]
    assert create["requestBody"]["content"]["application/json"]["schema"]["required"] == ["name"]
    assert "429" not in create["responses"]
    self_serve = schema["paths"]["/api/v1/keys/"]["post"]
    assert {"X-API-Key": []} in self_serve["security"]
    assert {"403", "429", "401"} <= set(self_serve["responses"])


# -- self-serve keys through the examples --------------------------------------------------


EXAMPLES = [
    pytest.param(("fastapi_app", "/api/v1/keys", "/api/v1/usage"), id="fastapi"),
    pytest.param(("starlette_app", "/api/external/v1/keys", QUOTA), id="starlette"),
]


@pytest.fixture(params=EXAMPLES)
def example(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Uvicorn, str, str]]:
    name, keys_path, usage_path = request.param
    server = Uvicorn(name, environment(f"sqlite:///{tmp_path}/self.db"), tmp_path, workers=1)
    with server.running():
        yield server, keys_path, usage_path


def cli(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "meterware.cli", *args, "--json"],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if done.stdout.startswith(("{", "[")) else done.stdout


@pytest.mark.slow
def test_self_serve_keys(example: tuple[Uvicorn, str, str]) -> None:
    """List, create, rotate and revoke with a full_access key; the cap of 10 live keys;
    403 for site_access; a foreign key is a 404 like an unknown one; none of it counts
    toward the month, and it is rate-limited like any route."""
    server, keys, usage = example
    env = server.env
    owner = cli(env, "keys", "create", "--name", "owner", "--tier", "premium")
    site = cli(env, "keys", "create", "--name", "site", "--account", owner["account"],
               "--permission", "site_access", "--website-id", "site_1")  # fmt: skip
    stranger = cli(env, "keys", "create", "--name", "stranger")
    me = {"X-API-Key": owner["key"]}
    base = server.base + keys

    listed = httpx.get(base + "/", headers=me)
    assert listed.status_code == 200 and "ratelimit" in listed.headers
    names = [k["name"] for k in data(listed)["keys"]]
    assert names == ["owner", "site"]
    assert "secret" not in listed.text and owner["key"] not in listed.text

    made = httpx.post(base + "/", json={"name": "ci", "expires_in_days": 30}, headers=me)
    assert made.status_code == 201
    new = data(made)
    for far in ({"expires_in_days": 1e300}, {"expires_in_days": 0}, {"expires_in_days": "1"}):
        refused = httpx.post(base + "/", json={"name": "far", **far}, headers=me)
        assert refused.status_code == 400 and "expires_in_days" in refused.text
    forever = httpx.post(f"{base}/{new['key']['id']}/rotate", json={"grace_seconds": 1e308},
                         headers=me)  # fmt: skip
    assert forever.status_code == 400 and "grace_seconds" in forever.text
    assert httpx.get(server.base + usage, headers={"X-API-Key": new["secret"]}).status_code == 200
    rotated = httpx.post(f"{base}/{new['key']['id']}/rotate", json={"grace_seconds": 60},
                         headers=me)  # fmt: skip
    assert rotated.status_code == 200 and data(rotated)["secret"] != new["secret"]
    for secret in (new["secret"], data(rotated)["secret"]):  # both work during the grace
        assert httpx.get(server.base + usage, headers={"X-API-Key": secret}).status_code == 200
    revoked = httpx.post(f"{base}/{new['key']['id']}/revoke", headers=me)
    assert data(revoked)["key"]["status"] == "revoked"

    created = [httpx.post(base + "/", json={"name": f"k{i}"}, headers=me) for i in range(9)]
    assert [a.status_code for a in created] == [201] * 8 + [409]  # owner + site + 8 = 10 live
    assert error(created[-1])[1] == "CONFLICT"

    forbidden = httpx.get(base + "/", headers={"X-API-Key": site["key"]})
    assert forbidden.status_code == 403
    foreign = httpx.post(f"{base}/{stranger['id']}/revoke", headers=me)
    unknown = httpx.post(f"{base}/key_0123456789abcdef/revoke", headers=me)
    assert foreign.status_code == unknown.status_code == 404
    assert error(foreign) == error(unknown)
    assert cli(env, "keys", "show", stranger["id"])["status"] == "active"

    time.sleep(1.0)  # the ledger's flush bound
    shown = cli(env, "keys", "show", owner["id"])
    assert shown["quota"]["monthly_requests"] == 0  # 25 self-serve calls, none counted


def data(answer: httpx.Response) -> Any:
    body = answer.json()
    return body["data"] if "success" in body else body


def error(answer: httpx.Response) -> tuple[int, str]:
    """(status, code) of an error in either envelope (flat has only the message)."""
    body = answer.json()
    if isinstance(body.get("error"), dict):
        return answer.status_code, body["error"]["code"]
    return answer.status_code, {404: "NOT_FOUND", 409: "CONFLICT"}.get(answer.status_code, "")


@pytest.mark.slow
def test_self_serve_is_rate_limited(tmp_path: Path) -> None:
    """Self-serve calls take from the per-minute window like any route (429 past it)."""
    env = environment(f"sqlite:///{tmp_path}/limited.db")
    env["METERWARE_TIERS"] = json.dumps({"basic": {"monthly_requests": 5, "per_minute": 3}})
    server = Uvicorn("starlette_app", env, tmp_path, workers=1)
    with server.running():
        owner = cli(env, "keys", "create", "--name", "owner", "--tier", "basic")
        answers = [httpx.get(server.base + "/api/external/v1/keys/",
                             headers={"X-API-Key": owner["key"]}).status_code
                   for _ in range(5)]  # fmt: skip
    assert answers == [200, 200, 200, 429, 429]


# -- the CSV against the end-user endpoint -------------------------------------------------


@pytest.mark.slow
def test_usage_csv_totals_equal_the_usage_endpoint(tmp_path: Path) -> None:
    """Calls and credits of a key over the usage endpoint's 7 days, from `meterware usage
    --key --from --to --csv`, equal the endpoint's summary."""
    env = environment(f"sqlite:///{tmp_path}/csv.db")
    env.pop("METERWARE_TIERS")
    server = Uvicorn("fastapi_app", env, tmp_path, workers=1)
    with server.running():
        key = cli(env, "keys", "create", "--name", "csv", "--tier", "scale")
        headers = {"X-API-Key": key["key"]}
        for path, times in (("image-to-html", 3), ("code-export", 2), ("figma-export", 4),
                            ("uploads", 5)):  # fmt: skip
            for _ in range(times):
                assert httpx.post(f"{server.base}/api/v1/{path}", headers=headers).is_success
        time.sleep(1.0)  # the ledger's flush bound
        report = httpx.get(f"{server.base}/api/v1/usage?days=7", headers=headers).json()
    today = date.today()
    done = subprocess.run(
        [sys.executable, "-m", "meterware.cli", "usage", "--key", key["id"], "--by", "action",
         "--from", (today - timedelta(days=7)).isoformat(), "--to", today.isoformat(), "--csv"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    total = rows[-1]
    assert total["action"] == "total"
    assert int(total["calls"]) == report["summary"]["totalCalls"] == 9
    assert int(total["requests"]) == 14  # the free uploads are requests, not charged calls
    assert int(total["credits"]) == report["summary"]["totalCredits"] == 3 * 30 + 2 * 15 + 4 * 10
    by_action = {r["action"]: int(r["credits"]) for r in rows[:-1]}
    assert by_action == {a: v["credits"] for a, v in report["summary"]["byEndpoint"].items()} | {
        "upload": 0
    }
    text = subprocess.run([sys.executable, "-m", "meterware.cli", "usage", "--key", key["id"]],
                          capture_output=True, text=True, env=env, timeout=60).stdout  # fmt: skip
    assert "calls per day" in text and text.rstrip().splitlines()[-1].startswith(
        today.replace(day=1).isoformat()
    )
