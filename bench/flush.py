"""Part 4: the write-behind ledger's flush, on SQLite (and PostgreSQL when reachable).

A `Meter` with no background task records 1,000 events per batch, as the middleware
does per admitted request: `meter.admitted(account, key, cost)` then `meter.charge(...)`,
500 requests spread over 100 keys × 3 actions (300 rollups per flush: both events of a
request go to its key's rollup of the action and day), then `await meter.flush()`. After
5 warm-up batches, 50 batches are timed.

Reported: the flush in µs per event (flush time / 1,000), the in-memory recording in µs
per event, and the raw `store.record` in µs per rollup row (a batch of 300 rollups).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.fixtures import Stores, say
from meterware import Storage, storage_from_url
from meterware.keys import ApiKey
from meterware.ledger import Meter
from meterware.metering import Cost
from meterware.storage import Rollup, UsageBatch

KEYS = 100
REQUESTS = 500  # 2 events each
COSTS = (Cost(1, "lookup", "Lookup"), Cost(5, "summarize", "Summarize"), Cost(30, "image", "Image"))


async def _keys(store: Storage) -> list[ApiKey]:
    from bench.apps import PEPPER, TIER, TIERS
    from meterware import Admin

    admin = Admin(store, pepper=PEPPER, tiers=TIERS)
    return [(await admin.create_key(name=f"flush {i}", tier=TIER))[0] for i in range(KEYS)]


async def _measure(store: Storage, batches: int, warmup: int) -> dict[str, Any]:
    keys = await _keys(store)
    meter = Meter(store, flush_interval=3600, flush_batch=10**9)
    flush_us, record_us, rows = [], [], 0
    for b in range(warmup + batches):
        now = time.time()
        started = time.perf_counter()
        for i in range(REQUESTS):
            key, cost = keys[i % KEYS], COSTS[i % 3]
            meter.admitted(key.account_id, key.id, cost, now)
            meter.charge(key.account_id, key.id, cost, cost.credits, now)
        recorded = time.perf_counter()
        rows = meter.pending
        if not await meter.flush():
            raise RuntimeError("flush failed")
        flushed = time.perf_counter()
        if b >= warmup:
            record_us.append((recorded - started) / (2 * REQUESTS) * 1e6)
            flush_us.append((flushed - recorded) / (2 * REQUESTS) * 1e6)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    rollups = [
        Rollup(k.account_id, k.id, c.action, day, 3, 3 * c.credits, 3, now)
        for k in keys
        for c in COSTS
    ]
    raw_us = []
    for b in range(warmup + batches):
        started = time.perf_counter()
        await store.record(UsageBatch(rollups=rollups))
        if b >= warmup:
            raw_us.append((time.perf_counter() - started) / len(rollups) * 1e6)
    return {
        "events_per_flush": 2 * REQUESTS,
        "rows_per_flush": rows,
        "flush_us_per_event": statistics.median(flush_us),
        "flush_us_per_event_max": max(flush_us),
        "record_us_per_event": statistics.median(record_us),
        "store_record_us_per_rollup": statistics.median(raw_us),
    }


async def run(stores: Stores, *, batches: int = 50, warmup: int = 5) -> dict[str, Any]:
    out: dict[str, Any] = {}
    store = storage_from_url(f"sqlite:///{stores.workdir / 'flush.db'}")
    async with store:
        out["sqlite"] = await _measure(store, batches, warmup)
    problem = await stores.postgres_ready()
    if problem is None:
        url = stores.pg_url.replace(stores.pg_schema, stores.pg_schema + "_flush")
        store = storage_from_url(url)
        try:
            async with store:
                out["postgres"] = await _measure(store, batches, warmup)
        finally:
            await _drop_schema(stores, stores.pg_schema + "_flush")
    else:
        out["postgres"] = {"skip": problem}
    say(f"flush: {out}")
    return out


async def _drop_schema(stores: Stores, schema: str) -> None:
    import asyncpg

    from bench.fixtures import PG_URL

    conn = await asyncpg.connect(PG_URL, timeout=3)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
