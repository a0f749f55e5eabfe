"""`AdminApp`: the operator's HTTP API, over `Admin`.

A host mounts it where it chooses; it is never mounted by default:

```python
app.mount("/admin", AdminApp())  # token from METERWARE_ADMIN_TOKEN
```

- Every request needs `Authorization: Bearer <admin token>` (the `token` argument, else
  `METERWARE_ADMIN_TOKEN`), compared in constant time: 401 when missing or wrong, 503
  when no token is configured (the app then answers nothing else).
- Behind `MeterwareMiddleware` it is exempt from API keys and metering, and uses the
  middleware's store, tiers, pepper and envelope; mounted in an app without the
  middleware (or given `storage`), it opens `storage` (default `METERWARE_STORAGE`) for
  each request.
- JSON in and out; each operation of `Admin` has an endpoint (see `ROUTES`, and the
  FastAPI schema where it is mounted in a FastAPI app). Bad input is a 400 with a
  message, an unknown id a 404, a clash with the stored state a 409. Only key creation
  and rotation return a secret.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from starlette.types import Receive, Scope, Send

from meterware import config, jsonapi
from meterware.admin import GROUPINGS, Admin
from meterware.admin.keys import MAX_GRACE
from meterware.clock import Clock, system_clock
from meterware.errors import InvalidValue
from meterware.jsonapi import JsonRoute, Request, given, unset
from meterware.responses import Envelope, Refusal, route_path, send_refusal, serve_lifespan
from meterware.runtime import RUNTIME_KEY, Runtime
from meterware.storage import Storage
from meterware.tiers import MAX_COUNT, TierTable
from meterware.views import account_json, iso, key_json

__all__ = ["AdminApp"]

CHALLENGE = (b"www-authenticate", b'Bearer realm="meterware-admin"')
NO_TOKEN = Refusal(503, "ADMIN_DISABLED", "No admin token is configured (METERWARE_ADMIN_TOKEN)")
BAD_TOKEN = Refusal(401, "UNAUTHORIZED", "Invalid or missing admin token")

ACCOUNT_FIELDS = ("id", "tier", "name", "external_id", "stripe_customer_id")
KEY_FIELDS = (
    "name", "account_id", "tier", "permission", "website_id", "expires_at",
    "per_minute", "monthly_limit", "monthly_credits", "billing_anchor_day",
)  # fmt: skip
KEY_CHANGES = ("name", "tier", "per_minute", "monthly_limit", "monthly_credits", "expires_at")


class AdminApp:
    """The admin HTTP API (see module doc).

    - `token` - the admin bearer token. Defaults to `METERWARE_ADMIN_TOKEN`.
    - `storage`, `tiers`, `pepper`, `key_prefix` - used when no middleware is in front
      (behind one, its own are used). Default as for `Admin`.
    - `envelope` - `"flat"` or `"wrapped"`. Defaults to the middleware's, else `wrapped`.
    - `clock` - returns Unix time, when no middleware is in front.
    """

    meterware_action = "admin"  # its action in metrics and the ledger
    meterware_exempt = True  # authenticates its own requests: the middleware lets them by

    def __init__(
        self,
        *,
        token: str | None = None,
        storage: str | Storage | None = None,
        tiers: TierTable | Mapping[str, Mapping[str, int | None]] | None = None,
        pepper: str | bytes | None = None,
        key_prefix: str = "mw_",
        envelope: Envelope | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.token = token if token is not None else config.env("ADMIN_TOKEN")
        self._token = (self.token or "").encode()
        self._storage, self._tiers, self._pepper = storage, tiers, pepper
        self._key_prefix, self._envelope, self._clock = key_prefix, envelope, clock

    def __repr__(self) -> str:
        return f"AdminApp(token={'set' if self.token else 'unset'})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own
            return await serve_lifespan(receive, send)
        if scope["type"] != "http":
            return  # (no WebSocket here: an unaccepted connection is refused)
        runtime = scope.get(RUNTIME_KEY)
        if isinstance(runtime, Runtime) and self._storage is None:
            envelope = self._envelope or runtime.settings.envelope
            return await self._serve(scope, receive, send, runtime.admin, envelope)
        # No middleware in front: this app's own store, open for the request only (a
        # mounted app gets no lifespan to close it at shutdown; admin calls are rare).
        async with Admin(
            self._storage, pepper=self._pepper, key_prefix=self._key_prefix,
            tiers=self._tiers, clock=self._clock,
        ) as admin:  # fmt: skip
            await self._serve(scope, receive, send, admin, self._envelope or "wrapped")

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, admin: Admin, envelope: Envelope
    ) -> None:
        now = admin.clock()
        if not self._token:
            return await send_refusal(send, envelope, NO_TOKEN, now)
        if not self._authorized(scope):
            return await send_refusal(send, envelope, BAD_TOKEN, now, [CHALLENGE])
        await jsonapi.serve(
            scope, receive, send, routes=ROUTES, path=route_path(scope) or "/",
            envelope=envelope, now=now, context=admin,
            headers=[(b"cache-control", b"no-store")],
        )  # fmt: skip

    def openapi(self, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Its OpenAPI path items when mounted at `prefix`, and its security scheme."""
        paths = jsonapi.openapi_paths(
            ROUTES, prefix, tag="meterware admin", security=[{"MeterwareAdmin": []}]
        )
        unauthorized = {"description": "Missing or wrong admin token"}
        for item in paths.values():
            for operation in item.values():
                operation["responses"]["401"] = unauthorized
        scheme = {"type": "http", "scheme": "bearer", "description": "The admin token."}
        return paths, {"MeterwareAdmin": scheme}

    def _authorized(self, scope: Scope) -> bool:
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = token.strip()
        return hmac.compare_digest(presented, self._token)


# -- the endpoints ---------------------------------------------------------------------


async def list_accounts(r: Request) -> tuple[int, Any]:
    return 200, {"accounts": [account_json(a) for a in await r.context.list_accounts()]}


async def create_account(r: Request) -> tuple[int, Any]:
    body = r.body.only(ACCOUNT_FIELDS)
    fields = given(
        account_id=body.text("id"), tier=body.text("tier"), name=body.text("name", nullable=True),
        external_id=body.text("external_id", nullable=True),
        stripe_customer_id=body.text("stripe_customer_id", nullable=True),
    )  # fmt: skip
    return 201, {"account": account_json(await r.context.create_account(**fields))}


async def get_account(r: Request) -> tuple[int, Any]:
    admin: Admin = r.context
    account = await admin.get_account(r.params["account_id"])
    keys = await admin.list_keys(account.id)
    return 200, {"account": account_json(account), "keys": [key_json(k, r.now) for k in keys]}


async def update_account(r: Request) -> tuple[int, Any]:
    body = r.body.only(ACCOUNT_FIELDS[1:])
    fields = given(
        tier=body.text("tier"), name=body.text("name", nullable=True),
        external_id=body.text("external_id", nullable=True),
        stripe_customer_id=body.text("stripe_customer_id", nullable=True),
    )  # fmt: skip
    if not fields:
        raise InvalidValue(f"nothing to change: give one of {', '.join(ACCOUNT_FIELDS[1:])}")
    account = await r.context.update_account(r.params["account_id"], **fields)
    return 200, {"account": account_json(account)}


async def list_keys(r: Request) -> tuple[int, Any]:
    account = r.params.get("account_id") or r.query.get("account")
    keys = await r.context.list_keys(account)
    return 200, {"keys": [key_json(k, r.now) for k in keys]}


async def create_key(r: Request) -> tuple[int, Any]:
    body = r.body.only(KEY_FIELDS)
    fields = given(
        name=body.text("name", required=True), account_id=body.text("account_id"),
        tier=body.text("tier", nullable=True), permission=body.text("permission"),
        website_id=body.text("website_id", nullable=True), expires_at=body.time("expires_at"),
        per_minute=body.count("per_minute"), monthly_limit=body.count("monthly_limit"),
        monthly_credits=body.count("monthly_credits"),
        billing_anchor_day=body.count("billing_anchor_day"),
    )  # fmt: skip
    key, secret = await r.context.create_key(**fields)
    return 201, {"key": key_json(key, r.now), "secret": secret}


async def get_key(r: Request) -> tuple[int, Any]:
    admin: Admin = r.context
    key = await admin.get_key(r.params["key_id"])
    quota = (await admin.key_status(key.id)).as_dict(lambda ts: iso(ts) or "")
    return 200, {"key": key_json(key, r.now), "quota": quota}


async def update_key(r: Request) -> tuple[int, Any]:
    body = r.body.only(KEY_CHANGES)
    fields = given(
        name=body.text("name"), tier=body.text("tier", nullable=True),
        per_minute=body.count("per_minute"), monthly_limit=body.count("monthly_limit"),
        monthly_credits=body.count("monthly_credits"), expires_at=body.time("expires_at"),
    )  # fmt: skip
    if not fields:
        raise InvalidValue(f"nothing to change: give one of {', '.join(KEY_CHANGES)}")
    key = await r.context.update_key(r.params["key_id"], **fields)
    return 200, {"key": key_json(key, r.now)}


async def revoke_key(r: Request) -> tuple[int, Any]:
    key = await r.context.revoke_key(r.params["key_id"])
    return 200, {"key": key_json(key, max(r.now, key.revoked_at or 0.0))}


async def rotate_key(r: Request) -> tuple[int, Any]:
    grace = r.body.only(("grace_seconds",)).number("grace_seconds")
    grace = 0.0 if unset(grace) else grace
    key, secret = await r.context.rotate_key(r.params["key_id"], grace=grace)
    old_until = iso(r.now + grace)
    return 200, {
        "key": key_json(key, r.now),
        "secret": secret,
        "previous_secret_expires_at": old_until,
    }


async def grant_credits(r: Request) -> tuple[int, Any]:
    body = r.body.only(("amount", "expires_at", "grant_id"))
    amount = body.count("amount", nullable=False)
    if unset(amount):
        raise InvalidValue("amount is required")
    expires_at, grant_id = body.time("expires_at"), body.text("grant_id")
    grant, added = await r.context.grant_credits(
        r.params["account_id"], amount, expires_at=None if unset(expires_at) else expires_at,
        grant_id=None if unset(grant_id) else grant_id,
    )  # fmt: skip
    balance = await r.context.credits(grant.account_id)
    granted = next(g for g in balance.grants if g.grant.grant_id == grant.grant_id)
    data = {"grant": granted.as_dict(), "added": added, "balance": balance.balance}
    return (201 if added else 200), data


async def credits(r: Request) -> tuple[int, Any]:
    return 200, (await r.context.credits(r.params["account_id"])).as_dict()


async def portal_link(r: Request) -> tuple[int, Any]:
    body = r.body.only(("base_url", "expires_in_minutes"))
    base_url = body.text("base_url", required=True)
    minutes = body.number("expires_in_minutes", low=0.1)
    admin: Admin = r.context
    account = await admin.get_account(r.params["account_id"])
    url, expires_at = admin.portal_link(
        account.id, base_url, expires_in=900.0 if unset(minutes) else minutes * 60
    )
    return 201, {"url": url, "expires_at": iso(expires_at)}


async def usage(r: Request) -> tuple[int, Any]:
    query = r.query
    unknown = set(query) - {"account", "key", "from", "to", "by"}
    if unknown:
        raise InvalidValue(f"unknown parameter(s): {', '.join(sorted(unknown))}")
    report = await r.context.usage(
        account_id=query.get("account"), key_id=query.get("key"),
        first_day=query.get("from"), last_day=query.get("to"), by=query.get("by", "day"),
    )  # fmt: skip
    return 200, report.as_dict()


_S = {"type": "string"}
_NAME = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "\\S"}  # not blank
_S_NULL = {"type": ["string", "null"]}
_ID = {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"}
_ID_NULL = {**_ID, "type": ["string", "null"]}
_DAY = {"type": "string", "format": "date"}
_COUNT = {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_COUNT}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_ACCOUNT = {
    "tier": _S, "name": {**_NAME, "type": ["string", "null"]}, "external_id": _ID_NULL,
    "stripe_customer_id": _ID_NULL,
}  # fmt: skip
_LIMITS = {"per_minute": _COUNT, "monthly_limit": _COUNT, "monthly_credits": _COUNT}

ROUTES = (
    JsonRoute("GET", "/accounts", list_accounts, "List accounts"),
    JsonRoute("POST", "/accounts", create_account, "Create an account",
              body={"id": _ID, **_ACCOUNT}, status=201),
    JsonRoute("GET", "/accounts/{account_id}", get_account, "An account and its keys"),
    JsonRoute("PATCH", "/accounts/{account_id}", update_account, "Change an account",
              body=_ACCOUNT),
    JsonRoute("GET", "/accounts/{account_id}/keys", list_keys, "An account's keys"),
    JsonRoute("GET", "/accounts/{account_id}/credits", credits,
              "An account's prepaid balance, grants and movements"),
    JsonRoute("POST", "/accounts/{account_id}/credits", grant_credits,
              "Grant prepaid credits (idempotent by grant_id)",
              body={"amount": {"type": "integer", "minimum": 1, "maximum": MAX_COUNT},
                    "expires_at": _TIME,
                    "grant_id": _ID},
              required=("amount",), status=201, also=(200,)),
    JsonRoute("POST", "/accounts/{account_id}/portal-link", portal_link,
              "A signed, short-lived link to the account's usage page",
              body={"base_url": {"type": "string", "pattern": "^https?://"},
                    "expires_in_minutes": {"type": "number", "minimum": 0.1, "maximum": 1440}},
              required=("base_url",), status=201),
    JsonRoute("GET", "/keys", list_keys, "List keys", query={"account": _ID}),
    JsonRoute("POST", "/keys", create_key, "Create a key; its secret, shown once",
              body={"name": _NAME, "account_id": _ID, "tier": _S_NULL,
                    "permission": {"enum": ["full_access", "site_access"]},
                    "website_id": _ID_NULL, "expires_at": _TIME, **_LIMITS,
                    "billing_anchor_day": {"type": ["integer", "null"], "minimum": 1,
                                           "maximum": 31}},
              required=("name",), status=201),
    JsonRoute("GET", "/keys/{key_id}", get_key, "A key and its current quota"),
    JsonRoute("PATCH", "/keys/{key_id}", update_key, "Change a key's name, tier, limits or expiry",
              body={"name": _NAME, "tier": _S_NULL, **_LIMITS, "expires_at": _TIME}),
    JsonRoute("POST", "/keys/{key_id}/revoke", revoke_key, "Revoke a key now"),
    JsonRoute("POST", "/keys/{key_id}/rotate", rotate_key, "Give a key a new secret",
              body={"grace_seconds": {"type": "number", "minimum": 0, "maximum": MAX_GRACE}}),
    JsonRoute("GET", "/usage", usage, "Usage by day, action, key or account over any range",
              query={"account": _ID, "key": _ID, "from": _DAY, "to": _DAY,
                     "by": {"enum": list(GROUPINGS)}}),
)  # fmt: skip
