"""`KeysApp`: end users manage their own account's keys, with a key.

Served behind `MeterwareMiddleware`, like `UsageApp` (the middleware authenticates the
caller, rate-limits the request per minute, and neither counts it toward the monthly
quota nor charges it); errors and answers in the middleware's envelope.

```python
app.mount("/api/v1/keys", KeysApp(max_keys=10))
```

| method | path             | what                                                      |
|--------|------------------|-----------------------------------------------------------|
| GET    | `/`              | the account's keys (never a secret)                       |
| POST   | `/`              | a new key: `{"name", "expires_in_days"?}`; its secret once |
| POST   | `/{id}/rotate`   | a new secret: `{"grace_seconds"?}` (old one works so long) |
| POST   | `/{id}/revoke`   | revoke a key now (the calling key too, if asked)          |
| DELETE | `/{id}`          | the same as revoke                                        |

Only `full_access` keys may manage keys (403 otherwise). A key of another account is a
404, answered exactly as an unknown id. An account has at most `max_keys` live keys
(409 past it), checked in the store's transaction: two creations at once cannot pass
it. New keys follow the account's plan.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Receive, Scope, Send

from meterware import jsonapi
from meterware.admin import Admin
from meterware.admin.keys import MAX_GRACE
from meterware.clock import DAY, MAX_DAYS
from meterware.errors import ConfigurationError, InvalidValue, NotFound
from meterware.jsonapi import JsonRoute, Request, unset
from meterware.keys import ApiKey, Caller
from meterware.responses import (
    UNAUTHORIZED,
    Refusal,
    challenges,
    route_path,
    send_refusal,
    serve_lifespan,
)
from meterware.runtime import SCOPE_KEY, Call
from meterware.views import iso, key_status

__all__ = ["KeysApp"]

FULL_ACCESS_ONLY = Refusal(403, "FORBIDDEN", "Only a full_access key can manage keys")


class KeysApp:
    """The self-serve keys API (see module doc).

    - `max_keys` - live keys an account may have. Defaults to 10.
    - `max_grace` - the longest rotation grace period, in seconds. Defaults to 7 days.
    """

    meterware_action = "keys"  # its action in metrics and the ledger
    meterware_unmetered = True  # behind the middleware: rate-limited, never counted

    def __init__(self, *, max_keys: int = 10, max_grace: float = 7 * DAY) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigurationError("max_keys must be an integer >= 1")
        if not 0 <= max_grace <= MAX_GRACE:
            raise ConfigurationError(f"max_grace must be 0 to {MAX_GRACE} seconds (366 days)")
        self.max_keys = max_keys
        self.max_grace = max_grace

    def __repr__(self) -> str:
        return f"KeysApp(max_keys={self.max_keys})"

    def openapi(self, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Its OpenAPI path items when mounted at `prefix` (secured by the API key
        schemes the middleware adds), and no schemes of its own."""
        paths = jsonapi.openapi_paths(ROUTES, prefix, tag="API keys")
        rotate = paths[prefix.rstrip("/") + "/{key_id}/rotate"]["post"]
        body = rotate["requestBody"]["content"]["application/json"]["schema"]["properties"]
        body["grace_seconds"] = {**body["grace_seconds"], "maximum": self.max_grace}
        forbidden = {"description": "Not a full_access key (`FORBIDDEN`)"}
        for item in paths.values():
            for operation in item.values():
                operation["responses"]["403"] = forbidden
        return paths, {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own
            return await serve_lifespan(receive, send)
        if scope["type"] != "http":
            return
        call = scope.get(SCOPE_KEY)
        if not isinstance(call, Call):  # reached without the middleware in front
            bearer = challenges(("x-api-key",), bearer=True)
            return await send_refusal(send, "wrapped", UNAUTHORIZED, 0.0, bearer)
        runtime = call.runtime
        now = runtime.clock()
        envelope = runtime.settings.envelope
        headers = call.headers or []
        if call.caller.permission != "full_access" or call.caller.key_id is None:
            return await send_refusal(send, envelope, FULL_ACCESS_ONLY, now, headers)
        path = route_path(scope) or "/"
        context = _Context(runtime.admin, call.caller, self)
        await jsonapi.serve(
            scope, receive, send, routes=ROUTES, path=path, envelope=envelope, now=now,
            context=context, headers=[*headers, (b"cache-control", b"no-store")],
        )  # fmt: skip


class _Context:
    def __init__(self, admin: Admin, caller: Caller, app: KeysApp) -> None:
        self.admin, self.caller, self.app = admin, caller, app

    async def own_key(self, key_id: str) -> ApiKey:
        """The key, if the caller's account owns it; else the unknown id's 404."""
        try:
            key = await self.admin.get_key(key_id)
        except (NotFound, InvalidValue):
            key = None
        if key is None or key.account_id != self.caller.account_id:
            raise NotFound("API key not found")
        return key


def _key(key: ApiKey, now: float, caller: Caller) -> dict[str, Any]:
    """A key as its owner sees it: no account internals, no secret."""
    return {
        "id": key.id,
        "name": key.name,
        "permission": key.permission,
        "website_id": key.website_id,
        "status": key_status(key, now),
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "last_used_at": iso(key.last_used_at),
        "current": key.id == caller.key_id,
    }


async def list_keys(r: Request) -> tuple[int, Any]:
    c: _Context = r.context
    keys = await c.admin.list_keys(c.caller.account_id)
    return 200, {"keys": [_key(k, r.now, c.caller) for k in keys], "max_keys": c.app.max_keys}


async def create_key(r: Request) -> tuple[int, Any]:
    c: _Context = r.context
    body = r.body.only(("name", "expires_in_days"))
    name = body.text("name", required=True)
    days = body.number("expires_in_days", low=0.001, high=MAX_DAYS)
    key, secret = await c.admin.create_key(
        name=name,
        account_id=c.caller.account_id,
        expires_at=None if unset(days) else r.now + days * DAY,
        live_limit=c.app.max_keys,
    )
    return 201, {"key": _key(key, r.now, c.caller), "secret": secret}


async def rotate_key(r: Request) -> tuple[int, Any]:
    c: _Context = r.context
    grace = r.body.only(("grace_seconds",)).number("grace_seconds")
    grace = 0.0 if unset(grace) else grace
    if grace > c.app.max_grace:
        raise InvalidValue(f"grace_seconds must be at most {c.app.max_grace:g}")
    key = await c.own_key(r.params["key_id"])
    key, secret = await c.admin.rotate_key(key.id, grace=grace)
    return 200, {
        "key": _key(key, r.now, c.caller),
        "secret": secret,
        "previous_secret_expires_at": iso(r.now + grace),
    }


async def revoke_key(r: Request) -> tuple[int, Any]:
    c: _Context = r.context
    key = await c.admin.revoke_key((await c.own_key(r.params["key_id"])).id)
    return 200, {"key": _key(key, max(r.now, key.revoked_at or 0.0), c.caller)}


_GRACE = {"grace_seconds": {"type": "number", "minimum": 0}}

ROUTES = (
    JsonRoute("GET", "/", list_keys, "The account's keys"),
    JsonRoute("POST", "/", create_key, "Create a key; its secret, shown once",
              body={"name": {"type": "string", "minLength": 1, "maxLength": 200,
                             "pattern": "\\S"},
                    "expires_in_days": {"type": "number", "minimum": 0.001,
                                        "maximum": MAX_DAYS}},
              required=("name",), status=201),
    JsonRoute("POST", "/{key_id}/rotate", rotate_key, "Give a key a new secret", body=_GRACE),
    JsonRoute("POST", "/{key_id}/revoke", revoke_key, "Revoke a key now"),
    JsonRoute("DELETE", "/{key_id}", revoke_key, "Revoke a key now"),
)  # fmt: skip
