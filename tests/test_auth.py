"""Authentication: key extraction, the same 401 for every bad key, revocation within the
bound, site-scoped keys, exempt paths, and the two error envelopes."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from meterware import (
    Account,
    Admin,
    ApiKey,
    Caller,
    ConfigurationError,
    MeterwareMiddleware,
    SecretHasher,
)
from meterware.storage.sqlite import SQLiteStorage
from tests.utils import ROUTES, bearer, new_key, runtime_of, serve, starlette_app

pytestmark = pytest.mark.clock_at("2026-02-07T12:00:00")


async def refused_after_the_next_poll(app, client, secret: str) -> None:
    """The key still works from the cache until the runtime polls for key changes (every
    key_refresh seconds); after one poll it gets 401."""
    assert (await client.get("/hello", headers=bearer(secret))).status_code == 200
    await runtime_of(app).tick()
    assert (await client.get("/hello", headers=bearer(secret))).status_code == 401


async def test_key_from_x_api_key_and_bearer(sqlite_store, clock):
    """A key is accepted from X-API-Key and from Authorization: Bearer."""
    key, secret = await new_key(sqlite_store, clock)
    async with serve(starlette_app(sqlite_store, clock)) as client:
        for headers in (
            {"X-API-Key": secret},
            bearer(secret),
            {"authorization": f"bearer {secret}"},
        ):
            response = await client.get("/whoami", headers=headers)
            assert response.status_code == 200, headers
            assert response.json() == {"key": key.id, "account": "acct_1", "tier": "free"}


async def test_key_in_query_string_is_ignored(sqlite_store, clock):
    """A key in the query string is not read: 401."""
    _, secret = await new_key(sqlite_store, clock)
    async with serve(starlette_app(sqlite_store, clock)) as client:
        response = await client.get(f"/whoami?api_key={secret}&key={secret}")
    assert response.status_code == 401


async def test_every_bad_key_gets_the_same_401(sqlite_store, clock):
    """Missing, malformed, unknown, revoked and expired keys get byte-identical 401 bodies."""
    revoked_key, revoked = await new_key(sqlite_store, clock, name="revoked")
    _, expired = await new_key(sqlite_store, clock, name="expired", expires_at=clock() + 10)
    await sqlite_store.update_key(revoked_key.id, revoked_at=clock() - 1)
    clock.advance(11)
    unknown = SecretHasher().new_secret()
    cases = {
        "missing": {},
        "empty bearer": {"Authorization": "Bearer "},
        "basic auth": {"Authorization": "Basic dXNlcjpwYXNz"},
        "malformed": {"X-API-Key": "not-a-key"},
        "unknown": {"X-API-Key": unknown},
        "revoked": {"X-API-Key": revoked},
        "expired": {"X-API-Key": expired},
    }
    async with serve(starlette_app(sqlite_store, clock)) as client:
        answers = {name: await client.get("/hello", headers=h) for name, h in cases.items()}
    bodies = {a.content for a in answers.values()}
    assert {a.status_code for a in answers.values()} == {401}
    assert len(bodies) == 1
    assert json.loads(bodies.pop()) == {
        "success": False,
        "error": {
            "message": "Invalid or missing API key",
            "code": "UNAUTHORIZED",
            "timestamp": "2026-02-07T12:00:11.000Z",
        },
    }
    assert {tuple(sorted(a.headers.multi_items())) for a in answers.values()} == {
        (
            ("content-length", "127"),
            ("content-type", "application/json"),
            ("www-authenticate", 'ApiKey realm="api", header="X-API-Key"'),
            ("www-authenticate", 'Bearer realm="api"'),
        )
    }


async def test_flat_envelope(sqlite_store, clock):
    """envelope='flat' answers 401 with exactly {"error": "<message>"}."""
    async with serve(starlette_app(sqlite_store, clock, envelope="flat")) as client:
        response = await client.get("/hello")
    assert response.status_code == 401
    assert response.content == b'{"error":"Invalid or missing API key"}'
    assert response.headers["content-type"] == "application/json"


async def test_revoked_key_stops_within_the_refresh_bound(sqlite_store, clock):
    """A key revoked while the app runs is refused after the next key poll (every
    key_refresh seconds: the bound on how long a revoked key keeps working)."""
    key, secret = await new_key(sqlite_store, clock)
    app = starlette_app(sqlite_store, clock, key_refresh=3600)
    async with serve(app) as client:
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 200
        # revoke through a second connection, as the CLI in another process would
        async with SQLiteStorage(sqlite_store.url) as other:
            await other.update_key(key.id, revoked_at=clock())
        await refused_after_the_next_poll(app, client, secret)


async def test_cached_key_costs_no_storage_read(sqlite_store, clock):
    """Once resolved, a key is served from the cache: find_key runs once for many calls."""
    _, secret = await new_key(sqlite_store, clock, tier="enterprise")
    calls = 0
    original = sqlite_store.find_key

    async def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return await original(*args, **kwargs)

    sqlite_store.find_key = counting
    async with serve(starlette_app(sqlite_store, clock)) as client:
        for _ in range(20):
            assert (await client.get("/hello", headers=bearer(secret))).status_code == 200
    assert calls == 1


async def test_expiry_takes_effect_without_waiting_for_a_poll(sqlite_store, clock):
    """A key whose expiry passes is refused on the next request."""
    _, secret = await new_key(sqlite_store, clock, expires_at=clock() + 60)
    async with serve(starlette_app(sqlite_store, clock)) as client:
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 200
        clock.advance(60)
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 401


async def test_rotation_grace_period(sqlite_store, clock):
    """After rotate with a grace period both secrets work; after it, only the new one."""
    key, old = await new_key(sqlite_store, clock)
    _, new = await Admin(sqlite_store, clock=clock).rotate_key(key.id, grace=30)
    assert new is not None and new != old
    async with serve(starlette_app(sqlite_store, clock)) as client:
        assert (await client.get("/hello", headers=bearer(old))).status_code == 200
        assert (await client.get("/hello", headers=bearer(new))).status_code == 200
        clock.advance(31)
        assert (await client.get("/hello", headers=bearer(old))).status_code == 401
        assert (await client.get("/hello", headers=bearer(new))).status_code == 200


async def test_site_access_key_on_another_site_is_forbidden(sqlite_store, clock):
    """A site_access key gets 403 on another website's route and 200 on its own."""
    _, secret = await new_key(sqlite_store, clock, permission="site_access", website_id="site_1")
    _, full = await new_key(sqlite_store, clock, name="full")
    async with serve(starlette_app(sqlite_store, clock)) as client:
        own = await client.get("/sites/site_1/stats", headers=bearer(secret))
        other = await client.get("/sites/site_2/stats", headers=bearer(secret))
        anywhere = await client.get("/sites/site_2/stats", headers=bearer(full))
        unscoped = await client.get("/hello", headers=bearer(secret))
    assert own.status_code == 200
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "FORBIDDEN"
    assert "x-ratelimit-limit" in other.headers
    assert anywhere.status_code == 200
    assert unscoped.status_code == 200


async def test_site_param_name_is_configurable(sqlite_store, clock):
    """website_param names the path parameter a site_access key is checked against."""
    _, secret = await new_key(sqlite_store, clock, permission="site_access", website_id="s1")
    routes = [Route("/p/{project}", ROUTES[0].endpoint)]
    app = starlette_app(sqlite_store, clock, routes=routes, website_param="project")
    async with serve(app) as client:
        assert (await client.get("/p/s1", headers=bearer(secret))).status_code == 200
        assert (await client.get("/p/s2", headers=bearer(secret))).status_code == 403


async def test_site_check_inside_mounted_sub_app(sqlite_store, clock):
    """The site check sees path parameters of routes inside a Mount."""
    _, secret = await new_key(sqlite_store, clock, permission="site_access", website_id="s1")
    inner = Starlette(routes=[Route("/{website_id}/stats", ROUTES[0].endpoint)])
    app = starlette_app(sqlite_store, clock, routes=[Mount("/sites", app=inner)])
    async with serve(app) as client:
        assert (await client.get("/sites/s1/stats", headers=bearer(secret))).status_code == 200
        assert (await client.get("/sites/s2/stats", headers=bearer(secret))).status_code == 403


async def test_exempt_paths_are_not_authenticated(sqlite_store, clock):
    """Exempt paths pass without a key and are not counted."""
    app = starlette_app(sqlite_store, clock)
    async with serve(app) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/hello")).status_code == 401
    app = starlette_app(sqlite_store, clock, exempt_paths=["/hello"])
    async with serve(app) as client:
        assert (await client.get("/hello")).status_code == 200
        assert (await client.get("/health")).status_code == 401


async def test_custom_key_headers_and_no_bearer(sqlite_store, clock):
    """key_headers and bearer=False change where the key is read."""
    _, secret = await new_key(sqlite_store, clock)
    app = starlette_app(sqlite_store, clock, key_headers=["X-Token"], bearer=False)
    async with serve(app) as client:
        assert (await client.get("/hello", headers={"X-Token": secret})).status_code == 200
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 401
        assert (await client.get("/hello", headers={"X-API-Key": secret})).status_code == 401


async def test_host_resolver(clock):
    """A host resolver replaces the store's keys; its callers reach the handler."""

    async def resolve(secret: str) -> Caller | None:
        if secret == "let-me-in":
            return Caller(account_id="acct_9", key_id=None, name="Acme", tier="scale")
        return None

    app = starlette_app("memory://", clock, resolver=resolve)
    async with serve(app) as client:
        ok = await client.get("/whoami", headers={"X-API-Key": "let-me-in"})
        no = await client.get("/whoami", headers={"X-API-Key": "nope"})
    assert ok.json() == {"key": None, "account": "acct_9", "tier": "scale"}
    assert no.status_code == 401


async def test_pepper_changes_the_stored_hash(tmp_path, clock):
    """With a pepper, a key created under another pepper does not resolve."""
    async with SQLiteStorage(f"sqlite:///{tmp_path}/p.db") as store:
        admin = Admin(store, pepper="one", clock=clock)
        _, secret = await admin.create_key(name="k", account_id="a")
        async with serve(starlette_app(store, clock, pepper="one")) as client:
            assert (await client.get("/hello", headers=bearer(secret))).status_code == 200
        async with serve(starlette_app(store, clock, pepper="two")) as client:
            assert (await client.get("/hello", headers=bearer(secret))).status_code == 401


async def test_other_scopes_pass_through(clock):
    """Scopes that are neither HTTP nor WebSocket (a server's own extensions) reach the
    app untouched; a WebSocket does not (see test_websockets.py)."""
    seen = []

    async def inner(scope, receive, send):
        seen.append(scope["type"])

    middleware = MeterwareMiddleware(inner, storage="memory://", clock=clock)
    await middleware({"type": "webtransport", "path": "/wt", "headers": []}, None, None)
    assert seen == ["webtransport"]


async def test_works_without_lifespan(sqlite_store, clock):
    """Without lifespan events the middleware starts on the first request."""
    _, secret = await new_key(sqlite_store, clock)
    app = starlette_app(sqlite_store, clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 200
    await runtime_of(app).stop()


async def test_request_state_carries_the_caller(sqlite_store, clock):
    """Handlers read the caller from request.state.meterware."""
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse

    async def handler(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.state.meterware.name)

    _, secret = await new_key(sqlite_store, clock, name="My Key")
    app = starlette_app(sqlite_store, clock, routes=[Route("/me", handler)])
    async with serve(app) as client:
        assert (await client.get("/me", headers=bearer(secret))).text == "My Key"


async def test_startup_fails_on_unknown_stored_tier(sqlite_store, clock):
    """A stored key whose tier the table does not know fails startup with a clear message."""
    gold = {"gold": {"monthly_requests": 1, "per_minute": 1}}
    await new_key(sqlite_store, clock, tier="gold", tiers=gold)
    app = starlette_app(sqlite_store, clock)
    with pytest.raises(ConfigurationError, match="gold"):
        async with serve(app):
            pass


async def test_secret_never_in_sqlite_files(tmp_path, clock):
    """After real traffic, the secret appears in no file of the SQLite store (WAL included)."""
    store = SQLiteStorage(f"sqlite:///{tmp_path}/s.db")
    await store.open()
    _, secret = await new_key(store, clock)
    async with serve(starlette_app(store, clock)) as client:
        for _ in range(3):
            await client.get("/hello", headers=bearer(secret))
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    await store.close()
    assert secret.encode() not in raw
    assert secret[3:].encode() not in raw
    assert SecretHasher().hash(secret).encode() in raw


async def test_revocation_seen_when_the_store_started_empty(tmp_path, clock):
    """On a store with no key changes at startup, a key created and then revoked while the
    app runs still stops working within the refresh bound."""
    url = f"sqlite:///{tmp_path}/empty.db"
    async with SQLiteStorage(url) as store:
        await store.open()
    app = starlette_app(url, clock, key_refresh=3600)
    async with serve(app) as client, SQLiteStorage(url) as other:
        key, secret = await new_key(other, clock)
        assert (await client.get("/hello", headers=bearer(secret))).status_code == 200
        await other.update_key(key.id, revoked_at=clock())
        await refused_after_the_next_poll(app, client, secret)


async def test_401_challenges_name_the_configured_schemes(sqlite_store, clock):
    """A 401 carries WWW-Authenticate (RFC 9110 §11.6.1) for each way a key may come."""
    app = starlette_app(sqlite_store, clock, key_headers=["x-token"], bearer=False)
    async with serve(app) as client:
        refused = await client.get("/hello")
    assert refused.status_code == 401
    assert refused.headers.get_list("www-authenticate") == ['ApiKey realm="api", header="X-Token"']


async def test_two_different_keys_in_one_request_are_refused(sqlite_store, clock):
    """X-API-Key and a bearer token that disagree, or a key header twice with two values,
    get the 401, even when one of them is valid; the same key twice is fine."""
    _, good = await new_key(sqlite_store, clock)
    _, other = await new_key(sqlite_store, clock, name="other")
    wrong = SecretHasher().new_secret()
    async with serve(starlette_app(sqlite_store, clock)) as client:
        mixed = await client.get("/hello", headers={"X-API-Key": good, **bearer(wrong)})
        mixed_valid = await client.get("/hello", headers={"X-API-Key": good, **bearer(other)})
        repeated = await client.get("/hello", headers=[("X-API-Key", good), ("X-API-Key", wrong)])
        same = await client.get("/hello", headers={"X-API-Key": good, **bearer(good)})
    assert [a.status_code for a in (mixed, mixed_valid, repeated)] == [401, 401, 401]
    assert same.status_code == 200


async def test_bad_checksum_costs_no_lookup_and_unknown_keys_one(sqlite_store, clock):
    """A secret whose checksum is wrong is refused without a store read; an unknown
    secret of the right shape is read once, then remembered."""
    _, good = await new_key(sqlite_store, clock)
    forged = good[:-6] + ("A" if good[-6] != "A" else "B") + good[-5:]
    unknown = SecretHasher().new_secret()
    app = starlette_app(sqlite_store, clock)
    async with serve(app) as client:
        keys = runtime_of(app).keys
        assert keys is not None
        codes = [(await client.get("/hello", headers=bearer(s))).status_code
                 for s in [forged] * 5 + [unknown] * 5 + [good] * 3]  # fmt: skip
        lookups = keys.lookups
    assert codes == [401] * 10 + [200] * 3
    assert lookups == 2  # the unknown secret once, the good one once


async def test_secrets_issued_before_checksums_keep_working(sqlite_store, clock):
    """A key whose secret has the older shape (32 URL-safe characters, no checksum)
    resolves as before."""
    legacy = "mw_" + "Ab-_" * 8
    await sqlite_store.ensure_account(Account("acct_1", clock()))
    key = ApiKey(id="key_legacy", account_id="acct_1", name="old", created_at=clock())
    await sqlite_store.create_key(key, SecretHasher().hash(legacy))
    async with serve(starlette_app(sqlite_store, clock)) as client:
        answer = await client.get("/whoami", headers=bearer(legacy))
    assert answer.status_code == 200 and answer.json()["key"] == "key_legacy"


async def test_a_full_key_cache_drops_the_least_recently_used_key_only(sqlite_store, clock):
    """With room for 3 keys, a 4th pushes out the one used longest ago, and unknown
    secrets never push out known ones."""
    from meterware.keycache import KeyCache

    secrets = [(await new_key(sqlite_store, clock, name=f"k{i}"))[1] for i in range(4)]
    cache = KeyCache(sqlite_store, SecretHasher(), max_entries=3, max_unknown=2)
    for secret in secrets[:3]:
        assert await cache.resolve(secret, clock()) is not None
    assert await cache.resolve(secrets[0], clock()) is not None  # k0 is now the most recent
    for _ in range(5):
        assert await cache.resolve(SecretHasher().new_secret(), clock()) is None
    assert cache.lookups == 3 + 5
    assert await cache.resolve(secrets[3], clock()) is not None  # pushes out k1
    before = cache.lookups
    for secret in (secrets[0], secrets[2], secrets[3]):
        assert await cache.resolve(secret, clock()) is not None
    assert cache.lookups == before  # still cached
    assert await cache.resolve(secrets[1], clock()) is not None
    assert cache.lookups == before + 1  # k1 was the one dropped
