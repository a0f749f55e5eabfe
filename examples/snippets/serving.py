"""What the snippets share: an ASGI app served in process, as a server would run it.

`serve(app)` sends the app its lifespan startup (meterware opens its store and starts
its background work), yields an httpx client that calls the app directly, and sends the
shutdown (meterware writes its pending usage and returns unused quota) on the way out.
A real server (uvicorn, gunicorn) does the same; the snippets need no port. Needs httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx


@contextlib.asynccontextmanager
async def serve(app: Any, **client_options: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app started, with a client for it; stopped (gracefully) on exit."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    running = asyncio.create_task(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(started.get("message", "the app did not start"))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.test", **client_options
        ) as client:
            yield client
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await running
