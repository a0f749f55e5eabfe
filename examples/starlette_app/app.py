"""Reference B's API on Starlette: websites and their stats, and the quota status at
`GET /api/external/v1/usage`.

    uvicorn --app-dir examples/starlette_app app:app

Storage comes from `METERWARE_STORAGE` (default `sqlite:///meterware.db`), the per-minute
limits from `METERWARE_RATE_LIMIT_STORAGE` (default: in process). Create keys with the
`meterware keys create` command.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meterware import MeterwareMiddleware, error_handlers, get_caller

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


app = Starlette(
    routes=[
        Route("/api/external/v1/websites", websites),
        Route("/api/external/v1/websites/{website_id}/stats", website_stats),
        Route("/health", health),
    ],
    middleware=[
        Middleware(MeterwareMiddleware, usage_path="/api/external/v1/usage", usage_format="quota")
    ],
    # Every error this API sends is in reference B's envelope, with its timestamp:
    # meterware's refusals, and the app's own (unknown paths and methods, crashes).
    exception_handlers=error_handlers("wrapped"),
)
