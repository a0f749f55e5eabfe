"""Helpers shared by the middleware tests: a movable clock, tiny apps, a client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from meterware import Admin, MeterwareMiddleware, Storage, cost, get_caller
from meterware.keys import ApiKey
from meterware.runtime import Runtime


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, when: str | float = "2026-04-12T14:30:00") -> None:
        self.now = when if isinstance(when, float) else at(when)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, when: str) -> None:
        self.now = at(when)


def at(iso: str) -> float:
    """The timestamp of a naive ISO date-time read as UTC."""
    return datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp()


async def new_key(
    store: Storage, clock: FakeClock, *, tiers: Any = None, **fields: Any
) -> tuple[ApiKey, str]:
    """Create a key in `store` (account `acct_1` unless given) and return it with its secret;
    `tiers` is the table its tier is checked against (the default one unless given)."""
    fields.setdefault("name", "Production Key")
    fields.setdefault("account_id", "acct_1")
    return await Admin(store, clock=clock, tiers=tiers).create_key(**fields)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


@cost(30, action="image_to_html", label="Image → HTML")
async def image(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def whoami(request: Request) -> JSONResponse:
    caller = get_caller(request)
    return JSONResponse({"key": caller.key_id, "account": caller.account_id, "tier": caller.tier})


async def fail(request: Request) -> PlainTextResponse:
    raise RuntimeError("handler failed")


async def status(request: Request) -> PlainTextResponse:
    return PlainTextResponse("status", status_code=int(request.path_params["code"]))


async def site(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.path_params["website_id"])


ROUTES = [
    Route("/hello", hello),
    Route("/image", image, methods=["POST"]),
    Route("/whoami", whoami),
    Route("/fail", fail),
    Route("/status/{code:int}", status),
    Route("/sites/{website_id}/stats", site),
    Route("/health", hello),
]


def starlette_app(
    store: Storage, clock: FakeClock, routes: Any = None, **options: Any
) -> Starlette:
    app = Starlette(routes=ROUTES if routes is None else routes)
    app.add_middleware(MeterwareMiddleware, storage=store, clock=clock, **options)
    app.middleware_stack = app.build_middleware_stack()  # options are checked now
    return app


def runtime_of(app: Any) -> Runtime:
    """The runtime of the MeterwareMiddleware inside a built Starlette/FastAPI app: the
    one way tests reach meterware's internals (its ledger, quota, key cache)."""
    node = app.middleware_stack
    while node is not None and not isinstance(node, MeterwareMiddleware):
        node = getattr(node, "app", None)
    assert node is not None, "the app has not handled a request yet"
    return node.runtime


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and give an httpx client talking to it in process."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}
