"""A Starlette app with WebSocket endpoints behind meterware, for the WebSocket tests under
a real uvicorn (`uvicorn --app-dir tests ws_app:app`). Storage comes from
`METERWARE_STORAGE`."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from meterware import MeterwareMiddleware, cost, get_caller


@cost(7, action="stream", label="Stream")
async def stream(websocket: WebSocket) -> None:
    """Echo each message back, prefixed by the caller's key id."""
    await websocket.accept()
    caller = get_caller(websocket)
    async for text in websocket.iter_text():
        await websocket.send_text(f"{caller.key_id}: {text}")


async def refuse(websocket: WebSocket) -> None:
    """Close before accepting (the app's own refusal)."""
    await websocket.close(code=4000)


async def open_socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("anyone")
    await websocket.close()


async def health(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[
        WebSocketRoute("/stream", stream),
        WebSocketRoute("/refuse", refuse),
        WebSocketRoute("/public", open_socket),
        Route("/health", health),
    ],
    middleware=[
        Middleware(MeterwareMiddleware, exempt_paths=["/public", "/health"], flush_interval=0.05)
    ],
)
