"""Part 2: the same apps over HTTP: uvicorn, one worker, loaded from another process.

Each variant runs in its own `uvicorn --factory bench.apps:http_* --workers 1
--log-level warning --no-access-log` subprocess on a free loopback port. The load comes
from `wrk` (2 threads, 32 connections, `bench/keys.lua` rotating the API keys of a key
file), or, when wrk is not installed, from `bench/loadgen.py` (said in the output). Each
server first gets a warm-up run (every key's cache entry and quota lease filled), then
the measured run. Variants are interleaved over rounds, in rotating order.

Reported per variant: requests/s, p50 and p99 latency, the server's CPU time per
request (from /proc), and the ratios to bare Starlette of the same round.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fixtures import Stores, say

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "keys.lua"


@dataclass
class Server:
    name: str
    label: str
    factory: str
    store: str  # whose keys it is sent: "sqlite" or "postgres"
    skip: str | None = None


SERVERS = [
    Server("bare", "bare Starlette", "http_bare", "sqlite"),
    Server("slowapi", "+ slowapi (decorator, memory)", "http_slowapi", "sqlite"),
    Server("mw-sqlite", "+ meterware SQLite, full pipeline", "http_meterware_sqlite", "sqlite"),
    Server("mw-pg-redis", "+ meterware PostgreSQL + Redis", "http_meterware_postgres", "postgres"),
]


@dataclass
class Run:
    name: str
    label: str
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


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get(port: int, key: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET /bench HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode())
        return int(s.recv(64)[9:12])


@contextlib.contextmanager
def serve(server: Server, env: dict[str, str], log: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    command = [
        sys.executable, "-m", "uvicorn", "--factory", f"bench.apps:{server.factory}",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--log-level", "warning", "--no-access-log", "--app-dir", str(ROOT),
    ]  # fmt: skip
    with open(log, "ab") as err:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{server.name}: uvicorn exited ({proc.returncode}); see {log}")
            try:
                status = _get(port, env["BENCH_FIRST_KEY"])
                if status != 200:
                    raise RuntimeError(f"{server.name}: GET /bench answered {status}")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{server.name}: uvicorn did not start; see {log}") from None
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


def _load(tool: str, port: int, keyfile: Path, seconds: float, connections: int, threads: int):  # type: ignore[no-untyped-def]
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
            return json.loads(line[len("BENCHJSON ") :])
    raise RuntimeError(f"{tool} gave no result: {done.stdout[-500:]} {done.stderr[-500:]}")


async def run(
    stores: Stores,
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
    problem = await stores.postgres_ready()
    if problem is None:
        url, secrets = await stores.postgres(keys)
        env["BENCH_PG_URL"], env["BENCH_REDIS_URL"] = url, stores.redis_url
        keyfiles["postgres"] = stores.workdir / "keys-postgres.txt"
        keyfiles["postgres"].write_text("\n".join(secrets) + "\n")
    runs = {s.name: Run(s.name, s.label) for s in SERVERS}
    live = []
    for s in SERVERS:
        if s.store not in keyfiles:
            runs[s.name].skip = problem
        else:
            live.append(s)
    log = stores.workdir / "uvicorn.log"
    for r in range(rounds):
        order = live[r % len(live) :] + live[: r % len(live)]
        for s in order:
            keyfile = keyfiles[s.store]
            env["BENCH_FIRST_KEY"] = keyfile.read_text().split("\n", 1)[0]
            logged = log.stat().st_size if log.exists() else 0
            with serve(s, env, log) as (port, pid):
                _load(tool, port, keyfile, warm_seconds, connections, threads)
                cpu = _cpu_seconds(pid)
                result = _load(tool, port, keyfile, seconds, connections, threads)
                result["server_cpu_us"] = (_cpu_seconds(pid) - cpu) / result["requests"] * 1e6
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
                f"http {s.name} round {r + 1}/{rounds}: {result['rps']:.0f} req/s, "
                f"p50 {result['p50_us'] / 1000:.2f} ms, p99 {result['p99_us'] / 1000:.2f} ms, "
                f"server CPU {result['server_cpu_us']:.0f} µs/req"
            )
    setup = {
        "tool": tool if tool == "wrk" else "bench/loadgen.py (wrk not installed)",
        "threads": threads,
        "connections": connections,
        "seconds": seconds,
        "keys": keys,
        "server": f"uvicorn 1 worker ({server_stack()})",
    }
    return list(runs.values()), setup


def ratios(runs: Sequence[Run]) -> dict[str, dict[str, float]]:
    """Per variant: median over rounds of rps / bare's rps and p99 / bare's p99."""
    by = {r.name: r for r in runs}
    bare = by.get("bare")
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
