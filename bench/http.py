"""Part 2: the same apps over HTTP, served by subprocesses, loaded from another process.

Three lists of servers, each run by `run()`:

- `ONE_WORKER` (part `http`): `uvicorn --factory bench.apps:http_* --workers 1
  --log-level warning --no-access-log`: bare, slowapi, meterware on SQLite, on
  PostgreSQL alone, on PostgreSQL with its windows in Redis;
- `TWO_WORKERS` (part `http2`): `gunicorn -k uvicorn_worker.UvicornWorker -w 2
  'bench.apps:http_*()'`: bare, meterware on SQLite, on PostgreSQL alone (two processes
  sharing the store's counters);
- `WORKER_MODES` (part `workers`, once): bare Starlette under `uvicorn --workers 2`,
  under gunicorn with 2 uvicorn workers, and under `uvicorn --workers 2` with
  TCP_NODELAY set on its listening socket (bench/nodelay.py, the diagnostic of why
  uvicorn's own supervisor is slow: see bench/README.md).

Each server runs on a free loopback port. The load comes from `wrk` (2 threads, 32
connections, `bench/keys.lua` rotating the API keys of a key file), or, when wrk is not
installed, from `bench/loadgen.py` (said in the output). Each server first gets a
warm-up run (every key's cache entry and leases filled; with 2 workers it also covers the
second worker's start), then the measured run. Servers are interleaved over rounds, in
rotating order.

Reported per server: requests/s, p50 and p99 latency, the CPU time of the server's
processes (the supervisor and its workers, from /proc) per request, and the ratios to
the baseline of the same round (bare Starlette served the same way). A multi-worker
server of which fewer processes than workers did a tenth of the work is said on stderr
(`busy_processes` in the JSON).

This module is `bench.http`: run it through bench/run.py (`--only http`), never as
`python bench/http.py`, which would shadow the standard library's `http`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from bench.fixtures import Stores, say

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "keys.lua"
TRIES = 3  # load runs at most, until every worker of a multi-worker server is busy


@dataclass
class Server:
    name: str
    label: str
    factory: str
    store: str  # whose keys it is sent: "sqlite" or "postgres"
    needs: tuple[str, ...] = ()  # servers: "postgres", "redis"
    runner: str = "uvicorn"  # or "gunicorn", or "nodelay" (bench/nodelay.py)
    workers: int = 1


BARE = Server("bare", "bare Starlette", "http_bare", "sqlite")
SLOWAPI = Server("slowapi", "+ slowapi (decorator, memory)", "http_slowapi", "sqlite")
MW_SQLITE = Server(
    "mw-sqlite", "+ meterware SQLite, full pipeline", "http_meterware_sqlite", "sqlite"
)
MW_PG = Server(
    "mw-pg",
    "+ meterware PostgreSQL alone, full",
    "http_meterware_postgres_alone",
    "postgres",
    needs=("postgres",),
)
MW_PG_REDIS = Server(
    "mw-pg-redis",
    "+ meterware PostgreSQL + Redis, full",
    "http_meterware_postgres_redis",
    "postgres",
    needs=("postgres", "redis"),
)

ONE_WORKER = [BARE, SLOWAPI, MW_SQLITE, MW_PG, MW_PG_REDIS]
TWO_WORKERS = [replace(s, runner="gunicorn", workers=2) for s in (BARE, MW_SQLITE, MW_PG)]
WORKER_MODES = [
    replace(BARE, name="gunicorn", label="bare, gunicorn 2 workers", runner="gunicorn", workers=2),
    replace(BARE, name="uvicorn", label="bare, uvicorn --workers 2", workers=2),
    replace(
        BARE,
        name="uvicorn-nodelay",
        label="bare, uvicorn --workers 2 + TCP_NODELAY (diagnostic)",
        runner="nodelay",
        workers=2,
    ),
]


@dataclass
class Run:
    name: str
    label: str
    workers: int = 1
    rounds: list[dict[str, Any]] = field(default_factory=list)
    skip: str | None = None


def load_tool() -> str:
    """'wrk' when installed, else 'loadgen' (bench/loadgen.py)."""
    return "wrk" if shutil.which("wrk") else "loadgen"


def server_stack() -> str:
    """Which event loop and HTTP parser uvicorn will pick (auto)."""
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return f"{loop} + {parser}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command's name (field 3 onwards)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of a process and of every live process under it, by pid."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry)] = int(_stat(int(entry))[1])
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    out: dict[int, float] = {}
    for member in tree:
        with contextlib.suppress(OSError):
            fields = _stat(member)
            out[member] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _wait_idle(pid: int, workers: int, timeout: float = 15.0) -> None:
    """With several workers: wait until the server has them all and they have stopped
    using CPU (done starting, or done with the last run), so that each is waiting on the
    listening socket when the load connects."""
    if workers < 2:
        return
    deadline = time.monotonic() + timeout
    last = _cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _cpu_seconds(pid)
        if len(now) > workers and sum(now.values()) - sum(last.values()) <= 0.02:
            return
        last = now


def _spread(server: Server, pid: int, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A load run, with the server's CPU time per request and how many of its processes
    did at least a tenth of the work (`busy_processes`). With several workers, the run is
    made again, up to `TRIES` in all, while fewer than all of them were busy: the 32
    connections are opened at once and kept, and the worker that wakes first may accept
    them all, which measures one worker, not two (`tries` says how many runs it took)."""
    for tries in range(1, TRIES + 1):
        _wait_idle(pid, server.workers)
        before = _cpu_seconds(pid)
        result = load()
        used = {p: t - before.get(p, 0.0) for p, t in _cpu_seconds(pid).items()}
        total = sum(used.values())
        result["server_cpu_us"] = total / max(1, result["requests"]) * 1e6
        result["busy_processes"] = sum(1 for t in used.values() if t >= 0.1 * total)
        result["tries"] = tries
        if result["busy_processes"] >= server.workers:
            break
    return result


def _get(port: int, key: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET /bench HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode())
        return int(s.recv(64)[9:12])


def command(server: Server, port: int) -> list[str]:
    """The command line that serves `server` on `port`."""
    if server.runner == "gunicorn":
        return [
            sys.executable, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker",
            "-w", str(server.workers), "-b", f"127.0.0.1:{port}", "--log-level", "warning",
            "--chdir", str(ROOT), f"bench.apps:{server.factory}()",
        ]  # fmt: skip
    module = "uvicorn" if server.runner == "uvicorn" else "bench.nodelay"
    return [
        sys.executable, "-m", module, "--factory", f"bench.apps:{server.factory}",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(server.workers),
        "--log-level", "warning", "--no-access-log", "--app-dir", str(ROOT),
    ]  # fmt: skip


def describe(server: Server) -> str:
    """The server's command, shortened for the table."""
    if server.runner == "gunicorn":
        return f"gunicorn -k uvicorn_worker.UvicornWorker -w {server.workers}"
    return f"uvicorn --workers {server.workers}"


@contextlib.contextmanager
def serve(server: Server, env: dict[str, str], log: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    with open(log, "ab") as err:
        proc = subprocess.Popen(command(server, port), cwd=ROOT, env=env, stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{server.name}: server exited ({proc.returncode}); see {log}")
            try:
                status = _get(port, env["BENCH_FIRST_KEY"])
                if status != 200:
                    raise RuntimeError(f"{server.name}: GET /bench answered {status}")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server.name}: server did not start; see {log}") from None
                time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _log_since(log: Path, offset: int) -> list[str]:
    """The server log's lines written after `offset` bytes."""
    with open(log, "rb") as f:
        f.seek(offset)
        return [ln for ln in f.read().decode(errors="replace").splitlines() if ln]


def _load(
    tool: str, port: int, keyfile: Path, seconds: float, connections: int, threads: int
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/bench"
    if tool == "wrk":
        command = [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-s", str(LUA), url, "--", str(keyfile),
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "bench.loadgen", url, "--keys", str(keyfile),
            "-d", str(seconds), "-c", str(connections),
        ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            result: dict[str, Any] = json.loads(line[len("BENCHJSON ") :])
            return result
    raise RuntimeError(f"{tool} gave no result: {done.stdout[-500:]} {done.stderr[-500:]}")


async def run(
    stores: Stores,
    servers: Sequence[Server],
    *,
    keys: int,
    rounds: int,
    seconds: float,
    warm_seconds: float,
    connections: int = 32,
    threads: int = 2,
) -> tuple[list[Run], dict[str, Any]]:
    """Every server, interleaved over `rounds` rounds; the runs and the setup used."""
    tool = load_tool()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    keyfiles: dict[str, Path] = {}
    url, secrets = await stores.sqlite(keys)
    env["BENCH_SQLITE_URL"] = url
    keyfiles["sqlite"] = stores.workdir / "keys-sqlite.txt"
    keyfiles["sqlite"].write_text("\n".join(secrets) + "\n")
    if await stores.postgres_ready() is None:
        url, secrets = await stores.postgres(keys)
        env["BENCH_PG_URL"], env["BENCH_REDIS_URL"] = url, stores.redis_url
        keyfiles["postgres"] = stores.workdir / "keys-postgres.txt"
        keyfiles["postgres"].write_text("\n".join(secrets) + "\n")
    runs = {s.name: Run(s.name, s.label, s.workers) for s in servers}
    live = []
    for s in servers:
        runs[s.name].skip = await stores.problem(s.needs)
        if runs[s.name].skip is None:
            live.append(s)
    log = stores.workdir / "server.log"
    for r in range(rounds):
        order = live[r % len(live) :] + live[: r % len(live)]
        for s in order:
            keyfile = keyfiles[s.store]
            env["BENCH_FIRST_KEY"] = keyfile.read_text().split("\n", 1)[0]
            logged = log.stat().st_size if log.exists() else 0
            with serve(s, env, log) as (port, pid):
                how = (connections, threads)
                warm = _spread(s, pid, partial(_load, tool, port, keyfile, warm_seconds, *how))
                result = _spread(s, pid, partial(_load, tool, port, keyfile, seconds, *how))
            result["warm_tries"] = warm["tries"]
            if result["busy_processes"] < s.workers:
                say(f"http {s.name}: only {result['busy_processes']} of {s.workers} workers busy")
            errors = sum(
                result[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
            )
            if result["non2xx"] or errors:
                raise RuntimeError(f"{s.name}: {result['non2xx']} non-2xx, {errors} errors")
            lines = _log_since(log, logged)
            result["server_log"] = lines[:20]
            for line in sorted(set(lines))[:5]:
                say(f"http {s.name} server said: {line[:300]}")
            runs[s.name].rounds.append(result)
            say(
                f"http {describe(s)} {s.name} round {r + 1}/{rounds}: {result['rps']:.0f} req/s, "
                f"p50 {result['p50_us'] / 1000:.2f} ms, p99 {result['p99_us'] / 1000:.2f} ms, "
                f"server CPU {result['server_cpu_us']:.0f} µs/req"
            )
    kinds = sorted({describe(s) for s in servers})
    setup = {
        "tool": tool if tool == "wrk" else "bench/loadgen.py (wrk not installed)",
        "threads": threads,
        "connections": connections,
        "seconds": seconds,
        "keys": keys,
        "server": f"{', '.join(kinds)} ({server_stack()})",
    }
    return list(runs.values()), setup


def ratios(runs: Sequence[Run], baseline: str = "bare") -> dict[str, dict[str, float]]:
    """Per server: median over rounds of rps / the baseline's rps and p99 / its p99."""
    by = {r.name: r for r in runs}
    bare = by.get(baseline)
    out: dict[str, dict[str, float]] = {}
    if bare is None or not bare.rounds:
        return out
    for run in runs:
        if run.skip or not run.rounds:
            continue
        pairs = list(zip(run.rounds, bare.rounds, strict=False))
        out[run.name] = {
            "rps": statistics.median(a["rps"] / b["rps"] for a, b in pairs),
            "p99": statistics.median(a["p99_us"] / b["p99_us"] for a, b in pairs),
        }
    return out
