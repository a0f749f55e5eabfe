"""Operating a paid API from code, through its three faces — the Python `Admin`, the HTTP
`AdminApp` (the Starlette example under a real uvicorn, `METERWARE_ADMIN_TOKEN` set) and
the `meterware` command as a subprocess — each against SQLite and PostgreSQL.

One scenario runs through each face: accounts (create, get, list, set tier, names),
keys (create following the account or with their own tier, update, list by account,
rotate with grace, revoke), owner-side usage, and every kind of error (invalid value,
not found, conflict) with its one status.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from meterware import Admin, Conflict, InvalidValue, MeterwareError, NotFound
from meterware.keys import SecretHasher
from meterware.storage import Rollup, UsageBatch, storage_from_url
from meterware.storage.records import BalanceDraw
from meterware.views import account_json, iso, key_json
from tests.backends import PostgresBackend, require_postgres
from tests.servers import Uvicorn

PEPPER = "operator-test-pepper"
TOKEN = "admin-token-for-tests-0123456789"
KINDS = {InvalidValue: "invalid", NotFound: "not_found", Conflict: "conflict"}
HTTP_KINDS = {400: "invalid", 404: "not_found", 409: "conflict"}
EXIT_KINDS = {3: "invalid", 4: "not_found", 5: "conflict"}


class Place:
    """One store the faces share: its URL and the environment a server or the CLI runs
    with to use it."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
        self.env |= {"METERWARE_STORAGE": url, "METERWARE_PEPPER": PEPPER,
                     "METERWARE_ADMIN_TOKEN": TOKEN}  # fmt: skip
        self.tmp_path = tmp_path

    async def record(self, *rollups: Rollup) -> None:
        async with storage_from_url(self.url) as store:
            await store.record(UsageBatch(rollups=rollups))

    async def record_draws(self, account: str, *draws: tuple[str, str, str, int]) -> None:
        async with storage_from_url(self.url) as store:
            batch = [BalanceDraw(account, grant, action, day, n) for grant, action, day, n in draws]
            await store.record(UsageBatch(draws=batch))

    async def find(self, secret: str) -> Any:
        async with storage_from_url(self.url) as store:
            return await store.find_key(SecretHasher(pepper=PEPPER).hash(secret), time.time())


@pytest.fixture(
    params=[pytest.param("sqlite", marks=pytest.mark.sqlite),
            pytest.param("postgres", marks=pytest.mark.postgres)],
    scope="module",
)  # fmt: skip
def place(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Place]:
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite":
        yield Place(f"sqlite:///{tmp}/operator.db", tmp)
        return
    backend = PostgresBackend(require_postgres())
    yield Place(backend.url, tmp)
    asyncio.run(backend.cleanup())


@pytest.fixture(scope="module")
def server(place: Place) -> Iterator[Uvicorn]:
    """The Starlette example with the admin app at /admin, on the place's store."""
    uvicorn = Uvicorn("starlette_app", place.env, place.tmp_path, workers=1)
    with uvicorn.running():
        yield uvicorn


# -- the three faces -------------------------------------------------------------------


class Face:
    """The operations of the scenario, as one face offers them; keys and accounts come
    back in the JSON shape of `meterware.views`, failures as a kind of error."""

    name = ""

    async def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def error(self, op: str, *args: Any, **kwargs: Any) -> str:
        raise NotImplementedError


class PythonFace(Face):
    name = "python"

    def __init__(self, place: Place) -> None:
        self.place = place

    async def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        now = time.time()  # one instant for the whole operation, as the CLI has it
        async with Admin(self.place.url, pepper=PEPPER, clock=lambda: now) as admin:
            if op == "create_key":
                key, secret = await admin.create_key(**kwargs)
                return key_json(key, now), secret
            if op == "rotate_key":
                key, secret = await admin.rotate_key(*args, **kwargs)
                return key_json(key, now), secret
            if op == "usage":
                return (await admin.usage(**kwargs)).as_dict()
            if op == "grant_credits":
                grant, added = await admin.grant_credits(*args, **kwargs)
                balance = await admin.credits(grant.account_id)
                line = next(g for g in balance.grants if g.grant.grant_id == grant.grant_id)
                return {"grant": line.as_dict(), "added": added, "balance": balance.balance}
            if op == "credits":
                return (await admin.credits(*args)).as_dict()
            if op == "list_keys":
                return [key_json(k, now) for k in await admin.list_keys(*args)]
            found = await getattr(admin, op)(*args, **kwargs)
            return key_json(found, now) if op.endswith("_key") else account_json(found)

    async def error(self, op: str, *args: Any, **kwargs: Any) -> str:
        try:
            await self.call(op, *args, **kwargs)
        except MeterwareError as exc:
            return KINDS[type(exc)]
        raise AssertionError(f"{op} did not fail")


class HttpFace(Face):
    name = "http"

    def __init__(self, base: str) -> None:
        self.base = base + "/admin"

    def _request(self, op: str, *args: Any, **kwargs: Any) -> tuple[str, str, Any]:
        """(method, path, JSON body or query) of an operation."""
        if op == "create_account":
            body = {("id" if k == "account_id" else k): v for k, v in kwargs.items()}
            return "POST", "/accounts", body
        if op == "get_account":
            return "GET", f"/accounts/{args[0]}", None
        if op in ("update_account", "set_tier"):
            body = kwargs if op == "update_account" else {"tier": args[1]}
            return "PATCH", f"/accounts/{args[0]}", body
        if op == "create_key":
            body = {k: v for k, v in kwargs.items() if k != "expires_at"}
            return "POST", "/keys", body
        if op == "get_key":
            return "GET", f"/keys/{args[0]}", None
        if op == "update_key":
            return "PATCH", f"/keys/{args[0]}", kwargs
        if op == "list_keys":
            return "GET", "/keys", {"account": args[0]}
        if op == "revoke_key":
            return "POST", f"/keys/{args[0]}/revoke", None
        if op == "rotate_key":
            return "POST", f"/keys/{args[0]}/rotate", {"grace_seconds": kwargs.get("grace", 0)}
        if op == "grant_credits":
            body = {"amount": args[1], **kwargs}
            if "expires_at" in body:
                body["expires_at"] = iso(body["expires_at"])
            return "POST", f"/accounts/{args[0]}/credits", body
        if op == "credits":
            return "GET", f"/accounts/{args[0]}/credits", None
        if op == "usage":
            names = {"account_id": "account", "key_id": "key", "first_day": "from",
                     "last_day": "to", "by": "by"}  # fmt: skip
            return "GET", "/usage", {names[k]: v for k, v in kwargs.items()}
        raise AssertionError(op)

    def _send(self, op: str, *args: Any, **kwargs: Any) -> httpx.Response:
        method, path, data = self._request(op, *args, **kwargs)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if method == "GET":
            return httpx.get(self.base + path, params=data, headers=headers, timeout=10)
        return httpx.request(method, self.base + path, json=data, headers=headers, timeout=10)

    async def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        answer = self._send(op, *args, **kwargs)
        assert answer.status_code in (200, 201), answer.text
        assert answer.headers["cache-control"] == "no-store"
        data = answer.json()["data"]
        if op in ("create_key", "rotate_key"):
            return data["key"], data["secret"]
        if op == "list_keys":
            return data["keys"]
        if op in ("usage", "grant_credits", "credits"):
            return data
        return data["key"] if op.endswith("_key") else data["account"]

    async def error(self, op: str, *args: Any, **kwargs: Any) -> str:
        answer = self._send(op, *args, **kwargs)
        body = answer.json()
        assert body["success"] is False and body["error"]["message"], body
        return HTTP_KINDS[answer.status_code]


class CliFace(Face):
    name = "cli"

    def __init__(self, place: Place) -> None:
        self.place = place

    def _argv(self, op: str, *args: Any, **kwargs: Any) -> list[str]:
        def options(**given: Any) -> list[str]:
            out = []
            for name, value in given.items():
                flag = {"account_id": "--account", "stripe_customer_id": "--stripe-customer",
                        "first_day": "--from", "last_day": "--to", "key_id": "--key"}.get(
                    name, "--" + name.replace("_", "-"))  # fmt: skip
                out += [flag, "none" if value is None else str(value)]
            return out

        if op == "create_account":
            account = kwargs.pop("account_id", None)
            return ["accounts", "create", *(["--id", account] if account else []),
                    *options(**kwargs)]  # fmt: skip
        if op == "get_account":
            return ["accounts", "show", args[0]]
        if op == "set_tier":
            return ["accounts", "set-tier", args[0], args[1]]
        if op == "update_account":
            return ["accounts", "update", args[0], *options(**kwargs)]
        if op == "create_key":
            return ["keys", "create", *options(**kwargs)]
        if op == "get_key":
            return ["keys", "show", args[0]]
        if op == "update_key":
            return ["keys", "update", args[0], *options(**kwargs)]
        if op == "list_keys":
            return ["keys", "list", "--account", args[0]]
        if op == "revoke_key":
            return ["keys", "revoke", args[0]]
        if op == "rotate_key":
            return ["keys", "rotate", args[0], "--grace", str(kwargs.get("grace", 0))]
        if op == "usage":
            return ["usage", *options(**kwargs)]
        if op == "grant_credits":
            extra = ["--id", kwargs["grant_id"]] if "grant_id" in kwargs else []
            if "expires_at" in kwargs:
                extra += ["--expires-in", str((kwargs["expires_at"] - time.time()) / 86400)]
            return ["credits", "grant", args[0], str(args[1]), *extra]
        if op == "credits":
            return ["credits", "show", args[0]]
        raise AssertionError(op)

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meterware.cli", *argv, "--json"],
            capture_output=True, text=True, env=self.place.env, timeout=60,
        )  # fmt: skip

    async def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        done = self._run(self._argv(op, *args, **kwargs))
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        if op in ("create_key", "rotate_key"):
            secret = data.pop("key")
            data.pop("previous_secret_expires_at", None)
            return data, secret
        if op in ("get_key", "get_account"):
            data.pop("quota", None)
            data.pop("keys", None)
        return data

    async def error(self, op: str, *args: Any, **kwargs: Any) -> str:
        done = self._run(self._argv(op, *args, **kwargs))
        assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
        return EXIT_KINDS[done.returncode]


@pytest.fixture(params=["python", "http", "cli"])
def face(request: pytest.FixtureRequest, place: Place) -> Face:
    if request.param == "python":
        return PythonFace(place)
    if request.param == "cli":
        return CliFace(place)
    return HttpFace(request.getfixturevalue("server").base)


# -- the scenario ----------------------------------------------------------------------


@pytest.mark.slow
async def test_accounts_and_plans(face: Face) -> None:
    """An account is created on a plan with its names, read back, renamed and moved to
    another plan; its keys follow the plan unless they name their own."""
    tag = f"{face.name}{time.time_ns()}"
    account = await face.call(
        "create_account",
        account_id=f"acct_{tag}",
        tier="pro",
        name="Acme",
        external_id=f"ext_{tag}",
    )
    assert (account["id"], account["tier"], account["name"]) == (f"acct_{tag}", "pro", "Acme")
    follows, _ = await face.call("create_key", name="follows", account_id=account["id"])
    own, _ = await face.call("create_key", name="own", account_id=account["id"], tier="enterprise")
    assert (follows["tier"], follows["own_tier"]) == ("pro", None)
    assert (own["tier"], own["own_tier"]) == ("enterprise", "enterprise")

    moved = await face.call("set_tier", account["id"], "scale")
    assert moved["tier"] == "scale"
    renamed = await face.call("update_account", account["id"], name="Acme Inc",
                              stripe_customer_id=f"cus_{tag}")  # fmt: skip
    assert (renamed["name"], renamed["stripe_customer_id"]) == ("Acme Inc", f"cus_{tag}")
    shown = await face.call("get_account", account["id"])
    assert shown == {**renamed, "tier": "scale"}
    keys = {k["name"]: k["tier"] for k in await face.call("list_keys", account["id"])}
    assert keys == {"follows": "scale", "own": "enterprise"}


@pytest.mark.slow
async def test_a_key_from_creation_to_revocation(face: Face, place: Place) -> None:
    """A key is created (its account with it), updated (name, tier, limits, none for the
    tier's), rotated with a grace period (both secrets work) and revoked."""
    key, secret = await face.call("create_key", name="first", tier="pro")
    assert key["status"] == "active" and key["tier"] == "pro"
    assert (await place.find(secret)).id == key["id"]

    updated = await face.call("update_key", key["id"], name="renamed", per_minute=5,
                              monthly_limit=200, tier="scale")  # fmt: skip
    assert (updated["name"], updated["tier"], updated["own_tier"]) == ("renamed", "scale", "scale")
    assert updated["overrides"]["per_minute"] == 5
    cleared = await face.call("update_key", key["id"], per_minute=None, tier=None)
    assert cleared["overrides"]["per_minute"] is None
    assert cleared["overrides"]["monthly_limit"] == 200
    assert (cleared["tier"], cleared["own_tier"]) == ("pro", None)  # the account's plan again
    assert (await face.call("get_key", key["id"]))["name"] == "renamed"

    rotated, new_secret = await face.call("rotate_key", key["id"], grace=3600)
    assert rotated["id"] == key["id"] and new_secret != secret
    old, new = await place.find(secret), await place.find(new_secret)
    assert old.id == new.id == key["id"]
    assert old.expires_at == pytest.approx(time.time() + 3600, abs=30)

    revoked = await face.call("revoke_key", key["id"])
    assert revoked["status"] == "revoked"
    assert await face.call("revoke_key", key["id"]) == revoked  # revoking again: no change


@pytest.mark.slow
async def test_each_kind_of_error_has_one_status(face: Face) -> None:
    """Unknown tier, negative limit and bad id: invalid value; unknown account or key:
    not found; rotating a revoked key, a taken account id: conflict."""
    key, _ = await face.call("create_key", name="doomed")
    await face.call("revoke_key", key["id"])
    assert await face.error("create_key", name="x", tier="platinum") == "invalid"
    assert await face.error("update_key", key["id"], monthly_limit=-1) == "invalid"
    assert await face.error("get_key", "not a valid id!") == "invalid"
    assert await face.error("get_key", "key_0000000000000000") == "not_found"
    assert await face.error("get_account", "acct_nobody_here") == "not_found"
    assert await face.error("set_tier", "acct_nobody_here", "pro") == "not_found"
    assert await face.error("rotate_key", key["id"]) == "conflict"
    assert await face.error("rotate_key", key["id"], grace=400 * 86_400) == "invalid"
    assert await face.error("create_account", account_id=key["account"]) == "conflict"


@pytest.mark.slow
async def test_owner_side_usage(face: Face, place: Place) -> None:
    """Usage by day, action and key over a range longer than 90 days, of one account or
    one key, summed from the ledger exactly."""
    key_a, _ = await face.call("create_key", name="a")
    account = key_a["account"]
    key_b, _ = await face.call("create_key", name="b", account_id=account)
    await place.record(
        Rollup(account, key_a["id"], "search", "2026-01-03", 2, 20, requests=3),
        Rollup(account, key_a["id"], "image", "2026-05-20", 1, 30, requests=1),
        Rollup(account, key_b["id"], "search", "2026-05-20", 4, 40, requests=4),
        Rollup(account, key_b["id"], "search", "2026-07-01", 9, 90, requests=9),  # outside
    )
    span = {"first_day": "2026-01-01", "last_day": "2026-06-30"}
    by_day = await face.call("usage", account_id=account, by="day", **span)
    assert [(x["day"], x["calls"], x["credits"]) for x in by_day["lines"]] == [
        ("2026-01-03", 2, 20), ("2026-05-20", 5, 70)]  # fmt: skip
    assert by_day["total"] == {"requests": 8, "calls": 7, "credits": 90, "outcomes": {}}
    assert len(by_day["daily_calls"]) == 181
    by_action = await face.call("usage", account_id=account, by="action", **span)
    assert {x["action"]: x["credits"] for x in by_action["lines"]} == {"image": 30, "search": 60}
    by_key = await face.call("usage", account_id=account, by="key", **span)
    assert {x["key_id"]: x["calls"] for x in by_key["lines"]} == {key_a["id"]: 3, key_b["id"]: 4}
    one = await face.call("usage", key_id=key_b["id"], by="day", first_day="2026-05-01",
                          last_day="2026-12-31")  # fmt: skip
    assert one["total"] == {"requests": 13, "calls": 13, "credits": 130, "outcomes": {}}
    assert await face.error("usage", account_id=account, first_day="2026-05-01",
                            last_day="2026-04-01") == "invalid"  # fmt: skip


@pytest.mark.slow
async def test_prepaid_credits(face: Face, place: Place) -> None:
    """Credits granted (once per grant id, with or without expiry), shown with what each
    grant paid for and the movements that explain the balance."""
    key, _ = await face.call("create_key", name="buyer")
    account = key["account"]
    week = time.time() + 7 * 86400
    first = await face.call("grant_credits", account, 300, grant_id="order-1")
    again = await face.call("grant_credits", account, 300, grant_id="order-1")
    trial = await face.call("grant_credits", account, 50, grant_id="trial", expires_at=week)
    assert (first["added"], again["added"], trial["added"]) == (True, False, True)
    assert (first["balance"], trial["balance"]) == (300, 350)
    assert trial["grant"]["expires_at"] is not None
    today = time.strftime("%Y-%m-%d", time.gmtime())
    await place.record_draws(
        account, ("trial", "search", today, 20), ("order-1", "image", today, 5)
    )
    shown = await face.call("credits", account)
    assert shown["balance"] == 325
    assert [(g["grant_id"], g["used"], g["remaining"], g["state"]) for g in shown["grants"]] == [
        ("trial", 20, 30, "active"), ("order-1", 5, 295, "active")]  # fmt: skip
    assert sum(m["credits"] for m in shown["movements"]) == 325
    assert await face.error("grant_credits", account, 100, grant_id="order-1") == "conflict"
    assert await face.error("grant_credits", account, 0) == "invalid"
    assert await face.error("grant_credits", "acct_nobody_here", 10) == "not_found"


async def test_times_past_the_year_9999_are_refused() -> None:
    """An expiry or a grace period that no ISO 8601 time could show is an invalid value,
    not a key that breaks every listing of its account afterwards."""
    async with Admin("memory://") as admin:
        key, _ = await admin.create_key(name="k")
        with pytest.raises(InvalidValue, match="year 10000"):
            await admin.create_key(name="far", expires_at=1e300)
        with pytest.raises(InvalidValue, match="year 10000"):
            await admin.update_key(key.id, expires_at=float("inf"))
        with pytest.raises(InvalidValue, match="grace"):
            await admin.rotate_key(key.id, grace=1e308)
        with pytest.raises(InvalidValue, match="year 10000"):
            await admin.grant_credits(key.account_id, 10, expires_at=1e300)
        assert [k.id for k in await admin.list_keys(key.account_id)] == [key.id]
