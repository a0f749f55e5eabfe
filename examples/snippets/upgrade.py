"""A plan upgrade reaching a running server: a key at its free plan's monthly quota
gets 429; its account moves to `pro`; within `key_refresh` the same key is admitted.

    python examples/snippets/upgrade.py

The app runs in process (`serving.serve`) on a SQLite file in a temporary directory;
the upgrade is made by another `Admin` on the same file, as a billing webhook would.
"""

from __future__ import annotations

import asyncio
import tempfile
import time

from serving import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meterware import Admin, MeterwareMiddleware

TIERS = {
    "free": {"monthly_requests": 3, "per_minute": 60},
    "pro": {"monthly_requests": 10_000, "per_minute": 600},
}


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world"})


async def upgrade(url: str, account_id: str) -> None:
    """What a billing webhook does when the customer pays for `pro`."""
    async with Admin(url, tiers=TIERS) as admin:
        await admin.set_tier(account_id, "pro")


async def main() -> None:
    url = f"sqlite:///{tempfile.mkdtemp()}/meterware.db"
    async with Admin(url, tiers=TIERS) as admin:
        account = await admin.create_account(name="Acme Inc.", tier="free")
        _, secret = await admin.create_key(name="Default key", account_id=account.id)

    app = Starlette(routes=[Route("/hello", hello)])
    app.add_middleware(MeterwareMiddleware, storage=url, tiers=TIERS, key_refresh=1.0)
    async with serve(app, headers={"X-API-Key": secret}) as client:
        print("free plan:", [(await client.get("/hello")).status_code for _ in range(4)])
        await upgrade(url, account.id)
        upgraded = time.monotonic()
        for _ in range(100):  # ask every 50 ms: the upgrade arrives within key_refresh
            if (await client.get("/hello")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        print(f"pro plan: admitted {time.monotonic() - upgraded:.1f} s after the upgrade")
        print("limits now:", (await client.get("/hello")).headers["ratelimit-policy"])


if __name__ == "__main__":
    asyncio.run(main())
