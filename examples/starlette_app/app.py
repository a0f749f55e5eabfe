"""Reference B's API on Starlette: websites and their stats, the quota status at
`GET /api/external/v1/usage`, and self-serve keys at `/api/external/v1/keys`.

    uvicorn --app-dir examples/starlette_app app:app

Storage comes from `METERWARE_STORAGE` (default `sqlite:///meterware.db`), the per-minute
limits from `METERWARE_RATE_LIMIT_STORAGE` (default: the main store). Create keys with the
`meterware keys create` command. With `METERWARE_ADMIN_TOKEN` set, the admin API is
served at `/admin`; with `METERWARE_METRICS` set, Prometheus metrics at `/metrics`. The
usage page is at `/portal`, for links made with `meterware portal-link`
(`METERWARE_PORTAL_SECRET`).
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from meterware import (
    AdminApp,
    KeysApp,
    MeterwareMiddleware,
    MetricsApp,
    PortalApp,
    error_handlers,
    get_caller,
    metrics_from_env,
)

WEBSITES = {
    "site_1": {"id": "site_1", "domain": "example.com"},
    "site_2": {"id": "site_2", "domain": "example.org"},
}


async def websites(request: Request) -> JSONResponse:
    caller = get_caller(request)
    visible = [w for w in WEBSITES.values() if caller.website_id in (None, w["id"])]
    return JSONResponse({"success": True, "data": visible})


async def website_stats(request: Request) -> JSONResponse:
    website_id = request.path_params["website_id"]
    if website_id not in WEBSITES:
        raise HTTPException(404, "Website not found")
    return JSONResponse({"success": True, "data": {"website_id": website_id, "visitors": 1234}})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


routes: list[BaseRoute] = [
    Route("/api/external/v1/websites", websites),
    Route("/api/external/v1/websites/{website_id}/stats", website_stats),
    Mount("/api/external/v1/keys", KeysApp()),  # end users manage their own keys
    Mount("/portal", PortalApp()),  # the usage page, by signed link
    Route("/health", health),
]
if os.environ.get("METERWARE_ADMIN_TOKEN"):
    routes.append(Mount("/admin", AdminApp()))  # the operator's API, behind the admin token
metrics = metrics_from_env()  # Prometheus metrics when METERWARE_METRICS is set
if metrics is not None:
    routes.append(Route("/metrics", MetricsApp(metrics)))  # scraped without a key

app = Starlette(
    routes=routes,
    middleware=[
        Middleware(
            MeterwareMiddleware,
            usage_path="/api/external/v1/usage",
            usage_format="quota",
            metrics=metrics,
        )
    ],
    # Every error this API sends is in reference B's envelope, with its timestamp:
    # meterware's refusals, and the app's own (unknown paths and methods, crashes).
    exception_handlers=error_handlers("wrapped"),
)
