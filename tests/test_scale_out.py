"""Scale-out: the FastAPI example under `uvicorn --workers 2`, on a PostgreSQL schema of
its own and Redis for the per-minute windows, driven by 200 concurrent clients.

The limits hold across the workers exactly, the usage report shows exactly what was
admitted, and a graceful restart of every worker loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import PostgresBackend, flush_redis_db, require_postgres, require_redis
from tests.servers import Uvicorn

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

REDIS_DB = 13  # a database index of its own on the shared Redis, flushed before the test
IMAGE = "/api/v1/image-to-html"  # 30 credits
QUOTA = "Monthly request quota exceeded"
MINUTE = "Rate limit exceeded"


def cli(*args: str, env: dict[str, str]) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "meterware.cli", *args, "--json"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def burst(base: str, path: str, secret: str, n: int = 200) -> list[tuple[int, str]]:
    """`n` POSTs at once, each on a connection of its own; (status, error) of each."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        answers = await asyncio.gather(*(client.post(path, headers=headers) for _ in range(n)))
    return [(a.status_code, a.json().get("error", "")) for a in answers]


def statuses(answers: list[tuple[int, str]]) -> Counter[tuple[int, str]]:
    return Counter(answers)


def by_worker(server: Uvicorn, path: str) -> dict[str, Counter[str]]:
    """Status codes of the access-log lines for `path`, by worker pid."""
    found: dict[str, Counter[str]] = {}
    for line in server.log.read_text().splitlines():
        match = re.match(r'(\d+) uvicorn\.access INFO .* "POST (\S+) HTTP/1\.1" (\d+)', line)
        if match and match[2] == path:
            found.setdefault(match[1], Counter())[match[3]] += 1
    return found


def usage(base: str, secret: str, key_id: str | None = None) -> dict[str, Any]:
    """The usage report of the calling key, or of `key_id` (a key of the same account)."""
    answer = httpx.get(
        f"{base}/api/v1/usage",
        params={"keyId": key_id} if key_id else {},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    return {"key": report["key"], "summary": report["summary"]}


def wait_until(read, want, timeout: float) -> tuple[Any, float]:
    """Call `read()` until it returns `want` (or `timeout` passes); the last value and
    the seconds it took."""
    start = time.monotonic()
    while True:
        value = read()
        if value == want or time.monotonic() - start > timeout:
            return value, time.monotonic() - start
        time.sleep(0.05)


@pytest.fixture
def deployment(tmp_path: Path):
    """The environment of the service: a fresh PostgreSQL schema, a flushed Redis db."""
    backend = PostgresBackend(require_postgres())
    redis_url = flush_redis_db(require_redis(), REDIS_DB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
    env["METERWARE_STORAGE"] = backend.url
    env["METERWARE_RATE_LIMIT_STORAGE"] = "async+" + redis_url
    yield env
    asyncio.run(backend.cleanup())
    flush_redis_db(redis_url, REDIS_DB)


def test_two_workers_share_limits_usage_and_survive_a_restart(deployment, tmp_path):
    """2 workers × 200 calls: quota 50, per-minute 10 and usage exact; a restart loses nothing."""
    env = deployment
    quota = cli("keys", "create", "--name", "quota", "--tier", "pro", "--monthly-limit", "50",
                "--per-minute", "100000", env=env)  # fmt: skip
    minute = cli("keys", "create", "--name", "minute", "--per-minute", "10", "--account",
                 "acct_minute", env=env)  # fmt: skip
    # The usage endpoint is rate-limited too: the minute key's report is read by another
    # key of its account (`?keyId=`).
    reader = cli("keys", "create", "--name", "reader", "--per-minute", "1000", "--account",
                 "acct_minute", env=env)  # fmt: skip
    busy = cli("keys", "create", "--name", "busy", "--tier", "enterprise", "--per-minute",
               "100000", env=env)  # fmt: skip
    server = Uvicorn("fastapi_app", env, tmp_path, workers=2)

    with server.running():
        started = time.monotonic()
        quota_answers = statuses(asyncio.run(burst(server.base, IMAGE, quota["key"])))
        quota_workers = by_worker(server, IMAGE)
        minute_answers = statuses(asyncio.run(burst(server.base, IMAGE, minute["key"])))
        burst_seconds = time.monotonic() - started
        minute_workers = {
            pid: counts - quota_workers.get(pid, Counter())
            for pid, counts in by_worker(server, IMAGE).items()
        }

        want_quota = {"calls": 50, "credits": 1500}
        want_minute = {"calls": 10, "credits": 300}
        quota_usage, quota_wait = wait_until(
            lambda: usage(server.base, quota["key"])["summary"], _summary(want_quota), 5
        )
        minute_usage, minute_wait = wait_until(
            lambda: usage(server.base, reader["key"], minute["id"])["summary"],
            _summary(want_minute),
            5,
        )
        before = {
            "quota": usage(server.base, quota["key"]),
            "minute": usage(server.base, reader["key"], minute["id"]),
            "quota_show": _show(quota["id"], env),
            "minute_total": _show(minute["id"], env)["total_requests"],
        }
        # The minute key's quota (free tier: blocks of 10) is reserved per worker and held
        # while they run (lease_idle), so the stored count may read up to 10 more per
        # worker now; a graceful stop returns the unused units (checked after the restart).
        minute_month = _show(minute["id"], env)["monthly_requests"]
        # Then a burst on a third key, and SIGTERM at once: nothing waits for a flush.
        busy_answers = statuses(asyncio.run(burst(server.base, IMAGE, busy["key"])))
        stop_status = server.stop()

    print(
        f"\n2 workers, 200 concurrent POST {IMAGE} per key ({burst_seconds:.2f} s for both):"
        f"\n  --monthly-limit 50: {dict(quota_answers)}"
        f"\n  --per-minute 10:    {dict(minute_answers)}"
        f"\n  by worker (pid: statuses): quota key {_plain(quota_workers)}, "
        f"minute key {_plain(minute_workers)}"
        f"\n  usage report, quota key: {quota_usage} (after {quota_wait:.2f} s)"
        f"\n  usage report, minute key: {minute_usage} (after {minute_wait:.2f} s)"
        f"\n  minute key's stored monthly count while running: {minute_month}"
        f"\n  busy key, 200 calls then SIGTERM at once: {dict(busy_answers)}, "
        f"uvicorn exit status {stop_status}"
    )
    assert quota_answers == {(200, ""): 50, (429, QUOTA): 150}
    assert minute_answers == {(200, ""): 10, (429, MINUTE): 190}
    # Both workers took traffic of each key, and admitted only the limit between them.
    for workers, admitted in ((quota_workers, 50), (minute_workers, 10)):
        assert len(workers) == 2, f"one worker served everything: {workers}"
        assert sum(c["200"] for c in workers.values()) == admitted
        assert sum(sum(c.values()) for c in workers.values()) == 200
    assert quota_usage == _summary(want_quota) and quota_wait < 2.5
    assert minute_usage == _summary(want_minute) and minute_wait < 2.5
    assert 10 <= minute_month <= 10 + 2 * 10
    assert before["quota_show"] == {"monthly_requests": 50, "total_requests": 50}
    assert before["minute_total"] == 10
    assert busy_answers == {(200, ""): 200}
    assert stop_status == 0

    with server.running():
        after = {
            "quota": usage(server.base, quota["key"]),
            "minute": usage(server.base, reader["key"], minute["id"]),
            "quota_show": _show(quota["id"], env),
            "minute_total": _show(minute["id"], env)["total_requests"],
        }
        minute_after = _show(minute["id"], env)["monthly_requests"]
        busy_usage = usage(server.base, busy["key"])["summary"]
        busy_show = _show(busy["id"], env)
        refused = httpx.post(
            server.base + IMAGE, headers={"Authorization": f"Bearer {quota['key']}"}
        )
        server.stop()

    print(
        f"  after the restart: minute key's monthly count {minute_after}; busy key usage "
        f"{busy_usage}, counters {busy_show}; quota key "
        f"answered {refused.status_code} {refused.json()}"
    )
    assert after == before
    assert minute_after == 10
    assert busy_usage == _summary({"calls": 200, "credits": 6000})
    # Every worker returned its unused block (enterprise: 1000 units) at shutdown.
    assert busy_show == {"monthly_requests": 200, "total_requests": 200}
    assert refused.status_code == 429 and refused.json() == {"error": QUOTA}


def _summary(want: dict[str, int]) -> dict[str, Any]:
    return {
        "totalCalls": want["calls"],
        "totalCredits": want["credits"],
        "byEndpoint": {
            "image_to_html": {**want, "label": "Image → HTML"},
        },
    }


def _plain(workers: dict[str, Counter[str]]) -> dict[str, dict[str, int]]:
    return {pid: dict(sorted(c.items())) for pid, c in workers.items()}


def _show(key_id: str, env: dict[str, str]) -> dict[str, int]:
    quota = cli("keys", "show", key_id, env=env)["quota"]
    return {
        "monthly_requests": quota["monthly_requests"],
        "total_requests": quota["total_requests"],
    }
