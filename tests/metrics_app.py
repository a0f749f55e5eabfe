"""A tiny Starlette app for the multi-worker metrics test: each route feeds this worker's
`Metrics` what its query says and answers with the worker's pid; `/metrics` serves them.

- `GET /hit?outcome=&tier=&action=&credits=`: `count` once, then `charge` when credits > 0;
- `GET /state?pending=&lag=&flush=&ok=&store_error=`: the background metrics, each optional;
- `GET /metrics`: `MetricsApp`; `GET /health`.

Counts are published every `PUBLISH_EVERY` seconds by a task the lifespan runs, and once
more at shutdown. Needs `METERWARE_METRICS=1` (and `PROMETHEUS_MULTIPROC_DIR` for several
workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from meterware.metrics import metrics_from_env
from meterware.metricsapp import MetricsApp

PUBLISH_EVERY = 0.2

metrics = metrics_from_env()
assert metrics is not None, "set METERWARE_METRICS=1"


async def hit(request: Request) -> JSONResponse:
    assert metrics is not None
    q = request.query_params
    metrics.count(q["outcome"], q.get("tier", ""), q.get("action", ""))
    credits = int(q.get("credits", "0"))
    if credits:
        metrics.charge(q.get("tier", ""), q.get("action", ""), credits)
    return JSONResponse({"pid": os.getpid()})


async def state(request: Request) -> JSONResponse:
    assert metrics is not None
    q = request.query_params
    if "pending" in q:
        metrics.ledger_pending(int(q["pending"]))
    if "lag" in q:
        metrics.exporter_lag(float(q["lag"]))
    if "flush" in q:
        metrics.flush(float(q["flush"]), ok=q.get("ok", "1") == "1")
    if "store_error" in q:
        metrics.store_error(q["store_error"])
    return JSONResponse({"pid": os.getpid()})


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    assert metrics is not None
    task = asyncio.create_task(metrics.publish_every(PUBLISH_EVERY))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


app = Starlette(
    routes=[
        Route("/hit", hit),
        Route("/state", state),
        Route("/health", health),
        Route("/metrics", MetricsApp(metrics)),
    ],
    lifespan=lifespan,
)
