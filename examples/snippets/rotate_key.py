"""A customer rolls a key: a new secret at once, the old one working through a grace
period (long enough to deploy the new one), then refused.

    python examples/snippets/rotate_key.py

The app runs in process (`serving.serve`) on a SQLite file in a temporary directory.
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


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


async def main() -> None:
    url = f"sqlite:///{tempfile.mkdtemp()}/meterware.db"
    app = Starlette(routes=[Route("/hello", hello)])
    app.add_middleware(MeterwareMiddleware, storage=url)
    async with Admin(url) as admin, serve(app) as client:

        async def status(secret: str) -> int:
            return (await client.get("/hello", headers={"X-API-Key": secret})).status_code

        key, old = await admin.create_key(name="Production Key", account_id="acct_acme")
        key, new = await admin.rotate_key(key.id, grace=2.0)  # a day or so in real life
        print(f"during the grace period: old {await status(old)}, new {await status(new)}")
        await asyncio.sleep(2.0)
        print(f"after it: old {await status(old)}, new {await status(new)}")


if __name__ == "__main__":
    asyncio.run(main())
