"""The apps every benchmark drives, in process and under uvicorn.

Each app has one route, `GET /bench`, answering a 5-byte `PlainTextResponse`:

- `bare_app()`: Starlette alone, the baseline.
- `slowapi_app()`: the same with slowapi's documented decorator, keyed on `X-API-Key`,
  `1000000/minute`, its default in-memory storage and default options.
- `meterware_app(storage, ...)`: the same behind `MeterwareMiddleware`, with per-minute
  windows in the main store unless `rate_limit_storage` says otherwise.
  `metered_route=True` puts `@cost(5, action="bench")` on the route (the full pipeline:
  key, per-minute limit, monthly request quota, credits, write-behind ledger);
  `metered_route=False` leaves it off (no credits, no rollup).

The tiers: `bench`, with limits so high that nothing is refused (every timed part), and
`trips`, 1,000 requests a minute and 1,000,000 a month (the round-trip count of
bench/trips.py, whose load stays under both).

The zero-argument `http_*` factories are what `uvicorn --factory` (and gunicorn) load in
`bench/http.py`; they read their storage URLs from `BENCH_SQLITE_URL`, `BENCH_PG_URL`,
`BENCH_REDIS_URL`.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meterware import MeterwareMiddleware, Storage, cost
from meterware.runtime import Runtime

PATH = "/bench"
TIER = "bench"
TRIPS_TIER = "trips"
TIERS = {
    TIER: {"monthly_requests": 10**12, "per_minute": 10**9},
    TRIPS_TIER: {"monthly_requests": 1_000_000, "per_minute": 1000},
}
PEPPER = "meterware-bench-pepper"
CREDITS = 5


async def plain(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


@cost(CREDITS, action="bench", label="Bench call")
async def metered(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def bare_app() -> Starlette:
    return Starlette(routes=[Route(PATH, plain)])


def api_key_of(request: Request) -> str:
    return request.headers.get("x-api-key", "")


def slowapi_app() -> Starlette:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded

    limiter = Limiter(key_func=api_key_of, storage_uri="memory://")

    @limiter.limit("1000000/minute")
    async def limited(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route(PATH, limited)])
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    return app


def meterware_app(
    storage: str | Storage,
    *,
    rate_limit_storage: str | None = None,
    metered_route: bool = True,
    **options: Any,
) -> Starlette:
    """A Starlette app behind meterware; `options` go to `MeterwareMiddleware`."""
    endpoint = metered if metered_route else plain
    return Starlette(
        routes=[Route(PATH, endpoint)],
        middleware=[
            Middleware(
                MeterwareMiddleware,
                storage=storage,
                rate_limit_storage=rate_limit_storage,
                tiers=TIERS,
                pepper=PEPPER,
                **options,
            )
        ],
    )


def runtime_of(app: Any) -> Runtime:
    """The runtime of the MeterwareMiddleware inside an app that has served its lifespan."""
    node = getattr(app, "middleware_stack", None)
    while node is not None and not isinstance(node, MeterwareMiddleware):
        node = getattr(node, "app", None)
    if node is None:
        raise LookupError("no MeterwareMiddleware in this app (has it started?)")
    return node.runtime


# -- uvicorn --factory and gunicorn entry points (bench/http.py) -----------------------


def http_bare() -> Starlette:
    return bare_app()


def http_slowapi() -> Starlette:
    return slowapi_app()


def http_meterware_sqlite() -> Starlette:
    return meterware_app(os.environ["BENCH_SQLITE_URL"])


def http_meterware_postgres_alone() -> Starlette:
    return meterware_app(os.environ["BENCH_PG_URL"])


def http_meterware_postgres_redis() -> Starlette:
    return meterware_app(
        os.environ["BENCH_PG_URL"], rate_limit_storage=os.environ["BENCH_REDIS_URL"]
    )
