"""Real servers for the slow tests: a private Redis, a private PostgreSQL cluster, and a
uvicorn running an example app with several workers.

Each can be stopped and started again on the same port and data, to play an outage or a
restart; Redis and PostgreSQL can also be paused (SIGSTOP) and resumed, to play a frozen
host. Every wait is bounded; every process is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette

ROOT = Path(__file__).resolve().parent.parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], bool], what: str, timeout: float = 30.0, interval: float = 0.01
) -> None:
    """Call `check()` until it is true, or raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not ready after {timeout} s")
        time.sleep(interval)


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _state(pid: int) -> str:
    """A process's state letter from /proc (`T` when stopped), `X` once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return stat.rsplit(")", 1)[1].split()[0]


def children(pid: int) -> list[int]:
    """The pids of the processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def freeze(pids: Iterable[int]) -> None:
    """SIGSTOP each process, and wait until every one is stopped (or gone)."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: all(_state(p) in "TtXZ" for p in pids), "SIGSTOP", timeout=5, interval=0.01)


def thaw(pids: Iterable[int]) -> None:
    """SIGCONT each process."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


# -- Redis ------------------------------------------------------------------------------


class RedisServer:
    """`redis-server` on a free port, nothing saved to disk."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def limits_url(self) -> str:
        return f"async+redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                s.settimeout(0.5)
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(self.ping, f"redis-server on port {self.port}", timeout=15)

    def pause(self) -> None:
        """SIGSTOP: the server hangs, its connections open, as on a frozen host."""
        assert self.process is not None
        freeze([self.process.pid])

    def resume(self) -> None:
        """SIGCONT after `pause`: the server answers what it was sent meanwhile."""
        assert self.process is not None
        thaw([self.process.pid])

    def kill(self) -> None:
        """SIGKILL: the server vanishes, as in a crash."""
        if self.process is not None:
            _stop(self.process, signal.SIGKILL)
            self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# -- PostgreSQL -------------------------------------------------------------------------


class PostgresServer:
    """A throwaway PostgreSQL cluster (`initdb`) on a free port, trust auth, user postgres.

    PostgreSQL refuses to run as root: when we are root, the cluster belongs to the
    `postgres` user and its commands run through `runuser`.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mw-pg-"))
        self.data = self.dir / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str, timeout: float = 60) -> None:
        done = subprocess.run(
            [*self._as, *command], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stdout}\n{done.stderr}")

    def init(self) -> None:
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.dir / "log"), "-w", "-t", "30", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: sessions are cut, the server is gone until `start`."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def postmaster(self) -> int:
        """The postmaster's pid (the first line of postmaster.pid)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def pause(self) -> None:
        """SIGSTOP the postmaster, then every process it forked (backends, writers): the
        server hangs with its connections open, as on a frozen host."""
        postmaster = self.postmaster()
        freeze([postmaster])  # first: once stopped, it forks no backend after we look
        freeze(children(postmaster))

    def resume(self) -> None:
        """SIGCONT to the processes `pause` stopped."""
        postmaster = self.postmaster()
        thaw([*children(postmaster), postmaster])

    def __enter__(self) -> PostgresServer:
        try:
            self.init()
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.running():
                self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- uvicorn ----------------------------------------------------------------------------

_LOG_CONFIG = """{
  "version": 1,
  "disable_existing_loggers": false,
  "formatters": {"pid": {"format": "%(process)d %(name)s %(levelname)s %(message)s"}},
  "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "pid",
                       "stream": "ext://sys.stdout"}},
  "loggers": {
    "uvicorn": {"handlers": ["out"], "level": "INFO", "propagate": false},
    "uvicorn.access": {"handlers": ["out"], "level": "INFO", "propagate": false},
    "meterware": {"handlers": ["out"], "level": "WARNING", "propagate": false}
  }
}"""


class Uvicorn:
    """`uvicorn --app-dir examples/<example> app:app --workers N`, logging to a file.

    Every access-log line starts with the pid of the worker that served it, so a test can
    tell which workers took traffic.
    """

    def __init__(
        self,
        example: str,
        env: dict[str, str],
        workdir: Path,
        workers: int = 2,
        app_dir: str | None = None,
        target: str = "app:app",
        python: Sequence[str] = (sys.executable,),
    ):
        self.example = example
        self.app_dir = app_dir or f"examples/{example}"
        self.target = target
        self.python = list(python)  # the interpreter's command line (another user's, say)
        self.env = env
        self.workers = workers
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"uvicorn-{self.port}.log"
        self.log_config = workdir / "log-config.json"
        self.log_config.write_text(_LOG_CONFIG)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [*self.python, "-m", "uvicorn", "--app-dir", self.app_dir,
             self.target, "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", str(self.workers), "--log-config", str(self.log_config)],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()  # the child has its own copy

        def since_start() -> str:
            return self.log.read_bytes()[offset:].decode(errors="replace")

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn exited:\n{since_start()[-3000:]}")
            # Every worker up, not only the first to answer.
            return since_start().count("Application startup complete") >= self.workers

        wait_for(ready, "uvicorn workers", timeout=30, interval=0.1)
        assert httpx.get(f"{self.base}/health", timeout=5).status_code == 200

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the master (graceful: each worker runs its lifespan shutdown); the
        exit status."""
        assert self.process is not None
        process, self.process = self.process, None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            raise

    def kill(self) -> None:
        if self.process is not None:
            _stop(self.process, signal.SIGTERM)
            self.process = None

    def served_by(self, path: str) -> dict[str, int]:
        """Access-log lines for `path`, counted by worker pid."""
        counts: dict[str, int] = {}
        for line in self.log.read_text().splitlines():
            if "uvicorn.access" in line and f" {path} " in line:
                pid = line.split(" ", 1)[0]
                counts[pid] = counts.get(pid, 0) + 1
        return counts

    @contextlib.contextmanager
    def running(self) -> Iterator[Uvicorn]:
        self.start()
        try:
            yield self
        finally:
            self.kill()


class Served:
    """A Starlette app under uvicorn in a background thread, on 127.0.0.1 and a port it
    keeps across `stop()` and `start()`."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by accepted connections: without it every answer waits ~40 ms for a
        # delayed ACK (Nagle), as uvicorn does not set it on sockets it is handed.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False,
            lifespan="off", ws="none", timeout_graceful_shutdown=1,
        )  # fmt: skip
        server = uvicorn.Server(config)  # not the main thread: no signal handlers
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"uvicorn-{self.port}"
        )
        thread.start()
        wait_for(lambda: server.started or not thread.is_alive(), f"uvicorn on {self.port}", 10)
        if not server.started:
            sock.close()
            raise RuntimeError(f"uvicorn did not start on port {self.port}")
        self._server, self._thread, self._socket = server, thread, sock

    def stop(self) -> None:
        """Stop serving: the port refuses connections until `start()`."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
