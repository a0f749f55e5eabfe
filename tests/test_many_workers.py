"""Limits exact across processes, on every deployment shape: the Starlette example under
`uvicorn --workers N`, driven by 100-200 concurrent clients with keys made by the CLI.

- one SQLite file shared by 4 workers;
- PostgreSQL alone (per-minute windows in PostgreSQL too), 2 workers;
- PostgreSQL with the per-minute windows in Redis, 2 workers.

Each admits exactly a key's per-minute and monthly limit between all its workers, shares
an account's limits with `METERWARE_LIMIT_BY=account`, and reports the requests made
(never units reserved) from every worker while it runs and after it stops.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import PostgresBackend, flush_redis_db, require_postgres, require_redis
from tests.servers import Uvicorn
from tests.test_scale_out import cli

pytestmark = pytest.mark.slow

SITES = "/api/external/v1/websites"
USAGE = "/api/external/v1/usage"
REDIS_DB = 12
DEPLOYMENTS = [
    pytest.param(("sqlite", 4), id="sqlite-4-workers", marks=pytest.mark.sqlite),
    pytest.param(("postgres", 2), id="postgres-2-workers", marks=pytest.mark.postgres),
    pytest.param(
        ("postgres+redis", 2), id="postgres-redis-2-workers",
        marks=[pytest.mark.postgres, pytest.mark.redis],
    ),
]  # fmt: skip
Deployment = tuple[dict[str, str], int]


@pytest.fixture
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[dict[str, str], int]]:
    """The service's environment for one deployment shape, and its number of workers."""
    shape, workers = request.param
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
    backend = None
    redis_url = None
    if shape == "sqlite":
        env["METERWARE_STORAGE"] = f"sqlite:///{tmp_path}/shared.db"
    else:
        backend = PostgresBackend(require_postgres())
        env["METERWARE_STORAGE"] = backend.url
    if shape == "postgres+redis":
        redis_url = flush_redis_db(require_redis(), REDIS_DB)
        env["METERWARE_RATE_LIMIT_STORAGE"] = "async+" + redis_url
    yield env, workers
    if backend is not None:
        asyncio.run(backend.cleanup())
    if redis_url is not None:
        flush_redis_db(redis_url, REDIS_DB)


async def burst(base: str, secret: str, n: int) -> Counter[tuple[int, str]]:
    """`n` GETs at once, each on a connection of its own; (status, error code) counted."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    headers = {"X-API-Key": secret}
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        answers = await asyncio.gather(*(client.get(SITES, headers=headers) for _ in range(n)))
    return Counter(
        (a.status_code, "" if a.status_code == 200 else a.json()["error"]["code"]) for a in answers
    )


def workers_of(server: Uvicorn, path: str, secret_calls: int = 0) -> Counter[str]:
    """Access-log lines for `path` by worker pid."""
    found: Counter[str] = Counter()
    for line in server.log.read_text().splitlines():
        match = re.match(r"(\d+) uvicorn\.access INFO .* \"GET (\S+) HTTP/1\.1\" (\d+)", line)
        if match and match[2] == path:
            found[match[1]] += 1
    return found


# The documented bound on how late reported numbers may be: one `flush_interval` (0.5 s
# by default) for every process to write what it admitted, plus time for that write.
FLUSH_BOUND = 1.0


def usage_from_every_worker(server: Uvicorn, secret: str, workers: int) -> list[dict[str, Any]]:
    """The quota report of a key once the flush bound has passed since the last request,
    asked on fresh connections until every worker answered."""
    time.sleep(FLUSH_BOUND)
    reports = []
    for _ in range(200):
        answer = httpx.get(server.base + USAGE, headers={"X-API-Key": secret})
        assert answer.status_code == 200, answer.text
        reports.append(answer.json()["data"]["usage"])
        if len(workers_of(server, USAGE)) >= workers and len(reports) >= workers:
            break
    assert len(workers_of(server, USAGE)) == workers, "not every worker answered"
    return reports


def shown(key_id: str, env: dict[str, str]) -> tuple[int, int]:
    quota = cli("keys", "show", key_id, env=env)["quota"]
    return quota["monthly_requests"], quota["total_requests"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, indirect=True)
def test_limits_and_reported_numbers_are_exact_across_workers(deployment, tmp_path):
    """Per-minute 10 → exactly 10 of 100; monthly 50 → exactly 50 of 200; every worker,
    and `keys show`, report the requests made, while running and after a stop."""
    env, workers = deployment
    minute = cli("keys", "create", "--name", "minute", "--per-minute", "10", env=env)
    month = cli("keys", "create", "--name", "month", "--tier", "pro", "--per-minute",
                "100000", "--monthly-limit", "50", env=env)  # fmt: skip
    server = Uvicorn("starlette_app", env, tmp_path, workers=workers)
    with server.running():
        minute_answers = asyncio.run(burst(server.base, minute["key"], 100))
        minute_workers = workers_of(server, SITES)
        month_answers = asyncio.run(burst(server.base, month["key"], 200))
        reports = usage_from_every_worker(server, month["key"], workers)
        running = {"minute": shown(minute["id"], env), "month": shown(month["id"], env)}
        server.stop()
    stopped = {"minute": shown(minute["id"], env), "month": shown(month["id"], env)}
    print(
        f"\n{workers} workers on {env['METERWARE_STORAGE'].split(':')[0]}"
        f"{' + Redis' if 'METERWARE_RATE_LIMIT_STORAGE' in env else ''}: "
        f"--per-minute 10, 100 at once: {dict(minute_answers)} (by worker "
        f"{dict(minute_workers)}); --monthly-limit 50, 200 at once: {dict(month_answers)}; "
        f"monthly_requests reported by {len(workers_of(server, USAGE))} workers: "
        f"{sorted({r['monthly_requests'] for r in reports})}; keys show running {running}, "
        f"stopped {stopped}"
    )
    assert minute_answers == {(200, ""): 10, (429, "RATE_LIMITED"): 90}
    assert len(minute_workers) >= 2, f"one worker took all the traffic: {minute_workers}"
    assert month_answers == {(200, ""): 50, (429, "QUOTA_EXCEEDED"): 150}
    assert {(r["monthly_requests"], r["monthly_remaining"], r["total_requests"])
            for r in reports} == {(50, 0, 50)}  # fmt: skip
    assert running == stopped == {"minute": (10, 10), "month": (50, 50)}


@pytest.mark.parametrize("deployment", DEPLOYMENTS, indirect=True)
def test_an_accounts_keys_share_its_limits(deployment, tmp_path):
    """METERWARE_LIMIT_BY=account: two keys of one account splitting 200 concurrent
    requests get the account's monthly limit (50) exactly, and report its numbers."""
    env, workers = deployment
    env = {**env, "METERWARE_LIMIT_BY": "account"}
    create = ("keys", "create", "--account", "acct_shared", "--tier", "pro")
    limits = ("--per-minute", "100000", "--monthly-limit", "50")
    keys = [cli(*create, "--name", f"key {i}", *limits, env=env) for i in range(2)]
    server = Uvicorn("starlette_app", env, tmp_path, workers=workers)
    with server.running():

        async def both() -> list[Counter[tuple[int, str]]]:
            return list(await asyncio.gather(*(burst(server.base, k["key"], 100) for k in keys)))

        answers = asyncio.run(both())
        reports = [usage_from_every_worker(server, k["key"], workers) for k in keys]
        running = [shown(k["id"], env) for k in keys]
    admitted = sum(a[(200, "")] for a in answers)
    print(
        f"\n{workers} workers, limit_by=account, two keys × 100 at once against the account's "
        f"50: {[dict(a) for a in answers]}; keys show {running}"
    )
    assert admitted == 50
    assert sum(sum(a.values()) for a in answers) == 200
    assert all(set(a) <= {(200, ""), (429, "QUOTA_EXCEEDED")} for a in answers)
    for report, key_answers in zip(reports, answers, strict=True):
        assert {(r["monthly_requests"], r["monthly_remaining"]) for r in report} == {(50, 0)}
        assert {r["total_requests"] for r in report} == {key_answers[(200, "")]}
    assert [month for month, _ in running] == [50, 50]
    assert sorted(total for _, total in running) == sorted(a[(200, "")] for a in answers)
