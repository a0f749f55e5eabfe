"""Receiving meterware's webhooks: verify each request's Standard Webhooks signature with
the `standardwebhooks` package, and act once per `webhook-id` (a retry carries the same
id). Serve `app` with uvicorn; the secret is the endpoint's `METERWARE_WEBHOOK_SECRET`.

    python examples/snippets/webhook_receiver.py     # checks itself with signed requests

Needs `pip install standardwebhooks starlette httpx` (httpx for the self-check only).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import time
from datetime import datetime, timezone

from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# The endpoint's secret; without one, a random one (enough for the self-check).
SECRET = os.environ.get("METERWARE_WEBHOOK_SECRET") or (
    "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
)
verifier = Webhook(SECRET)
done: set[str] = set()  # webhook-ids acted on; keep them in your database


async def receive(request: Request) -> Response:
    body = await request.body()
    try:
        event = verifier.verify(body, dict(request.headers))  # signature and timestamp
    except WebhookVerificationError:
        return Response(status_code=400)
    webhook_id = request.headers["webhook-id"]
    if webhook_id not in done:  # a retry of a notice already handled is acknowledged only
        done.add(webhook_id)
        if event["type"] == "quota.threshold":
            data = event["data"]
            print(f"{data['account_id']} is at {data['percent']}% of its monthly quota")
    return Response(status_code=204)


app = Starlette(routes=[Route("/webhooks/meterware", receive, methods=["POST"])])


async def check() -> None:
    """Send the app what meterware sends: a signed notice, its retry, and a forgery."""
    import httpx

    notice_id = "quota.80:key_5f0c3a9e1b7d42a8:2026-11-01"
    body = json.dumps({
        "type": "quota.threshold", "timestamp": "2026-11-29T20:49:20.425Z",
        "data": {"percent": 80, "used": 8000, "limit": 10000, "account_id": "acct_acme",
                 "key_id": "key_5f0c3a9e1b7d42a8", "id": notice_id},
    })  # fmt: skip
    now = int(time.time())
    signature = verifier.sign(notice_id, datetime.fromtimestamp(now, timezone.utc), body)
    headers = {"webhook-id": notice_id, "webhook-timestamp": str(now),
               "webhook-signature": signature, "content-type": "application/json"}  # fmt: skip
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
        for what, payload in (("notice", body), ("retry", body), ("forged", body + " ")):
            answer = await client.post("/webhooks/meterware", content=payload, headers=headers)
            print(f"{what}: {answer.status_code}")


if __name__ == "__main__":
    asyncio.run(check())
