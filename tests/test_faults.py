"""A fault battery under real servers: stores frozen (SIGSTOP), killed, locked, made
read-only, deleted, half-broken, and keys made up by the thousand.

Each test holds meterware to its documented bounds, as correctness claims:

- every answer within `storage_timeout` (plus a slack for the loop, the client and the
  OS), and, after the first failure, fast ones: the breaker fails calls at once for
  `probe_interval`, then lets one probe through;
- a concern that fails open lets requests through; one that fails closed answers 503
  STORAGE_UNAVAILABLE with Retry-After: 5; a warning once per outage, not per request;
- after recovery (and the probe interval), everything passes again without a restart,
  and every admitted call is in the ledger.

The tests use small timeouts (`TIMEOUT`, `PROBE`) to stay fast, and print what they
measured (run with `-s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import secrets
import shutil
import signal
import stat
import statistics
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from meterware import Admin
from meterware.keys import ApiKey, new_secret
from meterware.storage import Storage, storage_from_url
from tests.backends import require_postgres, unavailable
from tests.servers import PG_BIN, PostgresServer, RedisServer, Uvicorn
from tests.test_scale_out import cli
from tests.utils import bearer, new_key, runtime_of, serve, starlette_app

TIMEOUT = 0.5  # storage_timeout of the apps under test
PROBE = 0.3  # probe_interval
SLACK = 0.25  # what the loop, the client and the OS may add to a bound
BOUND = TIMEOUT + SLACK  # the longest any answer may take
FAST = 0.05  # an answer that waited for no store (in process)
FAILING_FAST = {"storage_timeout": TIMEOUT, "probe_interval": PROBE}
UNAVAILABLE = (503, "STORAGE_UNAVAILABLE")
UNAUTHORIZED = (401, "UNAUTHORIZED")
LIMITED = (429, "RATE_LIMITED")
CREDITS = 30  # what POST /image costs


def clock() -> float:
    return time.time()


# -- requests, timed ---------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    code: Any  # the status, with the error code of a refusal
    seconds: float
    retry_after: str | None


def code_of(response: httpx.Response) -> Any:
    if response.status_code < 400:
        return response.status_code
    return response.status_code, response.json()["error"]["code"]


class Traffic:
    """Timed requests (POST /image) by named keys to an app in process; the 200s counted
    by name."""

    def __init__(self, client: httpx.AsyncClient, secret_of: dict[str, str]) -> None:
        self.client = client
        self.secret_of = secret_of
        self.admitted: Counter[str] = Counter()

    async def ask(self, name: str) -> Answer:
        start = time.monotonic()
        response = await asyncio.wait_for(
            self.client.post("/image", headers=bearer(self.secret_of[name])), timeout=15
        )
        answer = Answer(
            code_of(response), time.monotonic() - start, response.headers.get("retry-after")
        )
        self.admitted[name] += answer.code == 200
        return answer

    async def series(self, name: str, n: int) -> list[Any]:
        return [(await self.ask(name)).code for _ in range(n)]

    async def rounds(self, names: Sequence[str], seconds: float, gap: float = 0.1) -> Rounds:
        """A request of each key in turn, a `gap` between rounds, for `seconds`."""
        answers: dict[str, list[Answer]] = {name: [] for name in names}
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            for name in names:
                answers[name].append(await self.ask(name))
            await asyncio.sleep(gap)
        return Rounds(answers, time.monotonic() - start)

    async def recovered(self, names: Sequence[str], since: float, timeout: float = 10) -> float:
        """Ask with each key until it gets a 200 (never again once it did); the seconds
        from `since` (a `time.monotonic()`) until every key had one."""
        waiting = {name: Answer(None, 0.0, None) for name in names}
        while waiting:
            if time.monotonic() - since > timeout:
                pytest.fail(f"still refused {timeout} s after recovery: {waiting}")
            waiting = {name: await self.ask(name) for name in waiting}
            waiting = {name: answer for name, answer in waiting.items() if answer.code != 200}
            await asyncio.sleep(0.02)
        return time.monotonic() - since


@dataclass
class Rounds:
    answers: dict[str, list[Answer]]
    seconds: float

    def codes(self, name: str) -> list[Any]:
        return [a.code for a in self.answers[name]]

    def describe(self) -> str:
        return "; ".join(f"{name} {describe(a)}" for name, a in self.answers.items())


def describe(answers: Sequence[Answer]) -> str:
    took = [a.seconds * 1000 for a in answers]
    return (
        f"{dict(Counter(a.code for a in answers))} in {ms(statistics.median(took))} median, "
        f"{ms(max(took))} max"
    )


def ms(value: float) -> str:
    return f"{value:.1f} ms"


def slow(answers: Sequence[Answer]) -> list[float]:
    """The times of the answers that waited for a store (rounded to ms)."""
    return [round(a.seconds, 3) for a in answers if a.seconds > FAST]


def probes_allowed(seconds: float, failing: float = TIMEOUT) -> int:
    """How many calls may reach a failing store during `seconds`: the first, then one
    probe a probe interval after each failed call (which took `failing` seconds: the
    timeout for a store that hangs, none for one that refuses connections)."""
    return 1 + int(seconds / (PROBE + failing)) + 1  # (+1: a probe the window cuts in two)


def check_fails_fast(answers: Sequence[Answer], seconds: float) -> None:
    """Every answer within the bound; the one after the first failure at once (the
    breaker is open), and past it only probes wait (for a store that hangs)."""
    assert max(a.seconds for a in answers) <= BOUND, [a.seconds for a in answers]
    assert answers[1].seconds <= FAST
    assert len(slow(answers)) <= probes_allowed(seconds), slow(answers)


def logged(caplog: pytest.LogCaptureFixture, text: str, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level and text in r.getMessage()]


async def ledger(store: Storage, keys: dict[str, ApiKey]) -> dict[str, tuple[int, int, int]]:
    """(requests, calls, credits) of each key, as stored."""
    out = {}
    for name, key in keys.items():
        totals = await store.key_totals(key.id)
        out[name] = (totals.requests, totals.calls, totals.credits)
    return out


def expected_ledger(
    admitted: Counter[str], names: Sequence[str]
) -> dict[str, tuple[int, int, int]]:
    """What the ledger must hold: every admitted POST /image, charged."""
    return {name: (admitted[name], admitted[name], CREDITS * admitted[name]) for name in names}


async def make_keys(store: Storage, **specs: dict[str, Any]) -> dict[str, tuple[ApiKey, str]]:
    return {name: await new_key(store, clock, **fields) for name, fields in specs.items()}


def by_name(keys: dict[str, tuple[ApiKey, str]]) -> tuple[dict[str, ApiKey], dict[str, str]]:
    return {n: k for n, (k, _) in keys.items()}, {n: s for n, (_, s) in keys.items()}


# The keys of the scenarios where the main store fails: one whose units are at hand (an
# enterprise key takes its monthly quota in blocks of 1000, so once warm it needs no
# store), one that needs the store for every request (monthly limit 50: one unit per
# reservation), one not cached yet. Every attempt, refused or not, takes a unit of the
# minute: their per-minute limits are out of the way.
STORE_BOUND_KEYS = {
    "warm": {"tier": "enterprise", "per_minute": 100_000},
    "small": {"monthly_limit": 50, "per_minute": 100_000},
    "fresh": {"per_minute": 100_000},
}


def check_main_store_outage(outage: Rounds) -> None:
    """The warm key passes at once; the others get 503 + Retry-After: 5, within the
    bound, and fast once the breaker is open."""
    assert outage.codes("warm") == [200] * len(outage.answers["warm"])
    assert max(a.seconds for a in outage.answers["warm"]) <= FAST
    for name in ("small", "fresh"):
        assert outage.codes(name) == [UNAVAILABLE] * len(outage.answers[name]), name
        assert {a.retry_after for a in outage.answers[name]} == {"5"}
    check_fails_fast(outage.answers["small"] + outage.answers["fresh"], outage.seconds)


# -- PostgreSQL frozen -------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster for this module, that a test may freeze."""
    if not (PG_BIN / "initdb").exists():
        unavailable(f"no PostgreSQL binaries in {PG_BIN}")
    with PostgresServer() as server:
        yield server


@pytest.fixture
async def frozen_pg_store(private_postgres: PostgresServer) -> AsyncIterator[Storage]:
    """An open store on a fresh schema of the private PostgreSQL, thawed afterwards
    whatever the test did to the server."""
    store = storage_from_url(f"{private_postgres.url}?schema=mw_{secrets.token_hex(4)}")
    await store.open()
    try:
        yield store
    finally:
        await asyncio.to_thread(private_postgres.resume)
        await store.close()


FROZEN = 10 * TIMEOUT + 1.0  # past a flush's bound: the write of the warm key's calls is in doubt


@pytest.mark.slow
@pytest.mark.postgres
async def test_postgres_frozen_mid_traffic(
    private_postgres: PostgresServer, frozen_pg_store: Storage, caplog: pytest.LogCaptureFixture
):
    """PostgreSQL frozen: warm key passes, others 503 in bound, then fast; thawed: all, no loss."""
    store = frozen_pg_store
    keys, secret_of = by_name(await make_keys(store, **STORE_BOUND_KEYS))
    # per-minute windows in process: only the main store's outage is played here
    app = starlette_app(store, clock, rate_limit_storage="local://", **FAILING_FAST)
    caplog.set_level(logging.WARNING, logger="meterware")
    async with serve(app) as client:
        traffic = Traffic(client, secret_of)
        assert await traffic.series("warm", 3) + await traffic.series("small", 3) == [200] * 6

        await asyncio.to_thread(private_postgres.pause)
        try:
            outage = await traffic.rounds(["warm", "small", "fresh"], seconds=FROZEN)
            warnings = {
                text: len(logged(caplog, text))
                for text in ("calls fail fast", "answering 503", "usage flush failed")
            }
        finally:
            await asyncio.to_thread(private_postgres.resume)
        thawed = time.monotonic()
        lag = await traffic.recovered(["small", "fresh", "warm"], since=thawed)
        after = await traffic.rounds(["warm", "small", "fresh"], seconds=0.3)
    stored = await ledger(store, keys)  # after the graceful stop: every flush done

    print(
        f"\nPostgreSQL frozen {outage.seconds:.2f} s: {outage.describe()}; answers that "
        f"waited: {slow(outage.answers['small'] + outage.answers['fresh'])} s; warnings "
        f"{warnings}\n  thawed: every key admitted after {lag:.2f} s; then {after.describe()}"
        f"\n  admitted {dict(traffic.admitted)}, ledger (requests, calls, credits) {stored}"
    )
    check_main_store_outage(outage)
    assert warnings == {"calls fail fast": 1, "answering 503": 1, "usage flush failed": 1}
    assert lag <= PROBE + BOUND
    assert all(c == 200 for name in after.answers for c in after.codes(name))
    assert stored == expected_ledger(traffic.admitted, list(keys))


# -- Redis frozen, Redis killed ----------------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server, killed afterwards (thawed first if a test froze it)."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not on PATH")
    with RedisServer() as server:
        try:
            yield server
        finally:
            if server.process is not None:
                server.resume()


MINUTE_KEYS = {name: {"per_minute": 3} for name in ("before", "during", "after")}


def minute_app(store: Storage, redis: RedisServer) -> Any:
    """An app whose per-minute windows live in the private Redis."""
    return starlette_app(store, clock, rate_limit_storage=redis.limits_url, **FAILING_FAST)


def check_fails_open(outage: Rounds) -> None:
    """Every request passes (the per-minute limit fails open) within the bound, and
    fast once the breaker is open."""
    answers = outage.answers["during"]
    assert outage.codes("during") == [200] * len(answers)
    check_fails_fast(answers, outage.seconds)


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.sqlite
async def test_redis_frozen_fails_open_then_limits_again(
    sqlite_store: Storage, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
):
    """Redis frozen: requests pass, first in bound, next fast; one warning; thawed: limits again."""
    keys, secret_of = by_name(await make_keys(sqlite_store, **MINUTE_KEYS))
    app = minute_app(sqlite_store, redis_server)
    caplog.set_level(logging.WARNING, logger="meterware")
    async with serve(app) as client:
        traffic = Traffic(client, secret_of)
        before = await traffic.series("before", 4)
        await asyncio.to_thread(redis_server.pause)
        try:
            outage = await traffic.rounds(["during"], seconds=1.5, gap=0.02)
        finally:
            await asyncio.to_thread(redis_server.resume)
        await asyncio.sleep(PROBE)
        after = await traffic.series("after", 4)
        during_after = await traffic.series("during", 4)
    stored = await ledger(sqlite_store, keys)

    failed, back = (
        logged(caplog, "rate limit storage failed"),
        logged(caplog, "rate limit storage is back"),
    )
    print(
        f"\nRedis frozen {outage.seconds:.2f} s: {outage.describe()}; answers that waited: "
        f"{slow(outage.answers['during'])} s\n  before {before}; thawed, a fresh key: {after}; "
        f"the key used during the outage: {during_after}\n  warnings {failed} then {back}; "
        f"admitted {dict(traffic.admitted)}, ledger {stored}"
    )
    assert before == [200, 200, 200, LIMITED]
    check_fails_open(outage)
    assert len(failed) == 1 and len(back) == 1
    assert after == [200, 200, 200, LIMITED]
    assert during_after[-1] == LIMITED  # its window's units taken while frozen may count
    assert stored == expected_ledger(traffic.admitted, list(keys))


def count_calls(target: Any, method: str) -> list[float]:
    """Wrap `target.method` so that each call's start time is appended to the list."""
    calls: list[float] = []
    original = getattr(target, method)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        return original(*args, **kwargs)

    setattr(target, method, counted)
    return calls


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.sqlite
async def test_redis_killed_fails_open_fast_then_limits_again(
    sqlite_store: Storage, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
):
    """Redis killed: requests pass fast, no Redis call per request; restarted: limits return."""
    keys, secret_of = by_name(await make_keys(sqlite_store, **MINUTE_KEYS))
    app = minute_app(sqlite_store, redis_server)
    redis_calls = count_calls(runtime_of(app).minutes.store.store, "reserve")
    caplog.set_level(logging.WARNING, logger="meterware")
    async with serve(app) as client:
        traffic = Traffic(client, secret_of)
        before = await traffic.series("before", 4)
        await asyncio.to_thread(redis_server.kill)
        calls_before = len(redis_calls)
        outage = await traffic.rounds(["during"], seconds=1.5, gap=0.02)
        calls_during = len(redis_calls) - calls_before
        await asyncio.to_thread(redis_server.start)
        await asyncio.sleep(PROBE)
        after = await traffic.series("after", 4)
    stored = await ledger(sqlite_store, keys)

    answers = outage.answers["during"]
    median = statistics.median(a.seconds for a in answers)
    print(
        f"\nRedis killed {outage.seconds:.2f} s: {outage.describe()}; {calls_during} calls "
        f"to Redis for {len(answers)} requests; answers that waited: {slow(answers)} s"
        f"\n  before {before}; restarted, a fresh key: {after}; warnings "
        f"{logged(caplog, 'rate limit storage')}; admitted {dict(traffic.admitted)}, "
        f"ledger {stored}"
    )
    assert before == [200, 200, 200, LIMITED]
    check_fails_open(outage)
    assert median < FAST
    assert calls_during <= probes_allowed(outage.seconds, failing=0.0)
    assert after == [200, 200, 200, LIMITED]
    assert stored == expected_ledger(traffic.admitted, list(keys))


# -- SQLite locked, read-only, deleted ---------------------------------------------------

LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


@contextlib.asynccontextmanager
async def write_locked(path: str, seconds: float) -> AsyncIterator[None]:
    """Another process holds the SQLite write lock (`BEGIN IMMEDIATE`) for `seconds`;
    on exit, that process has ended (the lock is free)."""
    locker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, path, str(seconds), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert await asyncio.wait_for(locker.stdout.readline(), timeout=10) == b"locked\n"
        yield
    finally:
        try:
            await asyncio.wait_for(locker.communicate(), timeout=seconds + 10)
        except asyncio.TimeoutError:
            locker.kill()
            await locker.communicate()


def sqlite_url(store: Storage) -> str:
    """The URL of a SQLite store's file: an app given it opens a store of its own, with
    `busy_timeout` = its `storage_timeout`, as in production."""
    return f"sqlite:///{store.path}"  # type: ignore[attr-defined]


@pytest.mark.slow
@pytest.mark.sqlite
async def test_sqlite_locked_by_another_process(
    sqlite_store: Storage, caplog: pytest.LogCaptureFixture
):
    """SQLite write-locked elsewhere: writes 503 in bound, warm key passes; then all, no loss."""
    keys, secret_of = by_name(await make_keys(sqlite_store, **STORE_BOUND_KEYS))
    app = starlette_app(
        sqlite_url(sqlite_store), clock, rate_limit_storage="local://", **FAILING_FAST
    )
    caplog.set_level(logging.WARNING, logger="meterware")
    async with serve(app) as client:
        traffic = Traffic(client, secret_of)
        assert await traffic.series("warm", 3) + await traffic.series("small", 3) == [200] * 6
        async with write_locked(sqlite_store.path, seconds=3.0):  # type: ignore[attr-defined]
            outage = await traffic.rounds(["warm", "small", "fresh"], seconds=2.5)
        released = time.monotonic()
        lag = await traffic.recovered(["small", "fresh", "warm"], since=released)
        after = await traffic.rounds(["warm", "small", "fresh"], seconds=0.3)
    stored = await ledger(sqlite_store, keys)

    print(
        f"\nSQLite write-locked {outage.seconds:.2f} s of traffic: {outage.describe()}; "
        f"answers that waited: {slow(outage.answers['small'] + outage.answers['fresh'])} s"
        f"\n  released: every key admitted after {lag:.2f} s; then {after.describe()}"
        f"\n  warnings {[m[:90] for m in logged(caplog, '')]}"
        f"\n  admitted {dict(traffic.admitted)}, ledger {stored}"
    )
    check_main_store_outage(outage)
    assert lag <= PROBE + BOUND
    assert all(c == 200 for name in after.answers for c in after.codes(name))
    assert stored == expected_ledger(traffic.admitted, list(keys))


@pytest.mark.sqlite
async def test_sqlite_file_deleted_under_a_running_app(
    sqlite_store: Storage, caplog: pytest.LogCaptureFixture
):
    """The .db, -wal and -shm deleted under a running app: the next upkeep logs an ERROR."""
    _, secret = await new_key(sqlite_store, clock)
    path = Path(sqlite_store.path)  # type: ignore[attr-defined]
    app = starlette_app(sqlite_url(sqlite_store), clock, **FAILING_FAST)
    caplog.set_level(logging.WARNING, logger="meterware")
    async with serve(app) as client:
        traffic = Traffic(client, {"key": secret})
        before = await traffic.series("key", 2)
        files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
        for file in files:
            file.unlink()
        deleted = time.monotonic()
        await runtime_of(app).upkeep()  # what the background task runs every second
        errors = logged(caplog, "deleted or replaced", level=logging.ERROR)
        noticed = time.monotonic() - deleted
        after = await traffic.ask("key")

    print(
        f"\nSQLite files deleted ({[f.name for f in files]}): ERROR after {ms(noticed * 1000)}: "
        f"{errors}\n  before {before}; afterwards the key gets {after.code} in "
        f"{ms(after.seconds * 1000)}"
    )
    assert before == [200, 200]
    assert len(errors) == 1 and noticed < 2.0
    assert after.seconds <= BOUND and after.code != 500


# -- SQLite read-only at startup, under uvicorn as an unprivileged user ----------------

SITES = "/api/external/v1/websites"  # of the Starlette example app
SRC = str(Path(__file__).resolve().parent.parent / "src")


def unprivileged_python() -> list[str]:
    """The command line of this Python as `nobody`: the system interpreter of the same
    version with the virtualenv's packages (the virtualenv's interpreter lives under
    /root, which `nobody` cannot enter)."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run uvicorn as nobody and hand files over")
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists() or shutil.which("setpriv") is None:
        pytest.skip(f"no {system} or no setpriv: cannot run this Python as nobody")
    nobody = pwd.getpwnam("nobody")
    return [
        "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
        str(system), "-s",
    ]  # fmt: skip


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh directory anyone may write in (mode 0777), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="mw-faults-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def get(client: httpx.Client, secret: str) -> Answer:
    start = time.monotonic()
    response = client.get(SITES, headers={"X-API-Key": secret})
    return Answer(code_of(response), time.monotonic() - start, response.headers.get("retry-after"))


def timed_gets(client: httpx.Client, secret: str, seconds: float, gap: float = 0.1) -> list[Answer]:
    answers: list[Answer] = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        answers.append(get(client, secret))
        time.sleep(gap)
    return answers


def lines(log: Path, text: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if text in line]


@pytest.mark.slow
@pytest.mark.sqlite
def test_sqlite_read_only_at_startup_then_writable(shared_dir: Path):
    """nobody, root-owned 0644 SQLite: startup warning, 503 fast; chown: admitted, no restart."""
    python = unprivileged_python()
    db = shared_dir / "meterware.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
    env["METERWARE_STORAGE"] = f"sqlite:///{db}"
    key = cli("keys", "create", "--name", "ro", "--tier", "pro", env=env)  # as root
    mode = db.stat()
    assert (mode.st_uid, stat.S_IMODE(mode.st_mode)) == (0, 0o644)
    paths = [SRC, sysconfig.get_paths()["purelib"]]
    server = Uvicorn(
        "starlette_app", {**env, "PYTHONPATH": os.pathsep.join(paths)}, shared_dir,
        workers=1, python=python,
    )  # fmt: skip
    with server.running(), httpx.Client(base_url=server.base, timeout=15) as client:
        read_only = timed_gets(client, key["key"], seconds=2.0)  # a few flushes' time
        outage_log = server.log.read_text()
        nobody = pwd.getpwnam("nobody")
        for file in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            if file.exists():
                os.chown(file, nobody.pw_uid, nobody.pw_gid)
        writable = time.monotonic()
        answers = [get(client, key["key"])]
        while answers[-1].code != 200:
            assert time.monotonic() - writable < 5, describe(answers)
            time.sleep(0.05)
            answers.append(get(client, key["key"]))
        lag = time.monotonic() - writable
        admitted = 1 + sum(get(client, key["key"]).code == 200 for _ in range(5))
        stopped = server.stop()
    totals = cli("keys", "show", key["id"], env=env)["quota"]["total_requests"]
    startup = [line for line in outage_log.splitlines() if "cannot be written" in line]
    per_outage = [line for line in outage_log.splitlines() if "answering 503" in line]

    print(
        f"\nSQLite read-only for nobody: startup warning {startup}; {describe(read_only)}, "
        f"Retry-After { ({a.retry_after for a in read_only}) }; '503' warnings in the outage: "
        f"{len(per_outage)}, 'is back' {outage_log.count('usage storage is back')}\n  chown "
        f"nobody: admitted after {lag:.2f} s ({describe(answers)}); admitted {admitted}, "
        f"ledger {totals}\n  uvicorn exit status {stopped}; the log's warnings and errors:"
        f"\n    " + "\n    ".join(lines(server.log, "WARNING") + lines(server.log, "ERROR"))
    )
    assert all(a.code == UNAVAILABLE and a.retry_after == "5" for a in read_only)
    assert max(a.seconds for a in read_only) <= 1.0 + SLACK  # the default storage_timeout
    assert {a.code for a in answers[:-1]} <= {UNAVAILABLE}
    assert lag <= 3.0
    assert totals == admitted
    # uvicorn alone re-raises the SIGTERM it handled, once its graceful shutdown is done
    assert stopped in (0, -signal.SIGTERM) and lines(server.log, "Application shutdown complete")
    assert not lines(server.log, "Traceback")
    assert (len(startup), len(per_outage)) == (1, 1)  # (a warning at startup, one per outage)


# -- ledger writes failing, reads working (PostgreSQL privileges) ------------------------


@contextlib.asynccontextmanager
async def role_that_cannot_write_usage(server_url: str) -> AsyncIterator[tuple[str, Storage]]:
    """A role of its own on a schema of its own, that may read and write every table but
    may not INSERT or UPDATE `usage_daily`; its URL, and a store on that schema as the
    server's user (which created the tables). Dropped afterwards."""
    import asyncpg

    name = f"mw_faults_{secrets.token_hex(4)}"  # both the role's and the schema's
    parts = urlsplit(server_url)
    role_url = (
        f"postgresql://{name}@{parts.hostname}:{parts.port or 5432}{parts.path}?schema={name}"
    )
    conn = await asyncpg.connect(server_url)
    admin_store = storage_from_url(f"{server_url}?schema={name}")
    await conn.execute(f"CREATE ROLE {name} LOGIN")
    try:
        await admin_store.open()  # creates the tables, owned by the server's user
        await conn.execute(f"GRANT USAGE ON SCHEMA {name} TO {name}")
        await conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {name} TO {name}"
        )
        await conn.execute(f"REVOKE INSERT, UPDATE ON {name}.usage_daily FROM {name}")
        yield role_url, admin_store
    finally:
        await admin_store.close()
        await conn.execute(f"DROP OWNED BY {name}")
        await conn.execute(f"DROP ROLE IF EXISTS {name}")
        await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        await conn.close()


@pytest.mark.slow
@pytest.mark.postgres
async def test_revocation_arrives_while_flushes_fail(caplog: pytest.LogCaptureFixture):
    """Ledger writes denied, reads allowed: a revoked key gets 401 within key_refresh + slack."""
    key_refresh = 0.2
    async with role_that_cannot_write_usage(require_postgres()) as (role_url, admin_store):
        key, secret = await new_key(admin_store, clock, per_minute=100_000)
        app = starlette_app(
            role_url, clock, key_refresh=key_refresh, flush_interval=0.05, **FAILING_FAST
        )  # fmt: skip
        caplog.set_level(logging.WARNING, logger="meterware")
        async with serve(app) as client:
            rt = runtime_of(app)
            traffic = Traffic(client, {"key": secret})
            before = await traffic.series("key", 5)
            wait_for_failures = time.monotonic()
            while rt.meter.failures == 0:  # the flushes fail: usage_daily is not writable
                assert time.monotonic() - wait_for_failures < 5
                await asyncio.sleep(0.02)
            async with Admin(admin_store, clock=clock) as admin:
                await admin.revoke_key(key.id)
            revoked = time.monotonic()
            while (answer := await traffic.ask("key")).code == 200:
                assert time.monotonic() - revoked < 5, "the revocation never arrived"
                await asyncio.sleep(0.01)
            lag = time.monotonic() - revoked
            flushed, failures, pending = await rt.meter.flush(), rt.meter.failures, rt.meter.pending

    print(
        f"\nusage_daily not writable: before {before}; revoked key refused ({answer.code}) "
        f"after {lag:.3f} s (key_refresh {key_refresh} s); flush then: {flushed}, "
        f"{failures} failed flushes, {pending} aggregates pending; "
        f"warnings {[m[:80] for m in logged(caplog, 'usage')]}"
    )
    assert before == [200] * 5
    assert answer.code == UNAUTHORIZED
    assert lag <= 1.5
    assert not flushed and failures > 1 and pending > 0


# -- made-up keys by the thousand --------------------------------------------------------


def corrupted(secret: str) -> str:
    """The secret with its last (checksum) character changed: right prefix and length,
    wrong checksum."""
    return secret[:-1] + ("0" if secret[-1] != "0" else "1")


@pytest.mark.sqlite
async def test_made_up_keys_cost_no_store_reads(sqlite_store: Storage):
    """10,000 bad-checksum secrets: 0 store reads; 1,000 unknown valid secrets × 10: 1 read each."""
    app = starlette_app(sqlite_store, clock)
    async with serve(app) as client:
        keys = runtime_of(app).keys
        assert keys is not None

        async def statuses(made_up: Sequence[str]) -> tuple[Counter[int], int]:
            before = keys.lookups
            answers: Counter[int] = Counter()
            for secret in made_up:
                answers[(await client.get("/hello", headers=bearer(secret))).status_code] += 1
            return answers, keys.lookups - before

        start = time.monotonic()
        bad, bad_lookups = await statuses([corrupted(new_secret()) for _ in range(10_000)])
        unknown = [new_secret() for _ in range(1_000)]
        repeated, unknown_lookups = await statuses(unknown * 10)
        seconds = time.monotonic() - start

    print(
        f"\nmade-up keys ({seconds:.1f} s): 10,000 with a bad checksum -> {dict(bad)}, "
        f"{bad_lookups} store reads; 1,000 unknown valid secrets × 10 -> {dict(repeated)}, "
        f"{unknown_lookups} store reads"
    )
    assert bad == {401: 10_000} and bad_lookups == 0
    assert repeated == {401: 10_000} and unknown_lookups == 1_000
