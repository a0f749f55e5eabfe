"""Usage export from Python: the middleware writes the usage outbox (`outbox=True`), an
`Exporter` sends it to a sink (here a JSON Lines file), acknowledging each event once the
sink has it. A second run finds nothing new; a replay from the start (another reader)
writes nothing twice, as every sink deduplicates by event id.

    python examples/snippets/export_outbox.py

`meterware export --sink jsonl --url FILE` does the same from the command line. The app
runs in process (`serving.serve`) on a SQLite file in a temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from serving import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from meterware import Admin, MeterwareMiddleware, cost, storage_from_url
from meterware.export import Exporter, JsonLinesSink


@cost(30, action="image_to_html", label="Image → HTML")
async def image_to_html(request: Request) -> JSONResponse:
    return JSONResponse({"html": "<main></main>"})


@cost(15, action="code_export", label="Export Code")
async def code_export(request: Request) -> JSONResponse:
    return JSONResponse({"code": "export default function Page() {}"})


@cost(10, action="figma_export", label="Figma Export")
async def figma_export(request: Request) -> JSONResponse:
    return JSONResponse({"figma": "https://figma.example/file/demo"})


async def main() -> None:
    folder = Path(tempfile.mkdtemp())
    url, file = f"sqlite:///{folder}/meterware.db", folder / "usage.jsonl"
    async with Admin(url) as admin:
        await admin.create_account(account_id="acct_acme", stripe_customer_id="cus_NffrFeUfNV2Hib")
        _, secret = await admin.create_key(name="Production Key", account_id="acct_acme")

    app = Starlette(routes=[Route("/image-to-html", image_to_html, methods=["POST"]),
                            Route("/code-export", code_export, methods=["POST"]),
                            Route("/figma-export", figma_export, methods=["POST"])])  # fmt: skip
    app.add_middleware(MeterwareMiddleware, storage=url, outbox=True)
    async with serve(app, headers={"X-API-Key": secret}) as client:
        for path in ("/image-to-html", "/code-export", "/figma-export"):
            await client.post(path)
    # Stopped: every call is in the ledger, and in the outbox one event per key, action
    # and UTC day of each flush (here 3: one call for each of three actions).

    async with storage_from_url(url) as store:
        for reader in ("export:jsonl", "export:jsonl", "replay"):
            async with JsonLinesSink(file) as sink:
                summary = await Exporter(store, sink, name=reader).run(follow=False)
            print(f"{reader}: sent {summary.sent}, cursor at {summary.position}")

    events = [json.loads(line) for line in file.read_text().splitlines()]
    print(f"{file.name}: {len(events)} events, {sum(e['credits'] for e in events)} credits")
    print({k: events[0][k] for k in ("id", "account_id", "action", "calls", "credits")})


if __name__ == "__main__":
    asyncio.run(main())
