"""WebSockets behind the key: refused before they are accepted, counted and charged once
accepted. Under a real uvicorn with a real WebSocket client (the `websockets` package),
and in process for a server without the ASGI denial-response extension."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from meterware import Admin, MeterwareMiddleware, storage_from_url
from tests.servers import Uvicorn
from tests.test_scale_out import cli

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path):
    """tests/ws_app.py under uvicorn (1 worker) on a SQLite file; its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
    env["METERWARE_STORAGE"] = f"sqlite:///{tmp_path}/ws.db"
    uvicorn = Uvicorn("ws_app", env, tmp_path, workers=1, app_dir="tests", target="ws_app:app")
    with uvicorn.running():
        yield uvicorn, env


def websocket_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    """A WebSocket scope from a server that offers no extensions."""
    return {
        "type": "websocket", "path": path, "root_path": "", "headers": headers,
        "query_string": b"", "scheme": "ws", "server": ("t", 80), "extensions": {},
    }  # fmt: skip


def ws_url(server: Uvicorn, path: str) -> str:
    return server.base.replace("http://", "ws://") + path


async def refused(server: Uvicorn, path: str, headers: dict[str, str]) -> tuple[int, dict]:
    """Open a WebSocket that must be refused: the HTTP status and JSON body it got."""
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(ws_url(server, path), additional_headers=headers):
            pass
    response = info.value.response
    return response.status_code, json.loads(response.body)


def test_a_websocket_needs_a_key_and_is_metered(server):
    """No key, a bad key: 401 before the handshake; a good key: accepted, with the
    rate-limit headers, counted once and charged its @cost once; over the per-minute
    limit: 429; an exempt path needs no key."""
    uvicorn, env = server
    made = cli("keys", "create", "--name", "ws", "--per-minute", "2", env=env)
    key = {"X-API-Key": made["key"]}

    async def scenario() -> dict:
        out: dict = {}
        out["missing"] = await refused(uvicorn, "/stream", {})
        out["bad"] = await refused(uvicorn, "/stream", {"X-API-Key": "mw_nope"})
        async with websockets.connect(ws_url(uvicorn, "/stream"), additional_headers=key) as ws:
            out["accept_headers"] = dict(ws.response.headers)
            await ws.send("hello")
            out["echo"] = await ws.recv()
            await ws.send("again")
            out["echo2"] = await ws.recv()
        async with websockets.connect(ws_url(uvicorn, "/public")) as ws:
            out["public"] = await ws.recv()
        with pytest.raises(InvalidStatus) as info:  # the app's own refusal: a 403
            async with websockets.connect(ws_url(uvicorn, "/refuse"), additional_headers=key):
                pass
        out["app_refusal"] = info.value.response.status_code
        out["limited"] = await refused(uvicorn, "/stream", key)
        return out

    out = asyncio.run(scenario())
    print(f"\nWebSockets under uvicorn: {out}")
    unauthorized = {"success": False, "error": {"message": "Invalid or missing API key",
                                                 "code": "UNAUTHORIZED"}}  # fmt: skip
    for case in ("missing", "bad"):
        status, body = out[case]
        assert status == 401
        body["error"].pop("timestamp")
        assert body == unauthorized
    assert out["echo"] == f"{made['id']}: hello" and out["echo2"] == f"{made['id']}: again"
    assert out["accept_headers"]["x-ratelimit-limit"] == "2"
    assert out["accept_headers"]["x-ratelimit-remaining"] == "1"
    assert out["public"] == "anyone"
    assert out["app_refusal"] == 403
    status, body = out["limited"]
    assert (status, body["error"]["code"]) == (429, "RATE_LIMITED")

    async def ledger() -> tuple[int, int, int]:
        async with storage_from_url(env["METERWARE_STORAGE"]) as store:
            totals = await store.key_totals(made["id"])
        return totals.requests, totals.calls, totals.credits

    for _ in range(100):  # the ledger is written every 0.05 s
        counted = asyncio.run(ledger())
        if counted[0] == 2:
            break
    # two admitted connections (stream, refuse); one accepted and charged 7 credits
    assert counted == (2, 1, 7)


async def test_refused_with_a_close_when_the_server_offers_no_denial_response(sqlite_store, clock):
    """Without the denial-response extension, a refused WebSocket is closed with code
    1008 before it is accepted, and the app never runs."""
    ran = []

    async def app(scope, receive, send):
        ran.append(scope["type"])

    middleware = MeterwareMiddleware(app, storage=sqlite_store, clock=clock)
    sent: list[dict] = []
    messages = [{"type": "websocket.connect"}]

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    scope = websocket_scope("/stream", [])
    await middleware(scope, receive, send)
    await middleware.runtime.stop()
    assert ran == []
    assert sent == [
        {"type": "websocket.close", "code": 1008, "reason": "Invalid or missing API key"}
    ]
    assert messages == []  # the connect message was read first, as the protocol wants


async def test_a_valid_key_opens_the_websocket_in_process(sqlite_store, clock):
    """In process: a key admits the connection; the accept carries the headers."""
    _, secret = await Admin(sqlite_store, clock=clock).create_key(name="ws", account_id="a")
    accepted = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        accepted.append(scope["state"]["meterware"].name)

    middleware = MeterwareMiddleware(app, storage=sqlite_store, clock=clock)
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "websocket.connect"}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"x-api-key", secret.encode())]
    scope = websocket_scope("/s", headers)
    await middleware(scope, receive, send)
    await middleware.runtime.stop()
    assert accepted == ["ws"]
    assert sent[0]["type"] == "websocket.accept"
    assert (b"x-ratelimit-limit", b"10") in sent[0]["headers"]
