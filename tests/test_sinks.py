"""Each export sink against a local receiver that speaks its wire format and deduplicates
as the real system documents (`tests.receivers`), and the file sinks on disk."""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.v1.event import CloudEvent

from meterware.errors import ConfigurationError
from meterware.export import (
    EVENT_FIELDS,
    CloudEventsSink,
    CsvSink,
    JsonLinesSink,
    LagoSink,
    Sink,
    SinkUnavailable,
    StripeSink,
    UsageEvent,
    sink_from,
)
from tests.receivers import DAY, LagoReceiver, OpenMeterReceiver, StripeReceiver

pytestmark = pytest.mark.slow

STRIPE_KEY = "sk_test_meterware"
OPENMETER_TOKEN = "om_test_meterware"
LAGO_KEY = "lago_test_meterware"


def usage(
    n: int,
    *,
    first: int = 0,
    accounts: int = 2,
    age: float = 60.0,
    external: bool = True,
    customer: bool = True,
) -> list[UsageEvent]:
    """`n` events over `accounts` accounts, recorded `age` seconds ago, credits 1, 2, 3..."""
    at = time.time() - age
    day = time.strftime("%Y-%m-%d", time.gmtime(at))
    events = []
    for seq in range(first, first + n):
        account = f"acct_{seq % accounts}"
        events.append(
            UsageEvent(
                id=f"mwu_{seq:06d}",
                seq=seq,
                account_id=account,
                key_id=f"key_{seq % 3}" if seq % 4 else "",
                action="search" if seq % 2 else "",
                day=day,
                requests=1 + seq % 2,
                calls=seq % 3,
                credits=seq + 1,
                time=at + seq / 1000,
                external_id=f"ext_{account}" if external else None,
                stripe_customer_id=f"cus_{account}" if customer else None,
            )
        )
    return events


def sums(events: list[UsageEvent], by: str, field: str) -> dict[str, int]:
    """The sum of `field` per value of the event attribute `by`."""
    out: dict[str, int] = {}
    for event in events:
        key = getattr(event, by)
        out[key] = out.get(key, 0) + getattr(event, field)
    return out


def ids(events: list[UsageEvent]) -> list[str]:
    return [event.id for event in events]


@pytest.fixture
def stripe_receiver() -> Iterator[StripeReceiver]:
    """A running StripeReceiver."""
    with StripeReceiver(api_key=STRIPE_KEY) as receiver:
        yield receiver


@pytest.fixture
def openmeter() -> Iterator[OpenMeterReceiver]:
    """A running OpenMeterReceiver."""
    with OpenMeterReceiver(token=OPENMETER_TOKEN) as receiver:
        yield receiver


@pytest.fixture
def lago() -> Iterator[LagoReceiver]:
    """A running LagoReceiver."""
    with LagoReceiver(api_key=LAGO_KEY) as receiver:
        yield receiver


def stripe_sink(receiver: StripeReceiver, **options: Any) -> StripeSink:
    return StripeSink(
        **{"url": receiver.url, "api_key": STRIPE_KEY, "event_name": "api_credits", **options}
    )


# -- Stripe -----------------------------------------------------------------------------


async def test_stripe_events_accepted_and_totals_equal(stripe_receiver: StripeReceiver):
    """Every event becomes one meter event: customer, value, identifier and timestamp."""
    events = usage(20)
    async with stripe_sink(stripe_receiver) as sink:
        delivery = await sink.send(events)
    assert sorted(delivery.accepted) == ids(events) and delivery.rejected == {}
    assert stripe_receiver.totals() == sums(events, "stripe_customer_id", "credits")
    assert stripe_receiver.posts == 20 == len(stripe_receiver.events)
    stored = stripe_receiver.events[events[3].id]
    assert stored["event_name"] == "api_credits"
    assert stored["payload"] == {"stripe_customer_id": "cus_acct_1", "value": "4"}
    assert stored["timestamp"] == int(events[3].time)


async def test_stripe_value_and_payload_keys(stripe_receiver: StripeReceiver):
    """`value` picks the count and `customer_key`/`value_key` name the payload's keys."""
    receiver = StripeReceiver(api_key=STRIPE_KEY, customer_key="customer", value_key="n")
    events = [e for e in usage(12) if e.calls]
    with receiver:
        async with stripe_sink(
            receiver, value="calls", customer_key="customer", value_key="n"
        ) as s:
            delivery = await s.send(events)
    assert sorted(delivery.accepted) == ids(events)
    assert receiver.totals() == sums(events, "stripe_customer_id", "calls")


@pytest.mark.parametrize("code", ["resource_already_exists", None])
async def test_stripe_resend_counts_once(code: str | None):
    """A resend is refused by Stripe as an existing identifier, and reported accepted."""
    events = usage(10)
    with StripeReceiver(api_key=STRIPE_KEY, duplicate_code=code) as receiver:
        async with stripe_sink(receiver) as sink:
            await sink.send(events)
            again = await sink.send(events)
    assert sorted(again.accepted) == ids(events) and again.rejected == {}
    assert receiver.posts == 20 and receiver.duplicates == 10 and len(receiver.events) == 10
    assert receiver.totals() == sums(events, "stripe_customer_id", "credits")


async def test_stripe_zero_value_and_no_customer(stripe_receiver: StripeReceiver):
    """A 0 count is accepted without a request; an account without a customer is rejected."""
    zero = dataclasses.replace(usage(1)[0], credits=0)
    orphan = usage(1, first=5, customer=False)[0]
    async with stripe_sink(stripe_receiver) as sink:
        delivery = await sink.send([zero, orphan])
    assert delivery.accepted == [zero.id]
    assert delivery.rejected == {orphan.id: "the account has no Stripe customer id"}
    assert stripe_receiver.posts == 0


async def test_stripe_too_old_is_rejected_with_a_reason(stripe_receiver: StripeReceiver):
    """An event older than 35 days is rejected for good; the others of the batch go in."""
    old = usage(1, first=100, age=36 * DAY)
    fresh = usage(4)
    async with stripe_sink(stripe_receiver) as sink:
        delivery = await sink.send(old + fresh)
    assert sorted(delivery.accepted) == ids(fresh)
    assert list(delivery.rejected) == ids(old)
    assert "timestamp_too_far_in_past" in delivery.rejected[old[0].id]
    assert "35 calendar days" in delivery.rejected[old[0].id]


async def test_stripe_future_timestamp_is_transient(stripe_receiver: StripeReceiver):
    """An event ahead of Stripe's clock will be valid in minutes: SinkUnavailable."""
    async with stripe_sink(stripe_receiver) as sink:
        with pytest.raises(SinkUnavailable, match="clock"):
            await sink.send(usage(1, age=-600))


async def test_stripe_transient_503_raises_then_resend_counts_once(stripe_receiver):
    """A 503 fails the batch; sent again, every event is counted once."""
    events = usage(16)
    async with stripe_sink(stripe_receiver) as sink:
        stripe_receiver.fail_next(1, 503)
        with pytest.raises(SinkUnavailable, match="HTTP 503"):
            await sink.send(events)
        delivery = await sink.send(events)
    assert sorted(delivery.accepted) == ids(events)
    assert stripe_receiver.totals() == sums(events, "stripe_customer_id", "credits")


async def test_stripe_lost_answer_is_not_counted_twice(stripe_receiver: StripeReceiver):
    """Stored but answered 500 (a lost answer): the resend is a duplicate, counted once."""
    events = usage(1)
    async with stripe_sink(stripe_receiver) as sink:
        stripe_receiver.fail_next(1, 500, after=True)
        with pytest.raises(SinkUnavailable):
            await sink.send(events)
        assert len(stripe_receiver.events) == 1
        assert (await sink.send(events)).accepted == ids(events)
    assert stripe_receiver.duplicates == 1
    assert stripe_receiver.totals() == {"cus_acct_0": 1}


async def test_stripe_429_raises(stripe_receiver: StripeReceiver):
    """A 429 is transient: SinkUnavailable."""
    async with stripe_sink(stripe_receiver) as sink:
        stripe_receiver.fail_next(1, 429)
        with pytest.raises(SinkUnavailable, match="429"):
            await sink.send(usage(1))


async def test_stripe_bad_key_raises_without_the_key(stripe_receiver: StripeReceiver):
    """A refused key is SinkUnavailable; neither the message nor the repr show it."""
    secret = "sk_test_wrong_but_secret_4242"
    async with stripe_sink(stripe_receiver, api_key=secret) as sink:
        assert secret not in repr(sink)
        with pytest.raises(SinkUnavailable, match="STRIPE_API_KEY") as caught:
            await sink.send(usage(3))
    assert secret not in str(caught.value) and secret not in repr(caught.value)
    assert caught.value.__cause__ is None and stripe_receiver.events == {}


async def test_stripe_key_from_the_environment(stripe_receiver, monkeypatch):
    """STRIPE_API_KEY is the key when none is given."""
    monkeypatch.setenv("STRIPE_API_KEY", STRIPE_KEY)
    async with StripeSink(url=stripe_receiver.url, event_name="api_credits") as sink:
        assert STRIPE_KEY not in repr(sink)
        assert (await sink.send(usage(2))).rejected == {}


async def test_stripe_timeout_is_honoured(stripe_receiver: StripeReceiver):
    """A receiver slower than the timeout: SinkUnavailable within about the timeout."""
    stripe_receiver.delay = 1.0
    async with stripe_sink(stripe_receiver, timeout=0.3) as sink:
        started = time.monotonic()
        with pytest.raises(SinkUnavailable):
            await sink.send(usage(10))
        assert time.monotonic() - started < 0.9


async def test_stripe_receiver_down_then_back(stripe_receiver: StripeReceiver):
    """Connection refused is SinkUnavailable; once the receiver is back, the batch goes in."""
    events = usage(3)
    async with stripe_sink(stripe_receiver) as sink:
        stripe_receiver.stop()
        with pytest.raises(SinkUnavailable, match="no answer"):
            await sink.send(events)
        stripe_receiver.start()
        assert sorted((await sink.send(events)).accepted) == ids(events)


# -- CloudEvents (OpenMeter) ------------------------------------------------------------


def cloudevents_sink(receiver: OpenMeterReceiver, **options: Any) -> CloudEventsSink:
    return CloudEventsSink(
        **{"url": f"{receiver.url}/api/v1/events", "token": OPENMETER_TOKEN, **options}
    )


async def test_cloudevents_batch_accepted_and_parsed_by_the_sdk(openmeter: OpenMeterReceiver):
    """One batch request; the receiver parses each with the cloudevents SDK; totals equal."""
    events = usage(30)
    async with cloudevents_sink(openmeter) as sink:
        delivery = await sink.send(events)
    assert sorted(delivery.accepted) == ids(events) and delivery.rejected == {}
    assert openmeter.content_types == ["application/cloudevents-batch+json"]
    assert openmeter.batch_sizes == [30]
    parsed = openmeter.events[("meterware", events[5].id)]
    assert isinstance(parsed, CloudEvent)
    assert parsed.get_specversion() == "1.0" and parsed.get_type() == "api-usage"
    assert parsed.get_subject() == "ext_acct_1"
    time_ = parsed.get_time()
    assert time_ is not None and abs(time_.timestamp() - events[5].time) < 1e-5
    assert parsed.get_datacontenttype() == "application/json"
    assert parsed.get_data() == {
        "requests": events[5].requests, "calls": events[5].calls, "credits": events[5].credits,
        "action": "search", "key_id": "key_2", "day": events[5].day,
    }  # fmt: skip
    totals = openmeter.totals()
    assert {s: t["credits"] for s, t in totals.items()} == sums(events, "external_id", "credits")
    assert {s: t["requests"] for s, t in totals.items()} == sums(events, "external_id", "requests")


async def test_cloudevents_subject_falls_back_to_the_account(openmeter: OpenMeterReceiver):
    """Without an external id the subject is the account id; `subject="account"` always."""
    plain = usage(4, external=False)
    named = usage(4, first=10)
    async with cloudevents_sink(openmeter) as sink:
        await sink.send(plain)
    async with cloudevents_sink(openmeter, subject="account", source="svc-b") as sink:
        await sink.send(named)
    subjects = {key: event.get_subject() for key, event in openmeter.events.items()}
    assert {subjects[("meterware", e.id)] for e in plain} == {"acct_0", "acct_1"}
    assert {subjects[("svc-b", e.id)] for e in named} == {"acct_0", "acct_1"}


async def test_cloudevents_resend_counts_once(openmeter: OpenMeterReceiver):
    """OpenMeter drops a repeated id + source with a 204: accepted, counted once."""
    events = usage(12)
    async with cloudevents_sink(openmeter) as sink:
        await sink.send(events)
        again = await sink.send(events)
    assert sorted(again.accepted) == ids(events)
    assert openmeter.posts == 2 and openmeter.duplicates == 12 and len(openmeter.events) == 12


async def test_cloudevents_splits_large_batches(openmeter: OpenMeterReceiver):
    """More than `max_batch` events go in several requests."""
    events = usage(230)
    async with cloudevents_sink(openmeter) as sink:
        assert len((await sink.send(events)).accepted) == 230
    assert openmeter.batch_sizes == [100, 100, 30]


async def test_cloudevents_400_isolates_the_invalid_events():
    """A 400 refuses the whole request; halving finds the invalid events, the rest go in."""
    bad = {"mwu_000007", "mwu_000020"}
    receiver = OpenMeterReceiver(
        token=OPENMETER_TOKEN,
        invalid=lambda event: "value is not a number" if event.get_id() in bad else None,
    )
    events = usage(32)
    with receiver:
        async with cloudevents_sink(receiver) as sink:
            delivery = await sink.send(events)
    assert set(delivery.rejected) == bad
    assert all("value is not a number" in reason for reason in delivery.rejected.values())
    assert sorted(delivery.accepted) == sorted(set(ids(events)) - bad)
    assert len(receiver.events) == 30 and receiver.posts <= 1 + 2 * 2 * 5


async def test_cloudevents_invalid_subject_rejected_locally(openmeter: OpenMeterReceiver):
    """An event the SDK cannot build (an empty subject) is rejected without a request."""
    event = UsageEvent("mwu_x", 1, "", "", "", "2026-04-12", 1, 1, 1, time.time())
    async with cloudevents_sink(openmeter) as sink:
        delivery = await sink.send([event])
    assert list(delivery.rejected) == ["mwu_x"] and "subject" in delivery.rejected["mwu_x"]
    assert openmeter.posts == 0


async def test_cloudevents_transient_503_raises(openmeter: OpenMeterReceiver):
    """A 503 is SinkUnavailable and nothing is kept; the resend goes in."""
    events = usage(5)
    async with cloudevents_sink(openmeter) as sink:
        openmeter.fail_next(1, 503)
        with pytest.raises(SinkUnavailable, match="503"):
            await sink.send(events)
        assert openmeter.events == {}
        assert len((await sink.send(events)).accepted) == 5


async def test_cloudevents_bad_token_raises_without_the_token(openmeter, monkeypatch):
    """A refused token (from OPENMETER_API_KEY) is SinkUnavailable, shown nowhere."""
    secret = "om_wrong_but_secret_777"
    monkeypatch.setenv("OPENMETER_API_KEY", secret)
    async with CloudEventsSink(url=f"{openmeter.url}/api/v1/events") as sink:
        assert secret not in repr(sink)
        with pytest.raises(SinkUnavailable, match="OPENMETER_API_KEY") as caught:
            await sink.send(usage(2))
    assert secret not in str(caught.value)


async def test_cloudevents_timeout_is_honoured(openmeter: OpenMeterReceiver):
    """A receiver slower than the timeout: SinkUnavailable within about the timeout."""
    openmeter.delay = 1.0
    async with cloudevents_sink(openmeter, timeout=0.3) as sink:
        started = time.monotonic()
        with pytest.raises(SinkUnavailable, match="no answer"):
            await sink.send(usage(3))
        assert time.monotonic() - started < 0.9


# -- Lago -------------------------------------------------------------------------------


def lago_sink(receiver: LagoReceiver, **options: Any) -> LagoSink:
    return LagoSink(**{"url": receiver.url, "api_key": LAGO_KEY, "code": "api_credits", **options})


async def test_lago_batches_split_at_100_and_totals_equal(lago: LagoReceiver):
    """250 events: three requests of at most 100; the sums per subscription match."""
    events = usage(250)
    async with lago_sink(lago) as sink:
        delivery = await sink.send(events)
    assert sorted(delivery.accepted) == ids(events) and delivery.rejected == {}
    assert lago.batch_sizes == [100, 100, 50]
    totals = lago.totals()
    assert {s: t["credits"] for s, t in totals.items()} == sums(events, "external_id", "credits")
    assert {s: t["calls"] for s, t in totals.items()} == sums(events, "external_id", "calls")
    stored = lago.events[("ext_acct_1", events[1].id)]
    assert stored["code"] == "api_credits" and stored["timestamp"] == events[1].time
    assert stored["properties"]["action"] == "search"


@pytest.mark.parametrize("duplicates", ["reject", "ignore"])
async def test_lago_resend_counts_once(duplicates: str):
    """A resend (refused as value_already_exist, or dropped) is accepted, counted once."""
    events = usage(40)
    with LagoReceiver(api_key=LAGO_KEY, duplicates=duplicates) as receiver:
        async with lago_sink(receiver) as sink:
            await sink.send(events)
            again = await sink.send(events)
    assert sorted(again.accepted) == ids(events) and again.rejected == {}
    assert len(receiver.events) == 40 and receiver.duplicates == 40


async def test_lago_partly_known_batch_sends_the_rest_again(lago: LagoReceiver):
    """A batch half already in Lago: the 422 stores nothing, the new half is sent again."""
    events = usage(60)
    async with lago_sink(lago) as sink:
        await sink.send(events[:30])
        delivery = await sink.send(events)
    assert sorted(delivery.accepted) == ids(events)
    assert lago.posts == 3 and lago.batch_sizes == [30, 60, 30]
    totals = lago.totals()
    assert {s: t["credits"] for s, t in totals.items()} == sums(events, "external_id", "credits")


async def test_lago_422_rejects_the_named_events_and_sends_the_rest():
    """Events Lago names invalid are rejected with its codes; the others go in after."""
    receiver = LagoReceiver(
        api_key=LAGO_KEY,
        invalid=lambda e: (
            {"properties": ["invalid_format"]} if e["properties"]["credits"] % 7 == 0 else None
        ),
    )
    events = usage(30)
    with receiver:
        async with lago_sink(receiver) as sink:
            delivery = await sink.send(events)
    bad = [e.id for e in events if e.credits % 7 == 0]
    assert sorted(delivery.rejected) == bad
    assert set(delivery.rejected.values()) == {"Lago refused it: properties: invalid_format"}
    assert sorted(delivery.accepted) == sorted(set(ids(events)) - set(bad))
    assert receiver.posts == 2 and len(receiver.events) == 30 - len(bad)


async def test_lago_unknown_metric_is_configuration():
    """An unknown billable metric is the sink's setting, not the events': SinkUnavailable."""
    with LagoReceiver(api_key=LAGO_KEY, metrics={"api_calls"}) as receiver:
        async with lago_sink(receiver, code="api_credits") as sink:
            with pytest.raises(SinkUnavailable, match="'api_credits': check code"):
                await sink.send(usage(3))


async def test_lago_smaller_server_limit_is_split(lago: LagoReceiver):
    """A Lago configured for smaller batches (too_many_events) gets halves."""
    lago.max_batch = 30
    events = usage(100)
    async with lago_sink(lago) as sink:
        assert sorted((await sink.send(events)).accepted) == ids(events)
    assert len(lago.events) == 100 and max(lago.batch_sizes) <= 30


async def test_lago_subscription_choice(lago: LagoReceiver):
    """Without an external id an event is rejected; `subscription="account"` uses the id."""
    events = usage(4, external=False)
    async with lago_sink(lago) as sink:
        delivery = await sink.send(events)
    assert set(delivery.rejected) == set(ids(events)) and lago.posts == 0
    async with lago_sink(lago, subscription="account") as sink:
        assert sorted((await sink.send(events)).accepted) == ids(events)
    assert set(lago.totals()) == {"acct_0", "acct_1"}


async def test_lago_transient_failures_raise(lago: LagoReceiver):
    """503 and 429 are SinkUnavailable; nothing is kept."""
    async with lago_sink(lago) as sink:
        for status in (503, 429):
            lago.fail_next(1, status)
            with pytest.raises(SinkUnavailable, match=str(status)):
                await sink.send(usage(3))
    assert lago.events == {}


async def test_lago_bad_key_raises_without_the_key(lago: LagoReceiver):
    """A refused key is SinkUnavailable; neither the message nor the repr show it."""
    secret = "lago_wrong_but_secret_31337"
    async with lago_sink(lago, api_key=secret) as sink:
        assert secret not in repr(sink)
        with pytest.raises(SinkUnavailable, match="LAGO_API_KEY") as caught:
            await sink.send(usage(2))
    assert secret not in str(caught.value)


async def test_lago_timeout_is_honoured(lago: LagoReceiver):
    """A receiver slower than the timeout: SinkUnavailable within about the timeout."""
    lago.delay = 1.0
    async with lago_sink(lago, timeout=0.3) as sink:
        started = time.monotonic()
        with pytest.raises(SinkUnavailable):
            await sink.send(usage(3))
        assert time.monotonic() - started < 0.9


async def send_until_delivered(sink: Sink, events: list[UsageEvent]) -> int:
    """Send the batch again after each SinkUnavailable, as the exporter does; the tries."""
    for tries in range(1, 50):
        try:
            delivery = await sink.send(events)
        except SinkUnavailable:
            continue
        assert sorted(delivery.accepted) == ids(events) and delivery.rejected == {}
        return tries
    raise AssertionError("never delivered")


async def test_flaky_answers_converge_to_exact_totals(lago, openmeter, stripe_receiver):
    """Half the answers lost after storing (seeded): retried, every sink counts each once."""
    events = usage(150)
    receivers = [lago, openmeter, stripe_receiver]
    for receiver in receivers:
        receiver.fail_rate(0.5, seed=7, after=True)
    async with lago_sink(lago) as one, cloudevents_sink(openmeter) as two:
        assert await send_until_delivered(one, events) > 1
        assert await send_until_delivered(two, events) > 1
    async with stripe_sink(stripe_receiver) as three:
        stripe_receiver.fail_rate(0.1, seed=7, after=True)
        assert await send_until_delivered(three, events[:10]) > 1
    credits = sums(events, "external_id", "credits")
    assert {s: t["credits"] for s, t in lago.totals().items()} == credits
    assert {s: t["credits"] for s, t in openmeter.totals().items()} == credits
    assert stripe_receiver.totals() == sums(events[:10], "stripe_customer_id", "credits")
    assert all(r.duplicates > 0 for r in receivers)


# -- files ------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


async def test_jsonl_sums_to_the_events_and_resend_adds_nothing(tmp_path: Path):
    """Every field on one line an event; a resend, even by a new sink, writes nothing."""
    path = tmp_path / "out" / "usage.jsonl"
    events = usage(50)
    async with JsonLinesSink(path) as sink:
        assert sorted((await sink.send(events)).accepted) == ids(events)
        assert sorted((await sink.send(events[:10])).accepted) == ids(events[:10])
    async with JsonLinesSink(path) as sink:  # a restarted exporter
        await sink.send(events[40:] + usage(5, first=50))
    rows = read_jsonl(path)
    assert len(rows) == 55 and len({row["id"] for row in rows}) == 55
    assert rows[0] == {f: getattr(events[0], f) for f in EVENT_FIELDS}
    assert sum(int(row["credits"]) for row in rows) == sum(e.credits for e in usage(55))


async def test_csv_header_once_and_values_round_trip(tmp_path: Path):
    """A header, then one row an event; a resend writes nothing; None is an empty cell."""
    path = tmp_path / "usage.csv"
    events = usage(30, external=False)
    async with CsvSink(path) as sink:
        await sink.send(events[:20])
        await sink.send(events)
    async with CsvSink(path) as sink:
        await sink.send(events)
    assert path.read_text().count("id,seq,account_id") == 1
    rows = read_csv(path)
    assert [row["id"] for row in rows] == ids(events)
    assert rows[7]["external_id"] == "" and float(rows[7]["time"]) == events[7].time
    assert sum(int(row["credits"]) for row in rows) == sum(e.credits for e in events)


@pytest.mark.parametrize("kind", [JsonLinesSink, CsvSink])
async def test_file_torn_record_is_cut_off(tmp_path: Path, kind: type[JsonLinesSink | CsvSink]):
    """A record half written by a crashed writer (never acknowledged) is replaced whole."""
    path = tmp_path / f"usage.{kind.name}"
    events = usage(6)
    async with kind(path) as sink:
        await sink.send(events[:3])
    whole = path.read_bytes()
    with path.open("ab") as file:
        file.write(b'mwu_000003,3,"acct_1\nsplit' if kind is CsvSink else b'{"id":"mwu_000003","se')
    async with kind(path) as sink:
        assert sorted((await sink.send(events)).accepted) == ids(events)
    assert path.read_bytes().startswith(whole)
    rows = read_csv(path) if kind is CsvSink else read_jsonl(path)
    assert [row["id"] for row in rows] == ids(events)


async def test_two_file_sinks_on_one_file_write_each_event_once(tmp_path: Path):
    """Two exporters appending to one file: each sees what the other wrote."""
    path = tmp_path / "usage.jsonl"
    events = usage(40)
    async with JsonLinesSink(path) as one, JsonLinesSink(path) as two:
        await one.send(events[:25])
        await two.send(events[10:])
        await one.send(events)
    assert [row["id"] for row in read_jsonl(path)] == ids(events)


async def test_csv_refuses_a_foreign_file(tmp_path: Path):
    """A CSV that meterware did not write is a configuration error, left untouched."""
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    async with CsvSink(path) as sink:
        with pytest.raises(ConfigurationError, match="not a usage CSV"):
            await sink.send(usage(1))
    assert path.read_text() == "a,b\n1,2\n"


# -- by name ----------------------------------------------------------------------------


async def test_sink_from_builds_each_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Names map to classes; file sinks take a path or a file:// URL; keys from the env."""
    monkeypatch.setenv("STRIPE_API_KEY", STRIPE_KEY)
    monkeypatch.setenv("LAGO_API_KEY", LAGO_KEY)
    sinks: list[Sink] = [
        sink_from("stripe", url=None, event_name="api_credits"),
        sink_from("cloudevents", url="http://127.0.0.1:9/api/v1/events", source="svc"),
        sink_from("lago", url="http://127.0.0.1:9/api/v1/", code="api_credits"),
        sink_from("jsonl", url=f"file://{tmp_path}/u%20sage.jsonl"),
        sink_from("csv", url=str(tmp_path / "usage.csv")),
    ]
    try:
        stripe, cloudevents, lago, jsonl, csv_ = sinks
        assert isinstance(stripe, StripeSink) and stripe.url == "https://api.stripe.com"
        assert isinstance(cloudevents, CloudEventsSink) and cloudevents.source == "svc"
        assert isinstance(lago, LagoSink) and lago.url == "http://127.0.0.1:9"
        assert isinstance(jsonl, JsonLinesSink) and jsonl.path == tmp_path / "u sage.jsonl"
        assert isinstance(csv_, CsvSink)
        for sink in sinks:
            assert STRIPE_KEY not in repr(sink) and LAGO_KEY not in repr(sink)
    finally:
        for sink in sinks:
            await sink.aclose()


@pytest.mark.parametrize(
    ("name", "url", "options", "message"),
    [
        ("stripe", None, {"event_name": "x"}, "STRIPE_API_KEY"),
        ("stripe", None, {"api_key": "sk_test_x"}, "event_name"),
        ("cloudevents", None, {}, "url"),
        ("lago", None, {"code": "x"}, "LAGO_API_KEY"),
        ("lago", None, {"api_key": "k"}, "code"),
        ("jsonl", None, {}, "path"),
        ("csv", "file://otherhost/x.csv", {}, "otherhost"),
        ("kafka", "x", {}, "unknown sink 'kafka'"),
        ("jsonl", "x.jsonl", {"colour": "red"}, "colour"),
    ],
)
def test_sink_from_says_what_is_missing(name, url, options, message, monkeypatch):
    """A missing setting, an unknown sink or option: ConfigurationError naming it."""
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    monkeypatch.delenv("LAGO_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match=message):
        sink_from(name, url=url, **options)
