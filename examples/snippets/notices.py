"""Notices through the middleware's `on_notice` hook: a key created, then a key crossing
50, 80 and 100% of its monthly quota; each told once, in order.

    python examples/snippets/notices.py

The app runs in process (`serving.serve`) on a SQLite file in a temporary directory.
Notices are stored, then handed to the hook about once a second.
"""

from __future__ import annotations

import asyncio
import tempfile

from serving import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meterware import Admin, MeterwareMiddleware
from meterware.storage.records import Notice

TIERS = {"free": {"monthly_requests": 10, "per_minute": 60}}
told: list[str] = []


async def on_notice(notice: Notice) -> None:
    """Called once per notice, in the order they were stored; raise to get it again."""
    told.append(notice.type)
    print(f"{notice.type:16} {notice.key_id}  {dict(notice.data)}")


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


async def main() -> None:
    url = f"sqlite:///{tempfile.mkdtemp()}/meterware.db"
    async with Admin(url, tiers=TIERS) as admin:
        _, secret = await admin.create_key(name="Production Key", account_id="acct_acme")
    app = Starlette(routes=[Route("/hello", hello)])
    app.add_middleware(MeterwareMiddleware, storage=url, tiers=TIERS, on_notice=on_notice)
    async with serve(app, headers={"X-API-Key": secret}) as client:
        for _ in range(11):  # the 11th gets 429 QUOTA_EXCEEDED
            await client.get("/hello")
        for _ in range(100):  # wait for the hook (at most 10 s)
            if len(told) == 4:
                break
            await asyncio.sleep(0.1)


if __name__ == "__main__":
    asyncio.run(main())
