"""The exporter and `meterware export`: the usage outbox sent to files and to local
receivers that speak each billing system's wire format and deduplicate as it documents
(`tests.receivers`), through kills, flaky receivers and two exporters at once. What the
receivers keep is compared with the outbox event for event and with the ledger's sums.

The fast tests drive `Exporter` in process against a scripted sink on every backend; the
slow ones run `python -m meterware.cli export` as real processes against SQLite and
PostgreSQL, and once behind the Starlette example served by uvicorn.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cloudevents.core.v1.event import CloudEvent

import meterware.export.exporter as exporter_module
from meterware.clock import day_of, midnight
from meterware.errors import ConfigurationError, StorageUnavailable
from meterware.export import Delivery, Exporter, Sink, SinkUnavailable, UsageEvent
from meterware.keys import Account
from meterware.storage import Rollup, Storage, UsageBatch, storage_from_url
from meterware.storage.records import OutboxEvent
from tests.backends import PostgresBackend, require_postgres
from tests.receivers import DAY, LagoReceiver, OpenMeterReceiver, Receiver, StripeReceiver
from tests.servers import Uvicorn, wait_for
from tests.utils import FakeClock

T = TypeVar("T")

ACTIONS = ("search", "export", "")
KEYS = {
    "STRIPE_API_KEY": "sk_test_meterware",
    "OPENMETER_API_KEY": "om_test_meterware",
    "LAGO_API_KEY": "lago_test_meterware",
}
SINKS = ("stripe", "cloudevents", "lago")


# -- filling the outbox ---------------------------------------------------------------


async def fill(
    store: Storage, n: int, *, at: float | None = None, accounts: int = 3, per_flush: int = 7
) -> list[OutboxEvent]:
    """Write `n` outbox events as the ledger does (flushes of up to `per_flush` rollups,
    one second apart from `at`, default an hour ago) over `accounts` accounts, each
    created with an external id and a Stripe customer unless it exists; the new events.
    A quarter of them count no calls and no credits (a request admitted, then failed)."""
    for a in range(accounts):
        await store.ensure_account(
            Account(f"acct_{a}", external_id=f"ext_acct_{a}", stripe_customer_id=f"cus_acct_{a}")
        )
    at = time.time() - 3600 if at is None else at
    day = day_of(at).isoformat()
    first = await store.outbox_seq_before(float("inf"))
    written = flush = 0
    while written < n:
        rollups = []
        for j in range(min(per_flush, n - written)):
            i = written + j
            calls = i % 4
            rollups.append(Rollup(
                f"acct_{i % accounts}", f"key_{j}", ACTIONS[i % 3], day,
                calls=calls, credits=calls * (1 + i % 3), requests=1 + i % 5,
            ))  # fmt: skip
        await store.record(UsageBatch(rollups=rollups, outbox=True, time=at + flush))
        written += len(rollups)
        flush += 1
    return await store.outbox_after(first, n + 1)


async def ledger(store: Storage) -> dict[str, tuple[int, int, int]]:
    """The ledger's requests, calls and credits per account."""
    sums: dict[str, tuple[int, int, int]] = {}
    for r in await store.rollups():
        requests, calls, credits = sums.get(r.account_id, (0, 0, 0))
        sums[r.account_id] = (requests + r.requests, calls + r.calls, credits + r.credits)
    return sums


async def outbox(store: Storage) -> list[OutboxEvent]:
    return await store.outbox_after(0, 1_000_000)


def on_store(url: str, work: Callable[[Storage], Awaitable[T]]) -> T:
    """`work(store)` on a store opened on `url` for it (from a test that is not async)."""

    async def run() -> T:
        async with storage_from_url(url) as store:
            return await work(store)

    return asyncio.run(run())


@dataclass
class Stored:
    events: list[OutboxEvent]
    ledger: dict[str, tuple[int, int, int]]
    cursors: dict[str, int | None]


def stored(url: str, *readers: str) -> Stored:
    """The outbox, the ledger's sums and the readers' cursors, as stored now."""

    async def read(store: Storage) -> Stored:
        cursors = {name: await store.cursor(name) for name in readers}
        return Stored(await outbox(store), await ledger(store), cursors)

    return on_store(url, read)


# -- a sink whose answers a test decides -----------------------------------------------


class ScriptedSink(Sink):
    """Records each batch; fails the first `failures` sends; answers through `answer`
    (default: accepts everything); with `hold`, waits for it before answering."""

    name = "scripted"
    max_batch = 4

    def __init__(
        self,
        answer: Callable[[Sequence[UsageEvent]], Delivery] | None = None,
        *,
        failures: int = 0,
        hold: asyncio.Event | None = None,
        during: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.answer = answer
        self.failures = failures
        self.hold = hold
        self.during = during
        self.batches: list[list[UsageEvent]] = []
        self.held: dict[str, UsageEvent] = {}

    async def send(self, events: Sequence[UsageEvent]) -> Delivery:
        self.batches.append(list(events))
        if self.during is not None:
            await self.during()
        if self.hold is not None:
            await self.hold.wait()
        if self.failures:
            self.failures -= 1
            raise SinkUnavailable("scripted: down")
        delivery = self.answer(events) if self.answer else Delivery([e.id for e in events])
        self.held.update((e.id, e) for e in events if e.id in delivery.accepted)
        return delivery

    async def aclose(self) -> None:
        return None

    def seqs(self) -> list[list[int]]:
        return [[e.seq for e in batch] for batch in self.batches]


def fast(store: Storage, sink: Sink, **options: Any) -> Exporter:
    """An exporter whose backoff is milliseconds."""
    return Exporter(store, sink, backoff=0.01, max_backoff=0.02, **options)


# -- the exporter in process ----------------------------------------------------------


async def test_every_event_once_in_order(store: Storage):
    """10 events, batches of 4: sent as [1-4], [5-8], [9-10], the cursor at 10, nothing
    left; a second run sends nothing."""
    events = await fill(store, 10)
    sink = ScriptedSink()
    summary = await fast(store, sink).run(follow=False)
    assert sink.seqs() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [e.id for batch in sink.batches for e in batch] == [e.id for e in events]
    assert (summary.sent, summary.rejected, summary.position, summary.remaining) == (10, [], 10, 0)
    assert (summary.batches, summary.lease_held, summary.unavailable) == (3, False, None)
    assert await store.cursor("export:scripted") == 10
    again = await fast(store, sink).run(follow=False)
    assert len(sink.batches) == 3
    assert (again.sent, again.position, again.remaining) == (0, 10, 0)


async def test_events_carry_the_account_mappings_and_a_later_one_is_used(store: Storage):
    """Events carry their account's external id and Stripe customer; a customer added to
    the account after the first batch is on the next batch's events."""
    await store.ensure_account(Account("acct_0", external_id="ext_0"))
    await fill(store, 2, accounts=1)
    sink = ScriptedSink()
    exporter = fast(store, sink)
    await exporter.run_once()
    assert {(e.external_id, e.stripe_customer_id) for e in sink.batches[0]} == {("ext_0", None)}
    await store.update_account("acct_0", stripe_customer_id="cus_0")
    await fill(store, 2, accounts=1)
    await exporter.run_once()
    assert {(e.external_id, e.stripe_customer_id) for e in sink.batches[1]} == {("ext_0", "cus_0")}
    first = sink.batches[0][0]
    row = (await store.outbox_after(0, 1))[0]
    assert (first.id, first.seq, first.account_id, first.key_id, first.action, first.day) == (
        row.id, row.seq, row.account_id, row.key_id, row.action, row.day,
    )  # fmt: skip
    assert (first.requests, first.calls, first.credits, first.time) == (
        row.requests, row.calls, row.credits, row.time,
    )  # fmt: skip


async def test_rejected_events_are_recorded_logged_and_passed(store, caplog):
    """Events 2 and 5 rejected: recorded with their reason in the store, logged at ERROR
    one line each, in the summary; the cursor passes them and the rest are delivered."""
    events = await fill(store, 8)
    refused = {events[1].id: "too old (test)", events[4].id: "no customer (test)"}

    def answer(batch: Sequence[UsageEvent]) -> Delivery:
        return Delivery(
            [e.id for e in batch if e.id not in refused],
            {e.id: refused[e.id] for e in batch if e.id in refused},
        )

    sink = ScriptedSink(answer)
    with caplog.at_level(logging.INFO, logger="meterware"):
        summary = await fast(store, sink).run(follow=False)
    assert [(r.seq, r.id, r.reason) for r in summary.rejected] == [
        (2, events[1].id, "too old (test)"), (5, events[4].id, "no customer (test)"),
    ]  # fmt: skip
    assert [r.account_id for r in summary.rejected] == [events[1].account_id, events[4].account_id]
    noted = await store.rejections("export:scripted")
    assert [(seq, id, reason) for seq, id, reason, _ in noted] == [
        (r.seq, r.id, r.reason) for r in summary.rejected
    ]
    errors = [r.getMessage() for r in caplog.records
              if r.levelno == logging.ERROR and r.name.startswith("meterware")]  # fmt: skip
    assert len(errors) == 2
    assert all("REJECTED" in m and "\n" not in m for m in errors)
    assert refused[events[1].id] in errors[0] and events[4].id in errors[1]
    assert summary.sent == 6 and summary.position == 8
    assert set(sink.held) == {e.id for e in events} - set(refused)


async def test_the_cursor_stops_before_the_first_event_not_answered_for(store: Storage):
    """The sink answers for neither accepting nor rejecting event 3: the cursor moves to
    2, and events 3 and 4 (accepted or not) are sent again first next time."""
    events = await fill(store, 6)
    skip = {events[2].id}
    sink = ScriptedSink(lambda batch: Delivery([e.id for e in batch if e.id not in skip]))
    exporter = fast(store, sink)
    progress = await exporter.run_once()
    assert (progress.held, progress.read, progress.sent, progress.waiting) == (True, 4, 2, 2)
    assert progress.position == 2 and not progress.caught_up
    assert await store.cursor("export:scripted") == 2
    skip.clear()
    await exporter.run_once()
    assert sink.seqs() == [[1, 2, 3, 4], [3, 4, 5, 6]]
    assert await store.cursor("export:scripted") == 6


async def test_a_batch_answered_for_none_is_an_outage(store: Storage):
    """A sink that answers for none of the batch: `SinkUnavailable`, the cursor stays."""
    await fill(store, 3)
    exporter = fast(store, ScriptedSink(lambda batch: Delivery()))
    with pytest.raises(SinkUnavailable, match="none of the batch"):
        await exporter.run_once()
    assert await store.cursor("export:scripted") is None


async def test_a_lease_held_elsewhere_sends_nothing(store: Storage):
    """Another owner holds the lease: `run_once` sends nothing and says so, `run`
    without follow ends with `lease_held` and everything remaining; once it is
    released, the exporter sends."""
    await fill(store, 5)
    assert await store.take_lease("export:scripted", "other", now=time.time(), ttl=60)
    sink = ScriptedSink()
    exporter = fast(store, sink)
    assert (await exporter.run_once()).held is False
    summary = await exporter.run(follow=False)
    assert (summary.lease_held, summary.sent, summary.remaining) == (True, 0, 5)
    assert sink.batches == []
    await store.release_lease("export:scripted", "other")
    assert (await exporter.run(follow=False)).sent == 5


async def test_a_lease_lost_during_the_batch_does_not_move_the_cursor(store: Storage):
    """The lease expires during a batch and another owner takes it: the batch is not
    acknowledged (fencing); the new owner sends the same events again, by the same ids."""
    await fill(store, 4)
    clock = FakeClock()

    async def stolen() -> None:
        clock.advance(31)
        assert await store.take_lease("export:scripted", "other", now=clock(), ttl=30)

    sink = ScriptedSink(during=stolen)
    first = fast(store, sink, clock=clock, lease_ttl=30)
    progress = await first.run_once()
    assert (progress.held, progress.sent, progress.waiting) == (False, 0, 4)
    assert await store.cursor("export:scripted") is None
    sink.during = None
    second = fast(store, sink, clock=clock, owner="other")
    assert (await second.run_once()).sent == 4
    assert sink.batches[0] == sink.batches[1]
    assert await store.cursor("export:scripted") == 4


async def test_since_starts_a_new_reader_there_and_a_cursor_wins(store: Storage):
    """Events on three days: a new reader with `since` the second day starts there; the
    same reader later with an earlier `since` keeps its cursor; another reader without
    `since` starts at the beginning."""
    days = [midnight(date(2026, 4, d)) + 3600 for d in (10, 11, 12)]
    batches = [await fill(store, 3, at=t) for t in days]
    sink = ScriptedSink()
    summary = await fast(store, sink, since=midnight(date(2026, 4, 11))).run(follow=False)
    assert summary.sent == 6
    assert [e.id for b in sink.batches for e in b] == [e.id for e in batches[1] + batches[2]]
    more = await fill(store, 2, at=days[2] + 60)
    again = await fast(store, sink, since=days[0] - 3600).run(follow=False)
    assert again.sent == 2 and [e.id for e in sink.batches[-1]] == [e.id for e in more]
    other = ScriptedSink()
    assert (await fast(store, other, name="export:all").run(follow=False)).sent == 11


async def test_an_outage_backs_off_warns_once_and_recovers(store, caplog):
    """Three failed sends: one warning when the outage starts, one when it ends, the lag
    reported meanwhile; then everything is sent."""
    await fill(store, 6)
    lags: list[float] = []
    sink = ScriptedSink(failures=3)
    with caplog.at_level(logging.INFO, logger="meterware"):
        summary = await fast(store, sink, on_lag=lags.append).run(follow=False)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name.startswith("meterware")]  # fmt: skip
    assert len(warnings) == 2, warnings
    assert "scripted: down" in warnings[0] and "after 3 failed attempts" in warnings[1]
    assert (summary.sent, summary.failures, summary.unavailable) == (6, 3, None)
    assert lags[:3] == sorted(lags[:3]) and lags[0] > 3000  # an hour old, and growing
    assert lags[-1] == 0.0


async def test_without_follow_it_gives_up_after_the_retries(store: Storage):
    """A sink that stays down: after 1 + retries attempts `run` gives up, says why,
    acknowledges nothing, and releases the lease."""
    await fill(store, 3)
    summary = await fast(store, ScriptedSink(failures=100)).run(follow=False, retries=2)
    assert (summary.unavailable, summary.failures, summary.sent) == ("scripted: down", 3, 0)
    assert (summary.position, summary.remaining) == (0, 3)
    assert await store.take_lease("export:scripted", "other", now=time.time(), ttl=5)


async def test_the_lag_is_the_age_of_the_oldest_event_not_acknowledged(store: Storage):
    """Batch by batch, `on_lag` gets now minus the time of the next event to send, then 0."""
    clock = FakeClock()
    events = await fill(store, 6, at=clock() - 600, per_flush=1)  # one a second
    lags: list[float] = []
    exporter = fast(store, ScriptedSink(), clock=clock, on_lag=lags.append)
    await exporter.run(follow=False)
    assert lags == [clock() - events[4].time, 0.0]


async def test_the_lag_is_a_prometheus_gauge(store: Storage):
    """With metrics, the export command's lag goes to `meterware_exporter_lag_seconds`."""
    from prometheus_client import generate_latest

    from meterware.cli.export import _lag_to
    from meterware.metrics import Metrics
    from tests.test_metrics import parse

    clock = FakeClock()
    await fill(store, 3, at=clock() - 120, per_flush=1)
    metrics = Metrics()
    seen: list[float] = []

    def lag(seconds: float) -> None:
        _lag_to(metrics)(seconds)
        seen.append(parse(generate_latest(metrics.registry).decode())[
            "meterware_exporter_lag_seconds"][()])  # fmt: skip

    await fast(store, ScriptedSink(), clock=clock, on_lag=lag, batch=1).run(follow=False)
    assert seen == [119.0, 118.0, 0.0]


async def test_follow_sends_new_usage_until_stopped(store: Storage):
    """Following: what is written later is sent within a poll; `stop` ends the run, and
    the lease is released at once."""
    await fill(store, 5)
    sink = ScriptedSink()
    stop = asyncio.Event()
    task = asyncio.ensure_future(fast(store, sink).run(follow=True, poll=0.01, stop=stop))
    await until(lambda: len(sink.held) == 5)
    await fill(store, 3)
    await until(lambda: len(sink.held) == 8)
    stop.set()
    summary = await asyncio.wait_for(task, 5)
    assert (summary.sent, summary.position, summary.remaining) == (8, 8, 0)
    assert await store.take_lease("export:scripted", "other", now=time.time(), ttl=5)


async def test_a_stop_abandons_a_batch_in_flight(store, monkeypatch):
    """Stopped while the sink holds a batch past the grace period: the batch is
    abandoned, nothing is acknowledged, the lease is released."""
    monkeypatch.setattr(exporter_module, "GRACE", 0.05)
    await fill(store, 3)
    sink = ScriptedSink(hold=asyncio.Event())
    stop = asyncio.Event()
    task = asyncio.ensure_future(fast(store, sink).run(follow=True, stop=stop))
    await until(lambda: bool(sink.batches))
    stop.set()
    summary = await asyncio.wait_for(task, 5)
    assert (summary.sent, summary.position, summary.remaining) == (0, 0, 3)
    assert await store.cursor("export:scripted") is None
    assert await store.take_lease("export:scripted", "other", now=time.time(), ttl=5)


async def test_every_store_call_is_bounded(store: Storage):
    """A store that never answers the outbox read: `StorageUnavailable` within the
    timeout, and `run` gives up saying so."""

    class Hanging:
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        async def outbox_after(self, seq: int, limit: int) -> list[OutboxEvent]:
            await asyncio.Event().wait()
            return []

    exporter = fast(Hanging(), ScriptedSink(), timeout=0.05)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="no answer within"):
        await exporter.run_once()
    assert time.monotonic() - started < 1
    summary = await exporter.run(follow=False, retries=1)
    assert summary.unavailable is not None and "no answer within" in summary.unavailable


def test_options_are_checked():
    """A batch below 1, a lease or timeout of 0 are configuration errors."""
    for options in ({"batch": 0}, {"lease_ttl": 0}, {"timeout": 0}, {"backoff": 0}):
        with pytest.raises(ConfigurationError):
            Exporter(None, ScriptedSink(), **options)  # type: ignore[arg-type]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.005)


# -- the command, against the receivers -----------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL several processes share: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/meterware.db"
        return
    backend = PostgresBackend(require_postgres())
    yield backend.url
    asyncio.run(backend.cleanup())


def backend_of(url: str) -> str:
    return url.split(":", 1)[0]


RUNS = itertools.count()


class Export:
    """`python -m meterware.cli export ARGS --storage URL`, as many times as asked, each
    run's output kept in a file of `tmp_path`."""

    def __init__(
        self, tmp_path: Path, storage: str, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.command = [
            sys.executable,
            "-m",
            "meterware.cli",
            "export",
            *args,
            "--storage",
            storage,
        ]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
        self.env.update(KEYS if env is None else env)
        self.tmp_path = tmp_path
        self.outputs: list[tuple[Path, Path]] = []

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        n = next(RUNS)
        out, err = self.tmp_path / f"export-{n}.out", self.tmp_path / f"export-{n}.err"
        self.outputs.append((out, err))
        with out.open("wb") as stdout, err.open("wb") as stderr:
            return subprocess.Popen(
                [*self.command, *extra], env=self.env, cwd=self.tmp_path,
                stdout=stdout, stderr=stderr,
            )  # fmt: skip

    def run(self, *extra: str, timeout: float = 120) -> tuple[int, str, str]:
        """The exit status, stdout and stderr of one run to its end."""
        process = self.start(*extra)
        try:
            status = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise
        return status, *self.output(-1)

    def output(self, n: int) -> tuple[str, str]:
        out, err = self.outputs[n]
        return out.read_text(), err.read_text()

    def everything(self) -> str:
        return "".join(out + err for out, err in map(self.output, range(len(self.outputs))))

    def summaries(self) -> list[dict[str, Any]]:
        """The JSON summary of each run that printed one (`--json`)."""
        found = []
        for n in range(len(self.outputs)):
            out = self.output(n)[0]
            if out.startswith("{"):
                found.append(json.loads(out))
        return found

    def until_done(self, *extra: str, attempts: int = 40) -> list[int]:
        """Run until a run exits 0 (waiting out a lease left by a killed run, rerunning
        after one that gave up); the exit statuses."""
        statuses: list[int] = []
        for _ in range(attempts):
            status, out, err = self.run(*extra)
            statuses.append(status)
            if status == 0:
                return statuses
            assert status in (1, 7), f"exit {status}\n{out}\n{err}"
            time.sleep(0.3)
        raise AssertionError(f"not done after {attempts} runs: {statuses}")


def receiver_for(kind: str, **options: Any) -> Any:
    return {"stripe": StripeReceiver, "cloudevents": OpenMeterReceiver, "lago": LagoReceiver}[kind](
        **options
    )


def sink_args(kind: str, receiver: Receiver) -> list[str]:
    if kind == "stripe":
        return ["--sink", "stripe", "--url", receiver.url, "--event-name", "api_calls"]
    if kind == "cloudevents":
        return ["--sink", "cloudevents", "--url", f"{receiver.url}/api/v1/events"]
    return ["--sink", "lago", "--url", receiver.url, "--code", "api_calls"]


def delivered(kind: str, receiver: Any) -> dict[str, tuple[Any, ...]]:
    """What the receiver keeps, by event id: who it is for and what it counts."""
    if kind == "stripe":
        return {i: (e["customer"], e["value"]) for i, e in receiver.events.items()}
    if kind == "cloudevents":
        return {
            i: (e.get_subject(), *(e.get_data()[n] for n in ("requests", "calls", "credits")))
            for (_, i), e in receiver.events.items()
        }
    return {
        i: (s, *(e["properties"][n] for n in ("requests", "calls", "credits")))
        for (s, i), e in receiver.events.items()
    }


def expected(kind: str, events: Sequence[OutboxEvent], value: str = "credits") -> dict[str, Any]:
    """What the receiver should keep for these outbox events (Stripe: those whose value
    is not 0, as the sink sends no meter event for nothing)."""
    if kind == "stripe":
        return {
            e.id: (f"cus_{e.account_id}", getattr(e, value)) for e in events if getattr(e, value)
        }
    return {e.id: (f"ext_{e.account_id}", e.requests, e.calls, e.credits) for e in events}


def receiver_sums(kind: str, receiver: Any) -> dict[str, tuple[int, ...]]:
    """The receiver's totals per account."""
    if kind == "stripe":
        return {c.removeprefix("cus_"): (v,) for c, v in receiver.totals().items()}
    return {
        s.removeprefix("ext_"): tuple(int(t[n]) for n in ("requests", "calls", "credits"))
        for s, t in receiver.totals().items()
    }


def ledger_sums(kind: str, sums: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, ...]]:
    if kind == "stripe":
        return {a: (credits,) for a, (_, _, credits) in sums.items() if credits}
    return dict(sums)


def check(kind: str, receiver: Any, url: str, reader: str | None = None) -> Stored:
    """The receiver holds every outbox event once, with its values, its totals are the
    ledger's, and the reader's cursor is at the end of the outbox."""
    reader = reader or f"export:{kind}"
    now = stored(url, reader)
    assert delivered(kind, receiver) == expected(kind, now.events)
    assert receiver_sums(kind, receiver) == ledger_sums(kind, now.ledger)
    assert now.cursors[reader] == now.events[-1].seq
    if kind == "cloudevents":  # every request was a batch the SDK parsed, event by event
        assert set(receiver.content_types) == {"application/cloudevents-batch+json"}
        assert all(isinstance(e, CloudEvent) for e in receiver.events.values())
    return now


KILL_AFTER = {"stripe": 14, "cloudevents": 2, "lago": 2}
"""POSTs into a run at which to kill it: the second batch is in flight (Stripe sends a
batch of 10 as 10 requests, 8 at once; the others as one)."""


@pytest.mark.slow
@pytest.mark.parametrize("kind", SINKS)
def test_killed_mid_batch_then_rerun_until_done(kind: str, store_url: str, tmp_path: Path):
    """SIGKILLed three times with a batch in flight (the receiver slow to answer), then
    rerun until done: the receiver keeps each outbox event once with its values, its
    totals are the ledger's, and it saw the resent events as duplicates."""
    events = on_store(store_url, lambda s: fill(s, 120))
    with receiver_for(kind, delay=0.15) as receiver:
        export = Export(tmp_path, store_url, *sink_args(kind, receiver), "--batch", "10",
                        "--lease-ttl", "1")  # fmt: skip
        for _ in range(3):
            before = receiver.posts
            process = export.start()
            wait_for(
                lambda before=before, process=process: (
                    receiver.posts >= before + KILL_AFTER[kind] or process.poll() is not None
                ),
                "a batch in flight",
            )
            assert process.poll() is None, export.output(-1)
            process.kill()
            process.wait(10)
            time.sleep(1.2)  # the killed run's lease expires
        killed_at = stored(store_url, f"export:{kind}").cursors[f"export:{kind}"]
        receiver.heal()
        statuses = export.until_done("--batch", "10", "--lease-ttl", "1")
    check(kind, receiver, store_url)
    print(
        f"\n{kind} on {backend_of(store_url)}: {len(events)} events, 3 SIGKILLs with a batch "
        f"in flight (cursor {killed_at} after them), reruns exiting {statuses}: receiver "
        f"kept {len(receiver.events)}, received {receiver.received} in {receiver.posts} "
        f"POSTs, {receiver.duplicates} duplicates dropped"
    )
    assert receiver.duplicates > 0  # the kills left events sent but not acknowledged
    assert 0 < (killed_at or 0) < events[-1].seq


FLAKY = {"stripe": (0.03, "10"), "cloudevents": (0.3, "20"), "lago": (0.3, "20")}
"""Failure rate of the receiver's requests and the batch, per sink (Stripe's batches are
one request per event: a batch of 10 fails about one time in four)."""


@pytest.mark.slow
@pytest.mark.parametrize("kind", SINKS)
def test_a_flaky_receiver_converges_to_the_ledger(kind: str, store_url: str, tmp_path: Path):
    """The receiver fails requests at random, first before storing them, then after (the
    answer lost): reruns until done leave each outbox event once, totals as the ledger's."""
    rate, batch = FLAKY[kind]
    figures = []
    with receiver_for(kind) as receiver:
        export = Export(tmp_path, store_url, *sink_args(kind, receiver), "--batch", batch)
        for seed, after in ((1, False), (2, True)):
            on_store(store_url, lambda s: fill(s, 60))
            receiver.fail_rate(rate, seed=seed, after=after)
            posts = receiver.posts
            statuses = export.until_done("--retries", "20", "--json")
            receiver.heal()
            check(kind, receiver, store_url)
            figures.append(f"{'after' if after else 'before'} storing: {receiver.posts - posts} "
                           f"POSTs, runs exiting {statuses}")  # fmt: skip
    print(
        f"\n{kind} on {backend_of(store_url)}, {rate:.0%} of requests failing: "
        f"{'; '.join(figures)}; receiver kept {len(receiver.events)} events, "
        f"{receiver.duplicates} duplicates dropped"
    )
    failures = sum(summary["failures"] for summary in export.summaries())
    print(f"  {failures} failed attempts retried")
    assert failures > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", SINKS)
def test_two_exporters_at_once_send_each_event_once(kind: str, store_url: str, tmp_path: Path):
    """Two `--follow` exporters started together, more usage written while they run:
    one sends, the other stands by; after SIGTERM both exit 0, the receiver got every
    event exactly once (nothing sent twice) and its totals are the ledger's."""
    on_store(store_url, lambda s: fill(s, 80))
    with receiver_for(kind, delay=0.02) as receiver:
        export = Export(tmp_path, store_url, *sink_args(kind, receiver), "--follow",
                        "--poll", "0.1", "--batch", "10")  # fmt: skip
        both = [export.start(), export.start()]
        events = stored(store_url).events
        wait_for(lambda: delivered(kind, receiver).keys() == expected(kind, events).keys(),
                 "the first events", timeout=60)  # fmt: skip
        on_store(store_url, lambda s: fill(s, 40))
        events = stored(store_url).events
        wait_for(lambda: delivered(kind, receiver).keys() == expected(kind, events).keys(),
                 "the later events", timeout=60)  # fmt: skip
        for process in both:
            process.send_signal(signal.SIGTERM)
        statuses = [process.wait(30) for process in both]
    check(kind, receiver, store_url)
    logs = [export.output(n)[1] for n in range(2)]
    print(
        f"\n{kind} on {backend_of(store_url)}, two exporters following: {len(events)} "
        f"events, receiver received {receiver.received} and kept {len(receiver.events)} "
        f"({receiver.duplicates} duplicates); exits {statuses}; standing by: "
        f"{['standing by' in log for log in logs]}"
    )
    assert statuses == [0, 0], logs
    assert receiver.received == len(receiver.events) and receiver.duplicates == 0
    assert any("standing by" in log for log in logs), logs


@pytest.mark.slow
def test_a_standby_takes_over_from_a_killed_exporter(store_url: str, tmp_path: Path):
    """Two `--follow` exporters with a 1 s lease: the one sending is SIGKILLed, the one
    standing by takes the lease over within about a second and sends what is written
    next; the file holds every event once."""
    on_store(store_url, lambda s: fill(s, 10))
    path = tmp_path / "usage.jsonl"
    export = Export(tmp_path, store_url, "--sink", "jsonl", "--url", str(path), "--follow",
                    "--poll", "0.1", "--lease-ttl", "1")  # fmt: skip

    def lines() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    both = [export.start(), export.start()]
    wait_for(lambda: len(lines()) == 10, "the first events")
    wait_for(lambda: any("standing by" in export.output(n)[1] for n in (-2, -1)), "a standby")
    standby = 0 if "standing by" in export.output(-2)[1] else 1
    both[1 - standby].kill()
    both[1 - standby].wait(10)
    killed = time.monotonic()
    on_store(store_url, lambda s: fill(s, 5))
    wait_for(lambda: len(lines()) == 15, "the events written after the kill")
    took = time.monotonic() - killed
    both[standby].send_signal(signal.SIGTERM)
    assert both[standby].wait(30) == 0
    log = export.output(standby - 2)[1]
    assert "took the lease over" in log
    events = stored(store_url).events
    assert [json.loads(line)["id"] for line in lines()] == [e.id for e in events]
    print(f"\n{backend_of(store_url)}: the standby sent the next events {took:.1f} s after "
          "the sender was killed (lease 1 s)")  # fmt: skip


@pytest.mark.slow
def test_stripe_rejects_events_older_than_35_days_loudly(store_url: str, tmp_path: Path):
    """Events 40 days old are rejected by Stripe: listed on stdout, logged at ERROR one
    line each, recorded in the store, exit 6; the later events still go out; `--rejections`
    lists them, and a rerun sends nothing again and exits 0."""
    old = on_store(store_url, lambda s: fill(s, 4, at=time.time() - 40 * DAY))
    new = on_store(store_url, lambda s: fill(s, 10))
    too_old = [e for e in old if e.credits]  # a 0 value is not sent to Stripe at all
    with StripeReceiver() as receiver:
        export = Export(tmp_path, store_url, *sink_args("stripe", receiver))
        status, out, err = export.run()
        listed = export.run("--rejections", "--json")
        rerun = export.run()
    assert status == 6, err
    assert "REJECTED by stripe" in out and all(e.id in out for e in too_old)
    assert "timestamp_too_far_in_past" in out
    logged = [line for line in err.splitlines() if " ERROR " in line]
    assert len(logged) == len(too_old) and all(e.id in " ".join(logged) for e in too_old)
    assert err.splitlines()[-1].startswith(f"meterware: error: {len(too_old)} events REJECTED")
    rejections = on_store(store_url, lambda s: s.rejections("export:stripe"))
    assert [(seq, id) for seq, id, _, _ in rejections] == [(e.seq, e.id) for e in too_old]
    assert all("35" in reason for _, _, reason, _ in rejections)
    assert delivered("stripe", receiver) == expected("stripe", new)
    assert listed[0] == 0 and [r["id"] for r in json.loads(listed[1])] == [e.id for e in too_old]
    assert rerun[0] == 0 and receiver.received == len(expected("stripe", new))
    print(f"\nstripe on {backend_of(store_url)}: {len(too_old)} events 40 days old rejected "
          f"(exit {status}), {len(receiver.events)} later events delivered")  # fmt: skip


@pytest.mark.slow
def test_since_starts_a_new_sink_from_that_date(store_url: str, tmp_path: Path):
    """`--since` the second of three days: the file gets that day's usage and the next
    day's, not the first day's; a later run with an earlier `--since` keeps the cursor."""
    today = day_of(time.time())
    days = [today - timedelta(days=d) for d in (3, 2, 1)]
    batches = [on_store(store_url, lambda s, d=d: fill(s, 5, at=midnight(d) + 7200)) for d in days]
    path = tmp_path / "usage.jsonl"
    export = Export(tmp_path, store_url, "--sink", "jsonl", "--url", str(path))
    assert export.run("--since", days[1].isoformat())[0] == 0
    later = on_store(store_url, lambda s: fill(s, 2))
    assert export.run("--since", days[0].isoformat())[0] == 0
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert ids == [e.id for e in batches[1] + batches[2] + later]


@pytest.mark.slow
def test_files_sum_to_the_ledger(store_url: str, tmp_path: Path):
    """JSON Lines and CSV exports of the same outbox: each file holds every event once,
    and its requests, calls and credits per account are the ledger's."""
    on_store(store_url, lambda s: fill(s, 50))
    jsonl, csv_path = tmp_path / "usage.jsonl", tmp_path / "usage.csv"
    for sink, path in (("jsonl", jsonl), ("csv", csv_path)):
        export = Export(tmp_path, store_url, "--sink", sink, "--url", f"file://{path}",
                        "--batch", "16")  # fmt: skip
        assert export.run()[0] == 0
    now = stored(store_url)
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    with csv_path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    for records in (lines, rows):
        assert [str(r["id"]) for r in records] == [e.id for e in now.events]
        sums: dict[str, tuple[int, int, int]] = {}
        for r in records:
            a, b, c = sums.get(r["account_id"], (0, 0, 0))
            sums[r["account_id"]] = (a + int(r["requests"]), b + int(r["calls"]),
                                     c + int(r["credits"]))  # fmt: skip
        assert sums == now.ledger
    assert {r["stripe_customer_id"] for r in rows} == {f"cus_acct_{a}" for a in range(3)}


CANARY = "sk_test_CANARY9f3b1c0e7d5a42"


@pytest.mark.slow
def test_the_stripe_key_is_never_in_the_output(tmp_path: Path):
    """A recognizable STRIPE_API_KEY appears in no stdout or stderr of the command: a
    run that sends, one with the key refused, one with nobody answering, one with the
    receiver failing, in text and JSON."""
    url = f"sqlite:///{tmp_path}/meterware.db"
    on_store(url, lambda s: fill(s, 12))
    env = {**KEYS, "STRIPE_API_KEY": CANARY}
    statuses = []
    with StripeReceiver(api_key="sk_test_another_key_000000") as refusing:
        refused = Export(tmp_path, url, *sink_args("stripe", refusing), env=env)
        statuses += [refused.run("--retries", "0")[0], refused.run("--retries", "0", "--json")[0]]
    down = Export(tmp_path, url, "--sink", "stripe", "--url", refusing.url, "--event-name",
                  "api_calls", env=env)  # fmt: skip
    statuses.append(down.run("--retries", "0")[0])
    with StripeReceiver(api_key=CANARY) as receiver:
        accepting = Export(tmp_path, url, *sink_args("stripe", receiver), "--batch", "4", env=env)
        receiver.fail_next(1, 500)
        statuses.append(accepting.run("--retries", "0")[0])
        statuses.append(accepting.run("--json")[0])
    assert statuses == [1, 1, 1, 1, 0]
    assert len(receiver.events) == len(expected("stripe", stored(url).events))
    everything = refused.everything() + down.everything() + accepting.everything()
    assert "API key was refused" in everything and "check STRIPE_API_KEY" in everything
    assert CANARY not in everything and "CANARY" not in everything


@pytest.mark.slow
def test_a_second_exporter_exits_while_the_lease_is_held(store_url: str, tmp_path: Path):
    """While a `--follow` exporter holds the lease, another run exits 7, says so, and
    sends nothing; the follower exits 0 on SIGTERM."""
    on_store(store_url, lambda s: fill(s, 10))
    path = tmp_path / "usage.jsonl"
    export = Export(tmp_path, store_url, "--sink", "jsonl", "--url", str(path))
    follower = export.start("--follow", "--poll", "0.1")
    wait_for(lambda: path.exists() and len(path.read_text().splitlines()) == 10, "the export")
    status, out, err = export.run("--json")
    follower.send_signal(signal.SIGTERM)
    assert follower.wait(30) == 0
    assert status == 7
    assert json.loads(out)["lease_held"] is True and json.loads(out)["sent"] == 0
    assert err.splitlines()[-1] == (
        "meterware: error: another exporter holds the lease export:jsonl: nothing more was sent"
    )
    assert len(path.read_text().splitlines()) == 10


@pytest.mark.slow
def test_sink_options_belong_to_their_sink(tmp_path: Path):
    """An option of another sink is a bad command line (exit 2, one line); a sink whose
    required option is missing says which (exit 1); no rejections is said so."""
    url = f"sqlite:///{tmp_path}/meterware.db"
    export = Export(tmp_path, url)
    status, out, err = export.run("--sink", "stripe", "--event-name", "e", "--code", "c")
    assert (status, out) == (2, "")
    assert err == "meterware export: error: --code is an option of the lago sink, not of stripe\n"
    status, out, err = export.run("--sink", "lago")
    assert (status, out) == (2, "")
    assert err == "meterware export: error: the lago sink needs --code (see --help)\n"
    assert export.run("--sink", "lago", "--rejections")[1] == "No rejections for export:lago.\n"


# -- fed by the served example --------------------------------------------------------


def cli(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "meterware.cli", *args, "--json"],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


@pytest.mark.slow
def test_the_outbox_fed_by_the_served_example(store_url: str, tmp_path: Path):
    """The Starlette example under uvicorn with METERWARE_OUTBOX=1, keys made with the
    command, traffic on two workers: exported to OpenMeter, Stripe (counting requests)
    and a JSON Lines file, each holds every outbox event and sums to the ledger."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
    env.update(METERWARE_STORAGE=store_url, METERWARE_OUTBOX="1", METERWARE_PEPPER="pepper")
    keys = [cli(env, "keys", "create", "--name", f"key {i}", "--tier", "pro") for i in range(3)]
    for key in keys:
        account = key["account"]
        cli(env, "accounts", "update", account, "--external-id", f"ext_{account}",
            "--stripe-customer", f"cus_{account}")  # fmt: skip
    server = Uvicorn("starlette_app", env, tmp_path, workers=2)
    answers: dict[int, int] = {}
    with server.running():
        with httpx.Client(base_url=server.base, timeout=10) as client:
            for n in range(60):
                key = keys[n % 3]["key"]
                path = ("/api/external/v1/websites", "/api/external/v1/websites/site_1/stats",
                        "/api/external/v1/usage")[n // 3 % 3]  # fmt: skip
                status = client.get(path, headers={"X-API-Key": key}).status_code
                answers[status] = answers.get(status, 0) + 1
        server.stop()  # each worker flushes its ledger
    now = stored(store_url)
    assert now.events and answers.get(200, 0) > 0
    assert sum(r for r, _, _ in now.ledger.values()) == sum(e.requests for e in now.events)
    path = tmp_path / "usage.jsonl"
    with OpenMeterReceiver() as openmeter, StripeReceiver() as stripe:
        for args in (
            sink_args("cloudevents", openmeter),
            [*sink_args("stripe", stripe), "--value", "requests"],
            ["--sink", "jsonl", "--url", str(path)],
        ):
            status, _, err = Export(tmp_path, store_url, *args, env={
                k: v for k, v in {**env, **KEYS}.items() if k != "METERWARE_STORAGE"
            }).run()  # fmt: skip
            assert status == 0, err
    check("cloudevents", openmeter, store_url)
    assert delivered("stripe", stripe) == expected("stripe", now.events, "requests")
    assert {c.removeprefix("cus_"): v for c, v in stripe.totals().items()} == {
        a: requests for a, (requests, _, _) in now.ledger.items()
    }
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == [e.id for e in now.events]
    print(
        f"\nstarlette example on {backend_of(store_url)}, 2 workers: answers {answers}; "
        f"{len(now.events)} outbox events, ledger {now.ledger}; exported to OpenMeter "
        f"({len(openmeter.events)}), Stripe ({len(stripe.events)}), JSON Lines ({len(lines)})"
    )
