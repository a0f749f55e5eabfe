"""A local webhook receiver, as a careful consumer of Standard Webhooks writes one.

`WebhookReceiver(secret)` serves `POST /<any path>` with Starlette under uvicorn in a
thread, on 127.0.0.1 and a port it keeps across `stop()` and `start()`. Each request:

1. is verified with `standardwebhooks.Webhook(secret).verify(body, headers)` (signature
   and timestamp): a failure is answered 400 and counted in `bad_signatures`;
2. is recorded in `arrivals` (its `webhook-id`, every verified request, repeats and
   abandoned ones included);
3. waits `delay` seconds (the request is *held*: `held`); if the sender hung up
   meanwhile (killed), it is *abandoned*: not processed, counted in `abandoned` (nobody
   could get the answer: as a consumer whose handler runs in a transaction that the
   lost connection rolls back). `in_flight` counts the requests between their arrival
   and their answer, `max_in_flight` the most at once;
4. may fail before processing (`fail_next(n, status)`, `fail_rate(p)`), or after it
   (`after=True`: processed, then answered with the failure, a lost answer);
5. is processed: `deliveries` gets its `webhook-id` (repeats included) and `payloads`
   its parsed body; `on_delivery(webhook_id)` is called if set (in the server's thread,
   before the answer); answered 200.

`distinct()` and `duplicates()` count over `deliveries`; `arrival_duplicates()` over
`arrivals`. Every counter is read under `lock`.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.servers import Served


class WebhookReceiver:
    """See the module doc."""

    def __init__(self, secret: str, *, delay: float = 0.0) -> None:
        self.webhook = Webhook(secret)
        self.delay = delay
        self.lock = threading.Lock()
        self.posts = 0
        self.bad_signatures = 0
        self.abandoned = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.held = 0
        self.on_delivery: Callable[[str], None] | None = None
        self.arrivals: list[str] = []
        self.deliveries: list[str] = []
        self.payloads: dict[str, Any] = {}
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self._failures: list[tuple[int, bool, str | None]] = []
        self._rate: tuple[float, random.Random, int, bool] | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["POST"])])
        self.served = Served(self.app)

    # -- serving -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{self.served.url}/hooks"

    def start(self) -> None:
        self.served.start()

    def stop(self) -> None:
        """Stop serving: the port refuses connections until `start()`."""
        self.served.stop()

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------------

    def fail_next(
        self, n: int, status: int = 503, *, after: bool = False, retry_after: str | None = None
    ) -> None:
        """Answer the next `n` verified POSTs with `status` (and a `retry-after`); with
        `after`, once they are processed (a lost answer)."""
        with self.lock:
            self._failures.extend([(status, after, retry_after)] * n)

    def fail_rate(self, p: float, seed: int = 0, status: int = 503, *, after: bool = False) -> None:
        """Answer each verified POST with `status` with probability `p` (seeded)."""
        with self.lock:
            self._rate = (p, random.Random(seed), status, after) if p > 0 else None

    def heal(self) -> None:
        """No more faults and no delay."""
        with self.lock:
            self._failures.clear()
            self._rate = None
            self.delay = 0.0

    def _draw(self) -> tuple[int, bool, str | None] | None:
        if self._failures:
            return self._failures.pop(0)
        if self._rate is not None:
            p, draw, status, after = self._rate
            if draw.random() < p:
                return status, after, None
        return None

    # -- counts --------------------------------------------------------------------------

    def distinct(self) -> int:
        with self.lock:
            return len(set(self.deliveries))

    def duplicates(self) -> int:
        """Processed deliveries beyond the first of each id."""
        with self.lock:
            return len(self.deliveries) - len(set(self.deliveries))

    def arrival_duplicates(self) -> int:
        """Verified arrivals beyond the first of each id (abandoned ones included)."""
        with self.lock:
            return len(self.arrivals) - len(set(self.arrivals))

    def repeated(self) -> dict[str, int]:
        """The ids processed more than once, and how many times."""
        with self.lock:
            return {i: n for i, n in Counter(self.deliveries).items() if n > 1}

    # -- the endpoint --------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        try:
            event = self.webhook.verify(body, headers)
        except WebhookVerificationError as exc:
            with self.lock:
                self.posts += 1
                self.bad_signatures += 1
            return JSONResponse({"error": str(exc)}, status_code=400)
        msg_id = headers["webhook-id"]
        with self.lock:
            self.posts += 1
            self.arrivals.append(msg_id)
            self.headers.append(headers)
            self.paths.append(request.url.path)
            failure = self._draw()
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            delay = self.delay
        try:
            if delay:
                with self.lock:
                    self.held += 1
                try:
                    await asyncio.sleep(delay)
                finally:
                    with self.lock:
                        self.held -= 1
                if await request.is_disconnected():
                    with self.lock:
                        self.abandoned += 1
                    return Response(status_code=499)
            if failure is not None and not failure[1]:
                return self._failure(failure)
            with self.lock:
                self.deliveries.append(msg_id)
                self.payloads[msg_id] = event
            hook = self.on_delivery
            if hook is not None:
                hook(msg_id)
            if failure is not None:
                return self._failure(failure)
            return JSONResponse({"received": msg_id})
        finally:
            with self.lock:
                self.in_flight -= 1

    @staticmethod
    def _failure(failure: tuple[int, bool, str | None]) -> Response:
        status, _, retry_after = failure
        headers = {"retry-after": retry_after} if retry_after is not None else None
        return JSONResponse({"error": "failing on purpose"}, status_code=status, headers=headers)
