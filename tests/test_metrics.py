"""Prometheus metrics: a scripted mix of outcomes and charges, scraped and parsed with
prometheus_client's text parser, equals the mix exactly — in one process, and under
gunicorn with two uvicorn workers in prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from meterware import metrics as metrics_module
from meterware.errors import ConfigurationError
from meterware.metrics import OUTCOMES, Metrics, metrics_from_env
from meterware.metricsapp import MetricsApp
from tests.servers import ROOT, children, free_port, wait_for

# (outcome, tier, action, credits each, requests); "" is an unknown tier or action.
MIX = [
    ("admitted", "pro", "search", 3, 7),
    ("admitted", "free", "search", 3, 2),
    ("admitted", "pro", "export", 10, 4),
    ("admitted", "pro", "ping", 0, 5),
    ("rate_limited", "free", "search", 0, 3),
    ("unauthorized", "", "", 0, 2),
    ("forbidden", "", "search", 0, 1),
    ("quota_exceeded", "free", "export", 0, 4),
    ("insufficient_credits", "pro", "export", 0, 1),
    ("unavailable", "pro", "", 0, 2),
    ("failed_open", "pro", "search", 3, 6),
]

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def expected_requests(times: int = 1) -> dict[tuple[str, str, str], float]:
    """`meterware_requests_total` after the mix: by (outcome, tier, action)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for outcome, tier, action, _, n in MIX:
        counts[(outcome, tier or "none", action or "none")] += n * times
    return {k: float(v) for k, v in counts.items()}


def expected_credits(times: int = 1) -> dict[tuple[str, str], float]:
    """`meterware_credits_total` after the mix: by (tier, action)."""
    credits: Counter[tuple[str, str]] = Counter()
    for _, tier, action, each, n in MIX:
        if each:
            credits[(tier or "none", action or "none")] += each * n * times
    return {k: float(v) for k, v in credits.items()}


def play_mix(metrics: Metrics) -> None:
    """The mix, as the middleware would call it: `count` each request, `charge` if charged."""
    for outcome, tier, action, each, n in MIX:
        for _ in range(n):
            metrics.count(outcome, tier, action)
            if each:
                metrics.charge(tier, action, each)


def parse(text: str) -> Samples:
    """Every sample of a scrape: by sample name, then by sorted label items."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def requests_of(samples: Samples) -> dict[tuple[str, str, str], float]:
    """`meterware_requests_total` by (outcome, tier, action)."""
    by = samples.get("meterware_requests_total", {})
    return {
        (d["outcome"], d["tier"], d["action"]): v for d, v in ((dict(k), v) for k, v in by.items())
    }


def credits_of(samples: Samples) -> dict[tuple[str, str], float]:
    """`meterware_credits_total` by (tier, action)."""
    by = samples.get("meterware_credits_total", {})
    return {(d["tier"], d["action"]): v for d, v in ((dict(k), v) for k, v in by.items())}


def one(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample."""
    return samples[name][tuple(sorted(labels.items()))]


async def scrape(app: MetricsApp, method: str = "GET") -> httpx.Response:
    """One request to the metrics app, in process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, "/metrics")


# -- one process -------------------------------------------------------------------------


async def test_scrape_equals_the_mix():
    """After the mix, a scrape has exactly its requests by outcome, tier and action, and
    its credits by tier and action; unknown tiers and actions are `none`."""
    metrics = Metrics()
    play_mix(metrics)
    metrics.publish()
    response = await scrape(MetricsApp(metrics))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse(response.text)
    assert requests_of(samples) == expected_requests()
    assert credits_of(samples) == expected_credits()
    assert set(OUTCOMES) == {outcome for outcome, *_ in MIX}


async def test_publishing_again_counts_nothing_twice():
    """Publishing twice, and scraping (which publishes) twice, adds nothing; counts made
    after a publish are added by the next."""
    metrics = Metrics()
    app = MetricsApp(metrics)
    play_mix(metrics)
    metrics.publish()
    metrics.publish()
    first = parse((await scrape(app)).text)
    second = parse((await scrape(app)).text)
    assert requests_of(first) == requests_of(second) == expected_requests()
    play_mix(metrics)  # not published: the scrape does it
    third = parse((await scrape(app)).text)
    assert requests_of(third) == expected_requests(2)
    assert credits_of(third) == expected_credits(2)


async def test_background_metrics():
    """Ledger pending, flush durations and failures, store errors by concern; the exporter
    lag only once set."""
    metrics = Metrics()
    app = MetricsApp(metrics)
    samples = parse((await scrape(app)).text)
    assert "meterware_exporter_lag_seconds" not in samples
    assert samples["meterware_store_errors_total"] == {
        (("concern", c),): 0.0 for c in ("keys", "counters", "ledger", "rate_limit")
    }
    metrics.ledger_pending(12)
    metrics.flush(0.004, ok=True)
    metrics.flush(0.2, ok=False)
    metrics.flush(0.03, ok=True)
    for concern in ("ledger", "ledger", "keys"):
        metrics.store_error(concern)
    metrics.exporter_lag(7.5)
    samples = parse((await scrape(app)).text)
    assert one(samples, "meterware_ledger_pending") == 12
    assert one(samples, "meterware_flush_seconds_count") == 3
    assert one(samples, "meterware_flush_seconds_sum") == pytest.approx(0.234)
    assert one(samples, "meterware_flush_seconds_bucket", le="0.005") == 1
    assert one(samples, "meterware_flush_seconds_bucket", le="0.05") == 2
    assert one(samples, "meterware_flush_seconds_bucket", le="+Inf") == 3
    assert one(samples, "meterware_flush_failures_total") == 1
    assert one(samples, "meterware_store_errors_total", concern="ledger") == 2
    assert one(samples, "meterware_store_errors_total", concern="keys") == 1
    assert one(samples, "meterware_store_errors_total", concern="counters") == 0
    assert one(samples, "meterware_exporter_lag_seconds") == 7.5


async def test_label_cap_counts_new_actions_as_other(caplog: pytest.LogCaptureFixture):
    """Past `label_cap` label sets, new actions are counted as `other`, logged once; the
    label sets seen before the cap keep their own."""
    metrics = Metrics(label_cap=3)
    with caplog.at_level(logging.WARNING, logger="meterware"):
        for round_ in range(2):
            for i in range(6):
                metrics.count("admitted", "pro", f"a{i}")
                metrics.charge("pro", f"a{i}", 2)
            if round_ == 0:
                metrics.publish()
    samples = parse((await scrape(MetricsApp(metrics))).text)
    assert requests_of(samples) == {
        ("admitted", "pro", "a0"): 2,
        ("admitted", "pro", "a1"): 2,
        ("admitted", "pro", "a2"): 2,
        ("admitted", "pro", "other"): 6,
    }
    assert credits_of(samples) == {
        ("pro", "a0"): 4, ("pro", "a1"): 4, ("pro", "a2"): 4, ("pro", "other"): 12,
    }  # fmt: skip
    capped = [r for r in caplog.records if "label cap" in r.getMessage()]
    assert len(capped) == 1


def test_bad_values_are_refused():
    """An unknown outcome or concern, or negative credits, is a ValueError."""
    metrics = Metrics()
    with pytest.raises(ValueError, match="outcome must be one of"):
        metrics.count("teapot", "pro", "search")
    with pytest.raises(ValueError, match="concern must be one of"):
        metrics.store_error("disk")
    with pytest.raises(ValueError, match="cannot be negative"):
        metrics.charge("pro", "search", -1)
    metrics.publish()
    assert parse(generate_latest(metrics.registry).decode()).get("meterware_requests_total") is None


async def test_only_get_and_head():
    """The metrics app answers GET and HEAD; anything else is a 405 with `Allow`."""
    app = MetricsApp(Metrics())
    assert (await scrape(app, "HEAD")).status_code == 200
    refused = await scrape(app, "POST")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD"


async def test_publish_every_publishes_once_more_when_cancelled():
    """`publish_every` publishes on its interval, and what was counted since when the task
    is cancelled (a graceful shutdown)."""
    metrics = Metrics()
    labels = {"outcome": "admitted", "tier": "pro", "action": "search"}
    task = asyncio.create_task(metrics.publish_every(0.01))
    metrics.count("admitted", "pro", "search")
    await asyncio.sleep(0.05)
    assert metrics.registry.get_sample_value("meterware_requests_total", labels) == 1
    metrics.count("admitted", "pro", "search")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert metrics.registry.get_sample_value("meterware_requests_total", labels) == 2


def test_each_metrics_has_its_own_registry():
    """Two `Metrics` count apart; two on one registry is a ConfigurationError."""
    a, b = Metrics(), Metrics()
    a.count("admitted", "pro", "search")
    a.publish()
    b.publish()
    assert a.registry.get_sample_value(
        "meterware_requests_total", {"outcome": "admitted", "tier": "pro", "action": "search"}
    ) == 1  # fmt: skip
    assert b.registry.get_sample_value(
        "meterware_requests_total", {"outcome": "admitted", "tier": "pro", "action": "search"}
    ) is None  # fmt: skip
    shared = CollectorRegistry()
    Metrics(registry=shared)
    with pytest.raises(ConfigurationError, match="already holds"):
        Metrics(registry=shared)


def test_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch):
    """Without prometheus_client, `Metrics()` is a ConfigurationError naming the extra."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'meterware\[metrics\]'"):
        Metrics()


def test_import_needs_no_prometheus_client():
    """`import meterware` and `import meterware.metrics` import no prometheus_client."""
    code = "import sys, meterware, meterware.metrics; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_multiproc_dir_set_too_late(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """`PROMETHEUS_MULTIPROC_DIR` set after prometheus_client chose its mode is a
    ConfigurationError (it must be in the environment the server starts with)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ConfigurationError, match="after prometheus_client was imported"):
        Metrics()


def test_metrics_from_env(monkeypatch: pytest.MonkeyPatch):
    """`METERWARE_METRICS` unset, empty or false gives None; set, one Metrics a process."""
    monkeypatch.setattr(metrics_module, "_process_metrics", None)
    for value in (None, "", "0", "false", "No", "off"):
        if value is None:
            monkeypatch.delenv("METERWARE_METRICS", raising=False)
        else:
            monkeypatch.setenv("METERWARE_METRICS", value)
        assert metrics_from_env() is None
    monkeypatch.setenv("METERWARE_METRICS", "1")
    first = metrics_from_env()
    assert isinstance(first, Metrics)
    assert metrics_from_env() is first


def test_a_forked_child_drops_the_parents_counts():
    """Counts not yet published when the process forks are the parent's: the child does
    not publish them again."""
    code = textwrap.dedent("""
        import os
        from meterware.metrics import Metrics
        LABELS = {"outcome": "admitted", "tier": "pro", "action": "search"}
        m = Metrics()
        m.count("admitted", "pro", "search")
        pid = os.fork()
        if pid == 0:
            m.count("admitted", "pro", "search")
            m.publish()
            value = m.registry.get_sample_value("meterware_requests_total", LABELS)
            os._exit(0 if value == 1 else 1)
        _, status = os.waitpid(pid, 0)
        m.publish()
        value = m.registry.get_sample_value("meterware_requests_total", LABELS)
        print(os.waitstatus_to_exitcode(status), value)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "1.0"]


# -- two workers: gunicorn, prometheus_client's multiprocess mode -------------------------

GUNICORN_CONF = '''
"""What a gunicorn config file needs for prometheus_client's multiprocess mode."""
import glob
import os

from prometheus_client import multiprocess


def on_starting(server):
    """Empty PROMETHEUS_MULTIPROC_DIR before the workers start (files of a former run)."""
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)


def child_exit(server, worker):
    """A worker exited: its live gauges go; its counters stay in the totals."""
    multiprocess.mark_process_dead(worker.pid)
'''


class Gunicorn:
    """`gunicorn -k uvicorn_worker.UvicornWorker -w N <target>`, in multiprocess mode
    (`tests.metrics_app:app` unless another app is given, with its `app_dir` on the path
    and `env` added to the environment)."""

    def __init__(
        self,
        workdir: Path,
        workers: int = 2,
        *,
        target: str = "tests.metrics_app:app",
        app_dir: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workers = workers
        self.target, self.app_dir, self.extra_env = target, app_dir, env or {}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.dir = workdir / "prometheus"
        self.dir.mkdir()
        self.conf = workdir / "gunicorn.conf.py"
        self.conf.write_text(GUNICORN_CONF)
        self.log = workdir / "gunicorn.log"
        self.process: subprocess.Popen[bytes] | None = None

    def started(self) -> int:
        """How many workers have completed their startup so far."""
        return self.log.read_text(errors="replace").count("Application startup complete")

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
        env.update(PROMETHEUS_MULTIPROC_DIR=str(self.dir), METERWARE_METRICS="1")
        env.update(self.extra_env)
        path = ["--pythonpath", self.app_dir] if self.app_dir else []
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker",
                 "-w", str(self.workers), "-b", f"127.0.0.1:{self.port}",
                 "-c", str(self.conf), *path, self.target],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log.read_text()[-3000:]}")
            return self.started() >= self.workers

        wait_for(ready, "gunicorn workers", timeout=30, interval=0.1)

    def worker_pids(self) -> set[int]:
        """The pids of the workers running now."""
        assert self.process is not None
        return set(children(self.process.pid))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Gunicorn]:
    """Two workers of `tests/metrics_app.py`, a fresh multiprocess directory holding a
    stale counter file of a former run (which `on_starting` must remove)."""
    server = Gunicorn(tmp_path)
    stale = MmapedDict(str(server.dir / "counter_999999.db"))
    key = mmap_key(
        "meterware_requests", "meterware_requests_total", ("outcome", "tier", "action"),
        ("admitted", "pro", "search"), "stale",
    )  # fmt: skip
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def send_mix(base: str, times: int = 1) -> Counter[int]:
    """The mix over HTTP, one request per counted request, shuffled, 16 at a time, each on
    a connection of its own; how many each worker pid served."""
    hits: list[dict[str, Any]] = []
    for outcome, tier, action, each, n in MIX:
        query = {"outcome": outcome, "tier": tier, "action": action, "credits": each}
        hits += [query] * (n * times)
    random.Random(7).shuffle(hits)
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=0)
    served: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        gate = asyncio.Semaphore(16)

        async def go(query: dict[str, Any]) -> None:
            async with gate:
                response = await client.get("/hit", params=query)
                response.raise_for_status()
                served[response.json()["pid"]] += 1

        await asyncio.gather(*(go(q) for q in hits))
    return served


def state(base: str, **query: Any) -> int:
    """One `/state` request on a new connection; the pid of the worker that served it."""
    response = httpx.get(f"{base}/state", params=query, headers={"connection": "close"})
    response.raise_for_status()
    return int(response.json()["pid"])


def scrapes(base: str, n: int = 6) -> list[Samples]:
    """`n` scrapes, each on a new connection (so any worker may serve each)."""
    got = []
    for _ in range(n):
        response = httpx.get(f"{base}/metrics", headers={"connection": "close"}, timeout=10)
        assert response.status_code == 200
        got.append(parse(response.text))
    return got


@pytest.mark.slow
def test_two_workers_scrape_equals_the_mix(gunicorn: Gunicorn):
    """Under gunicorn with two workers, every scrape (whichever worker serves it) has
    exactly the mix's requests and credits, the ledger gauges summed over workers, the
    exporter lag their maximum, flushes and store errors added up."""
    served = asyncio.run(send_mix(gunicorn.base, times=4))
    assert len(served) == 2, served  # both workers took traffic
    pending: dict[int, int] = {}
    lag: dict[int, float] = {}
    for i in range(12):
        pid = state(gunicorn.base, pending=10 * i, lag=i / 2, flush=0.004, ok=int(i % 3 != 0))
        pending[pid], lag[pid] = 10 * i, i / 2
    for concern in ("ledger", "ledger", "counters"):
        state(gunicorn.base, store_error=concern)
    time.sleep(0.6)  # every worker has published (every 0.2 s)
    for samples in scrapes(gunicorn.base):
        assert requests_of(samples) == expected_requests(4)
        assert credits_of(samples) == expected_credits(4)
        assert one(samples, "meterware_ledger_pending") == sum(pending.values())
        assert one(samples, "meterware_exporter_lag_seconds") == max(lag.values())
        assert one(samples, "meterware_flush_seconds_count") == 12
        assert one(samples, "meterware_flush_seconds_sum") == pytest.approx(12 * 0.004)
        assert one(samples, "meterware_flush_failures_total") == 4
        assert one(samples, "meterware_store_errors_total", concern="ledger") == 2
        assert one(samples, "meterware_store_errors_total", concern="counters") == 1
        assert one(samples, "meterware_store_errors_total", concern="keys") == 0


@pytest.mark.slow
def test_a_dead_workers_counts_stay_and_its_gauges_go(gunicorn: Gunicorn):
    """A worker killed after publishing: its requests stay in the totals, its ledger
    gauge goes (gunicorn's `child_exit` hook), and its replacement adds to the totals."""
    served = asyncio.run(send_mix(gunicorn.base))
    assert len(served) == 2, served
    pending: dict[int, int] = {}
    for i in range(1, 9):
        pending[state(gunicorn.base, pending=i * 100 + 1)] = i * 100 + 1
    time.sleep(0.6)
    victim = max(pending, key=lambda pid: pending[pid])
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: gunicorn.started() >= 3 and len(gunicorn.worker_pids() - {victim}) == 2,
        "the replacement worker", timeout=30, interval=0.1,
    )  # fmt: skip
    survivors = sum(v for pid, v in pending.items() if pid != victim)
    for samples in scrapes(gunicorn.base):
        assert requests_of(samples) == expected_requests()
        assert credits_of(samples) == expected_credits()
        assert one(samples, "meterware_ledger_pending") == survivors
    served = asyncio.run(send_mix(gunicorn.base))
    assert len(served) == 2, served  # the replacement took traffic too
    time.sleep(0.6)
    for samples in scrapes(gunicorn.base):
        assert requests_of(samples) == expected_requests(2)
        assert credits_of(samples) == expected_credits(2)
