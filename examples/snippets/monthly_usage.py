"""A month's usage, for invoices and dashboards: `Admin.usage` over any range of UTC days,
grouped by day, action, key or account, written as CSV.

    python examples/snippets/monthly_usage.py [PATH.db]

To have a month to report on, the script first serves March 2026's calls in process, on a
clock it moves (`MeterwareMiddleware(clock=...)`), into a SQLite file (PATH.db if given,
else one in a temporary directory): three keys of two accounts, two metered routes, and
a burst past the per-minute limit.
"""

from __future__ import annotations

import asyncio
import csv
import sys
import tempfile
from datetime import datetime, timezone

from serving import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meterware import Admin, MeterwareMiddleware, cost


@cost(10, action="convert", label="Convert")
async def convert(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@cost(25, action="export", label="Export")
async def export(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


class MovingClock:
    """Unix time, moved by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now


async def make_a_month(url: str) -> None:
    clock = MovingClock(datetime(2026, 3, 1, 9, tzinfo=timezone.utc))
    secrets = []
    async with Admin(url, clock=clock) as admin:
        for account, name in (("acct_acme", "Production"), ("acct_acme", "Staging"),
                              ("acct_globex", "Production")):  # fmt: skip
            _, secret = await admin.create_key(name=name, account_id=account, tier="pro")
            secrets.append(secret)
    app = Starlette(routes=[Route("/convert", convert, methods=["POST"]),
                            Route("/export", export, methods=["POST"])])  # fmt: skip
    app.add_middleware(MeterwareMiddleware, storage=url, clock=clock)
    async with serve(app) as client:
        for day in range(31):
            for i, secret in enumerate(secrets):
                for call in range((day * 7 + i * 5) % 9):  # 0 to 8 calls a day
                    path = "/export" if call % 3 == 2 else "/convert"
                    await client.post(path, headers={"X-API-Key": secret})
                    clock.now += 5
            if day == 13:  # the staging key's runaway script: 40 calls in a second
                for _ in range(40):
                    await client.post("/convert", headers={"X-API-Key": secrets[1]})
            clock.now += 86_400 - 5 * 24
    # the server has stopped: every call is in the ledger


async def main() -> None:
    url = f"sqlite:///{sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp() + '/mw.db'}"
    await make_a_month(url)

    async with Admin(url) as admin:
        month = {"first_day": "2026-03-01", "last_day": "2026-03-31"}
        by_action = await admin.usage(**month, by="action")
        for line in by_action.lines:
            limited = line.outcomes.get("rate_limited", 0)
            print(f"{line.action:8} {line.calls} calls, {line.credits} credits, {limited} refused")
        busiest = max((await admin.usage(**month, by="day")).lines, key=lambda line: line.calls)
        print(f"busiest day: {busiest.day} ({busiest.calls} calls)")
        acme = await admin.usage(**month, account_id="acct_acme", by="key")
        print(f"acct_acme: {len(acme.lines)} keys, {acme.total.credits} credits")

        # One CSV row per account: what the invoices need.
        invoice = await admin.usage(**month, by="account")
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["account", "requests", "calls", "credits"])
        for line in invoice.lines:
            writer.writerow([line.account_id, line.requests, line.calls, line.credits])


if __name__ == "__main__":
    asyncio.run(main())
