"""Prepaid credits: a plan with 50 credits a month, a 40-credit trial that expires in 10
days and a 100-credit pack that never does. Calls of 30 credits spend the month's
allowance first, then the grants, soonest expiry first; the 7th call gets 402.

    python examples/snippets/prepaid.py

The app runs in process (`serving.serve`) on a SQLite file in a temporary directory.
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

from meterware import Admin, MeterwareMiddleware, cost

TIERS = {"starter": {"monthly_requests": None, "per_minute": 60, "monthly_credits": 50}}
DAY = 86_400


@cost(30, action="render", label="Render")
async def render(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


async def main() -> None:
    url = f"sqlite:///{tempfile.mkdtemp()}/meterware.db"
    async with Admin(url, tiers=TIERS) as admin:
        account = await admin.create_account(account_id="acct_acme", tier="starter")
        _, secret = await admin.create_key(name="Production Key", account_id=account.id)
        # Granting an id again adds nothing: a retried purchase webhook pays once.
        for _ in range(2):
            await admin.grant_credits(account.id, 100, grant_id="order_8812")
        await admin.grant_credits(
            account.id, 40, grant_id="trial", expires_at=time.time() + 10 * DAY
        )

        app = Starlette(routes=[Route("/render", render, methods=["POST"])])
        app.add_middleware(MeterwareMiddleware, storage=url, tiers=TIERS)
        async with serve(app, headers={"X-API-Key": secret}) as client:
            statuses = [(await client.post("/render")).status_code for _ in range(7)]
        print("7 calls of 30 credits:", statuses)

        balance = await admin.credits(account.id)
        print(f"balance: {balance.balance}")
        for grant in balance.grants:
            print(f"  {grant.grant.grant_id}: {grant.used} used, {grant.remaining} left")
        for m in balance.movements:
            print(f"  {m.day} {m.kind:5} {m.grant_id:10} {m.action or '-':6} {m.credits:+}")


if __name__ == "__main__":
    asyncio.run(main())
