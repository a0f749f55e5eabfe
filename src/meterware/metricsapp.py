"""`MetricsApp`: serves every worker's Prometheus metrics (see `meterware.metrics`)."""

from __future__ import annotations

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from meterware.metrics import Metrics

__all__ = ["MetricsApp"]


class MetricsApp:
    """An ASGI app serving every worker's metrics, after publishing this process's counts.

    `GET` and `HEAD` only (405 otherwise). Serve it with `Route("/metrics",
    MetricsApp(metrics))`: `MeterwareMiddleware` lets it through without a key (like any
    app marked `meterware_exempt`; protect it at the network level). It answers with
    prometheus_client's `make_asgi_app`: the text format, or OpenMetrics when the scraper
    asks for it, gzipped when accepted unless `disable_compression`.
    """

    meterware_action = "metrics"  # its action in metrics and the ledger
    meterware_exempt = True  # scraped without an API key

    def __init__(self, metrics: Metrics, *, disable_compression: bool = False) -> None:
        from prometheus_client import make_asgi_app

        self.metrics = metrics
        self._serve: ASGIApp = make_asgi_app(
            metrics.registry, disable_compression=disable_compression
        )

    def __repr__(self) -> str:
        return f"MetricsApp({self.metrics!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own
            await receive()  # lifespan.startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            return await send({"type": "lifespan.shutdown.complete"})
        if scope["type"] != "http":
            return await WebSocketClose()(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            response = PlainTextResponse("Method Not Allowed", 405, {"allow": "GET, HEAD"})
            return await response(scope, receive, send)
        self.metrics.publish()
        await self._serve(scope, receive, send)
