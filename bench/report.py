"""Part 3: the credits usage report of a heavy key, through the ASGI app, on SQLite.

The key has 1,000,000 recorded calls over the last 91 days (today and the 90 before),
3 actions: 273 daily rollups (calls, credits, requests, last use) written through
`store.record(UsageBatch(...))`, as the ledger writes them. 100 other keys add noise (10
in the same account, 90 in accounts of their own), each with its own 273 rollups.

Timed: `GET /usage?days=90` (`usage_path="/usage", usage_format="credits"`) through the
app with the heavy key, one call at a time, after 20 warm-up calls: median and p99 of
200 calls, in ms. The first answer is checked: 1,000,000 calls, 3 actions, 91 days.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any

from bench import apps
from bench.fixtures import Stores, say
from bench.inproc import Lifespan, _receive, scope_for
from meterware import Admin, storage_from_url
from meterware.clock import day_of
from meterware.storage import Rollup, UsageBatch

CALLS = 1_000_000
DAYS = 90
ACTIONS = (
    ("image_to_html", "Image → HTML", 30),
    ("summarize", "Summarize", 5),
    ("lookup", "Lookup", 1),
)
NOISE_KEYS = 100


def _rollups(account_id: str, key_id: str, total: int, now: float) -> list[Rollup]:
    today = day_of(now)
    cells = [(d, a) for d in range(DAYS + 1) for a in ACTIONS]
    base, extra = divmod(total, len(cells))
    out = []
    for i, (back, (action, _, credits)) in enumerate(cells):
        calls = base + (1 if i < extra else 0)
        day = (today - timedelta(days=back)).isoformat()
        out.append(Rollup(account_id, key_id, action, day, calls, calls * credits, calls, now))
    return out


async def _fill(url: str, now: float) -> str:
    """Write the heavy key and the noise; the heavy key's secret."""
    store = storage_from_url(url)
    async with store:
        labels = {action: label for action, label, _ in ACTIONS}
        admin = Admin(store, pepper=apps.PEPPER, tiers=apps.TIERS, clock=lambda: now)
        key, secret = await admin.create_key(name="heavy", tier=apps.TIER)
        rows = _rollups(key.account_id, key.id, CALLS, now)
        for start in range(0, len(rows), 100):
            await store.record(UsageBatch(rollups=rows[start : start + 100], labels=labels))
        noise: list[Rollup] = []
        for i in range(NOISE_KEYS):
            account = key.account_id if i < 10 else None
            other, _ = await admin.create_key(name=f"noise {i}", tier=apps.TIER, account_id=account)
            noise += _rollups(other.account_id, other.id, 10_000 + i, now)
        for start in range(0, len(noise), 1000):
            await store.record(UsageBatch(rollups=noise[start : start + 1000]))
        say(f"report: {len(rows)} rollups for {CALLS:,} calls, {len(noise)} rows of noise")
    return secret


async def run(stores: Stores, *, calls: int = 200, warmup: int = 20) -> dict[str, Any]:
    url = f"sqlite:///{stores.workdir / 'report.db'}"
    now = time.time()
    secret = await _fill(url, now)
    app = apps.meterware_app(url, usage_path="/usage", usage_format="credits")
    template = scope_for("/usage", secret, b"days=90")
    body = bytearray()
    statuses: list[int] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif message["type"] == "http.response.body" and capture:
            body.extend(message.get("body", b""))

    async with Lifespan(app):
        capture = True
        await app(template.copy(), _receive, send)
        report = json.loads(bytes(body))
        capture = False
        summary = report["summary"]
        if (
            statuses != [200]
            or summary["totalCalls"] != CALLS
            or len(summary["byEndpoint"]) != len(ACTIONS)
            or len(report["daily"]) != DAYS + 1
        ):
            raise RuntimeError(f"unexpected usage report: {statuses} {summary}")
        for _ in range(warmup):
            await app(template.copy(), _receive, send)
            await asyncio.sleep(0)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            await app(template.copy(), _receive, send)
            times.append(time.perf_counter() - started)
            await asyncio.sleep(0)
    if any(s != 200 for s in statuses):
        raise RuntimeError(f"usage calls not answered 200: {set(statuses)}")
    times_ms = sorted(t * 1000 for t in times)
    return {
        "calls": calls,
        "median_ms": statistics.median(times_ms),
        "p99_ms": times_ms[min(len(times_ms) - 1, round(0.99 * len(times_ms)) - 1)],
        "max_ms": times_ms[-1],
        "bytes": len(body),
    }
