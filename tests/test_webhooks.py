"""Webhooks: notices stored in the store, delivered to a local receiver that verifies every
request with `standardwebhooks` (`tests.webhook_receiver`), in process and as the
`meterware webhooks` command in real processes, killed and restarted."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from meterware.errors import ConfigurationError
from meterware.storage import Storage
from meterware.storage.records import Notice
from meterware.webhooks import (
    MAX_AGE,
    WebhookEndpoint,
    WebhookSender,
    endpoints_from_env,
    new_secret,
    payload,
    retry_delay,
    send_once,
    signed_request,
)
from tests.backends import Backend
from tests.servers import wait_for
from tests.utils import FakeClock
from tests.webhook_receiver import WebhookReceiver

SECRET = new_secret()
OTHER_SECRET = new_secret()
DAY = 86_400.0


def secret_parts(secret: str = SECRET) -> list[str]:
    """What must never be shown: the secret, and its base64 part alone."""
    return [secret, secret.removeprefix("whsec_")]


def notice(i: int, *, at: float | None = None, type: str = "quota.threshold") -> Notice:
    """Notice number `i`, created at `at` (now unless given)."""
    return Notice(
        id=f"quota.80:key_{i}:2026-04",
        type=type,
        account_id=f"acct_{i % 3}",
        key_id=f"key_{i}",
        data={"threshold": 80, "used": i, "limit": 100, "period": "2026-04"},
        created_at=time.time() if at is None else at,
    )


async def add(store: Storage, count: int, *, first: int = 0, **options: Any) -> list[str]:
    """Store `count` notices numbered from `first`; their ids, in order."""
    ids = []
    for i in range(first, first + count):
        n = notice(i, **options)
        assert await store.add_notice(n)
        ids.append(n.id)
    return ids


def sender(store: Storage, *endpoints: WebhookEndpoint, **options: Any) -> WebhookSender:
    options.setdefault("timeout", 2.0)
    options.setdefault("lease_ttl", 10.0)
    return WebhookSender(store, list(endpoints), **options)


async def until(check: Callable[[], bool], what: str, timeout: float) -> None:
    """Await until `check()` is true, or raise after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        await asyncio.sleep(0.005)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as r:
        yield r


@pytest.fixture
def now_clock() -> FakeClock:
    """A fake clock at the real time: receivers check `webhook-timestamp` against theirs."""
    return FakeClock(time.time())


# -- the endpoint, the payload, the signature (no server) ----------------------------------


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        ("", "does not start with 'whsec_'"),
        ("s3cr3t-" + "A" * 40, "does not start with 'whsec_'"),
        ("whsec_", "decodes to 0 bytes"),
        ("whsec_not base64!!", "not base64"),
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), "decodes to 16 bytes"),
        ("whsec_" + base64.b64encode(b"k" * 65).decode(), "decodes to 65 bytes"),
    ],
)
def test_a_bad_secret_is_refused_clearly_without_showing_it(secret: str, says: str):
    """A malformed secret is a ConfigurationError saying why and how, never showing it."""
    with pytest.raises(ConfigurationError) as caught:
        WebhookEndpoint("https://example.com/hooks", secret)
    message = str(caught.value)
    assert says in message and "new_secret()" in message
    for part in secret_parts(secret):
        assert len(part) <= len("whsec_") or part not in message


def test_a_good_secret_is_taken_padded_or_not():
    """Secrets of 24 to 64 bytes are taken, with or without base64 padding."""
    for size in (24, 32, 64):
        encoded = base64.b64encode(os.urandom(size)).decode()
        WebhookEndpoint("https://example.com/hooks", "whsec_" + encoded)
        WebhookEndpoint("https://example.com/hooks", "whsec_" + encoded.rstrip("="))


@pytest.mark.parametrize(
    "url", ["example.com/hooks", "ftp://example.com/hooks", "https://", "http://[::1/x", ""]
)
def test_a_url_must_be_http(url: str):
    """An endpoint's URL is http:// or https:// with a host."""
    with pytest.raises(ConfigurationError, match="http:// or https://"):
        WebhookEndpoint(url, SECRET)


def test_name_types_and_repr():
    """The name defaults to a hash of the URL; types filter; the repr hides secret and password."""
    a = WebhookEndpoint("https://example.com/hooks", SECRET)
    b = WebhookEndpoint("https://example.com/hooks", OTHER_SECRET)
    c = WebhookEndpoint("https://example.com/other", SECRET)
    assert a.name == b.name != c.name and a.reader == f"webhook:{a.name}"
    assert WebhookEndpoint("https://x.test/", SECRET, name="billing").reader == "webhook:billing"
    typed = WebhookEndpoint("https://x.test/", SECRET, types=["key.created"])
    assert typed.wants("key.created") and not typed.wants("quota.threshold") and a.wants("any")
    shown = repr(WebhookEndpoint("https://user:hunter2@x.test/", SECRET))
    assert "hunter2" not in shown and all(p not in shown for p in secret_parts())
    for bad in ({"types": "key.created"}, {"types": []}, {"name": "a b"}, {"name": ""}):
        with pytest.raises(ConfigurationError):
            WebhookEndpoint("https://x.test/", SECRET, **bad)


def test_endpoints_from_env():
    """The environment makes one endpoint, none without a URL, an error with half of it."""
    assert endpoints_from_env({}) == []
    (endpoint,) = endpoints_from_env(
        {"METERWARE_WEBHOOK_URL": "https://x.test/h", "METERWARE_WEBHOOK_SECRET": SECRET}
    )
    assert endpoint.url == "https://x.test/h" and endpoint.types is None
    (named,) = endpoints_from_env({
        "METERWARE_WEBHOOK_URL": "https://x.test/h", "METERWARE_WEBHOOK_SECRET": SECRET,
        "METERWARE_WEBHOOK_NAME": "ops", "METERWARE_WEBHOOK_TYPES": "key.created, key.revoked",
    })  # fmt: skip
    assert named.name == "ops" and named.types == {"key.created", "key.revoked"}
    with pytest.raises(ConfigurationError, match="METERWARE_WEBHOOK_SECRET is not set"):
        endpoints_from_env({"METERWARE_WEBHOOK_URL": "https://x.test/h"})
    with pytest.raises(ConfigurationError, match="METERWARE_WEBHOOK_URL is not set"):
        endpoints_from_env({"METERWARE_WEBHOOK_SECRET": SECRET})


def test_the_request_verifies_with_standardwebhooks():
    """An attempt verifies with standardwebhooks: {type, timestamp, data}, stable webhook-id."""
    endpoint = WebhookEndpoint("https://x.test/h", SECRET)
    n = Notice("quota.80:key_1:2026-04", "quota.threshold", "acct_1", "key_1",
               {"threshold": 80, "id": "not this"}, 1_776_004_200.5)  # fmt: skip
    now = int(time.time())
    headers, body = signed_request(endpoint, n, now)
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == n.id and headers["webhook-timestamp"] == str(now)
    event = Webhook(SECRET).verify(body, headers)
    assert event == {
        "type": "quota.threshold",
        "timestamp": "2026-04-12T14:30:00.500Z",
        "data": {"threshold": 80, "id": n.id, "account_id": "acct_1", "key_id": "key_1"},
    }
    assert body.decode() == payload(n) and b" " not in body  # minified, signed as sent
    later, _ = signed_request(endpoint, n, now + 7)
    assert later["webhook-id"] == headers["webhook-id"]
    assert later["webhook-signature"] != headers["webhook-signature"]
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(OTHER_SECRET).verify(body, headers)


def test_retry_delays_double_to_five_minutes_with_jitter():
    """1 s doubling to 5 minutes; the draw places each wait between half and all of it."""
    assert [retry_delay(k, 1.0) for k in range(1, 12)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300,
    ]  # fmt: skip
    assert retry_delay(1, 0.0) == 0.5 and retry_delay(4, 0.5) == 6.0
    assert retry_delay(10_000, 0.0) == 150.0


def test_sender_options_are_checked(store: Storage):
    """Endpoint names must differ; the lease must outlast an attempt and a cursor write."""
    a = WebhookEndpoint("https://x.test/a", SECRET, name="same")
    b = WebhookEndpoint("https://x.test/b", SECRET, name="same")
    with pytest.raises(ConfigurationError, match="distinct names"):
        WebhookSender(store, [a, b])
    with pytest.raises(ConfigurationError, match="lease_ttl"):
        WebhookSender(store, [a], timeout=10, lease_ttl=21)
    with pytest.raises(ConfigurationError):
        WebhookSender(store, [a], batch=0)
    with pytest.raises(ConfigurationError, match="at least one endpoint"):
        WebhookSender(store, [])


def test_import_needs_neither_extra():
    """`import meterware` and its webhook modules import neither standardwebhooks nor httpx."""
    code = (
        "import sys, meterware, meterware.webhooks, meterware.cli.webhooks; "
        "print(sorted(m for m in ('standardwebhooks', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("missing", ["standardwebhooks", "httpx"])
async def test_a_missing_extra_names_the_pip_install(
    missing: str, store: Storage, monkeypatch: pytest.MonkeyPatch
):
    """Without an extra, sender, signing and send_once name `pip install 'meterware[webhooks]'`."""
    monkeypatch.setitem(sys.modules, missing, None)  # import fails
    endpoint = WebhookEndpoint("https://x.test/h", SECRET)
    hint = r"pip install 'meterware\[webhooks\]'"
    with pytest.raises(ConfigurationError, match=hint):
        WebhookSender(store, [endpoint])
    with pytest.raises(ConfigurationError, match=hint):
        await send_once(endpoint, notice(1))
    if missing == "standardwebhooks":
        with pytest.raises(ConfigurationError, match=hint):
            signed_request(endpoint, notice(1), int(time.time()))


# -- delivery in process, against every store ------------------------------------------------

slow = pytest.mark.slow


@slow
async def test_every_notice_delivered_once_in_order_and_verified(
    store: Storage, receiver: WebhookReceiver
):
    """Every notice arrives once, in order, verified; the cursor is past the last."""
    ids = await add(store, 30)
    endpoint = WebhookEndpoint(receiver.url, SECRET)
    async with sender(store, endpoint) as s:
        assert await s.run_once() == 30
        assert await s.run_once() == 0
        (status,) = s.status
    assert receiver.deliveries == ids and receiver.bad_signatures == 0
    assert receiver.posts == 30
    assert await store.cursor(endpoint.reader) == 30
    assert status.delivered == 30 and status.caught_up and status.holding
    first = receiver.payloads[ids[0]]
    assert first["type"] == "quota.threshold"
    assert first["data"] == {"threshold": 80, "used": 0, "limit": 100, "period": "2026-04",
                             "account_id": "acct_0", "key_id": "key_0", "id": ids[0]}  # fmt: skip
    assert abs(int(receiver.headers[0]["webhook-timestamp"]) - time.time()) < 60
    assert receiver.headers[0]["user-agent"].startswith("meterware/")


@slow
async def test_a_wrong_secret_gets_400s_is_retried_and_never_delivered(
    store: Storage,
    receiver: WebhookReceiver,
    now_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
):
    """A wrong secret gets 400s: retried, never delivered, given up after 5, never logged."""
    caplog.set_level(logging.DEBUG)
    await add(store, 2)
    endpoint = WebhookEndpoint(receiver.url, OTHER_SECRET)
    async with sender(store, endpoint, clock=now_clock) as s:
        for _ in range(5):
            assert await s.run_once() == 0
            now_clock.advance(16)  # past any wait after 4 failures (at most 8 s)
        (status,) = s.status
    assert receiver.bad_signatures == 5 and receiver.deliveries == [] and receiver.arrivals == []
    assert status.delivered == 0 and status.rejected == 1 and status.failures == 5
    ((seq, msg_id, reason, _),) = await store.rejections(endpoint.reader)
    assert (seq, msg_id, reason) == (1, notice(0).id, "HTTP 400 to 5 attempts")
    assert await store.cursor(endpoint.reader) == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "GIVEN UP" in errors[0].getMessage()
    for part in [*secret_parts(SECRET), *secret_parts(OTHER_SECRET)]:
        assert part not in caplog.text


@slow
async def test_order_holds_through_failures_and_lost_answers(
    store: Storage, receiver: WebhookReceiver, now_clock: FakeClock
):
    """Through failures and lost answers notices arrive in order; a repeat only follows itself."""
    ids = await add(store, 40)
    receiver.fail_rate(0.3, seed=3, status=500, after=True)
    async with sender(store, WebhookEndpoint(receiver.url, SECRET), clock=now_clock) as s:
        for _ in range(500):
            if receiver.distinct() == 40:
                break
            await s.run_once()
            now_clock.now = max(now_clock.now, s.status[0].next_try)
    assert list(dict.fromkeys(receiver.deliveries)) == ids
    positions = [ids.index(i) for i in receiver.deliveries]
    assert positions == sorted(positions)  # repeats are adjacent: never out of order
    assert receiver.duplicates() > 0 and receiver.bad_signatures == 0


@slow
async def test_a_failing_endpoint_holds_back_no_other(store: Storage, receiver: WebhookReceiver):
    """An endpoint down and one refusing do not keep a healthy one from getting everything."""
    down = WebhookReceiver(SECRET)
    down.start()
    down.stop()  # a port that refuses connections
    with WebhookReceiver(SECRET) as failing:
        failing.fail_rate(1.0, status=503)
        await add(store, 10)
        named = ((down, "down"), (failing, "failing"), (receiver, "ok"))
        endpoints = [WebhookEndpoint(r.url, SECRET, name=n) for r, n in named]
        async with sender(store, *endpoints) as s:
            assert await s.run_once() == 10
            by_name = {st.name: st for st in s.status}
    assert receiver.distinct() == 10
    assert failing.posts == 1 and failing.deliveries == []
    assert by_name["down"].failing == 1 and "Connect" in str(by_name["down"].last_error)
    assert by_name["failing"].last_error == "HTTP 503"
    assert await store.cursor("webhook:ok") == 10 and await store.cursor("webhook:failing") is None


@slow
async def test_a_slow_endpoint_holds_back_no_other(store: Storage, receiver: WebhookReceiver):
    """In `run`, a slow endpoint (0.5 s a request) does not delay another's deliveries."""
    with WebhookReceiver(SECRET, delay=0.5) as slow_one:
        await add(store, 10)
        endpoints = [WebhookEndpoint(slow_one.url, SECRET, name="slow"),
                     WebhookEndpoint(receiver.url, SECRET, name="fast")]  # fmt: skip
        s = sender(store, *endpoints, poll=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(s.run(stop))
        began = time.monotonic()
        await until(lambda: receiver.distinct() == 10, "the fast endpoint", 10)
        took = time.monotonic() - began
        assert receiver.distinct() == 10 and took < 2.0
        assert slow_one.distinct() <= 4
        stop.set()
        await asyncio.wait_for(task, 5)


@slow
async def test_backoff_doubles_with_an_injected_clock(
    store: Storage, receiver: WebhookReceiver, now_clock: FakeClock
):
    """After the k-th failure the next try waits half to all of 2^(k-1) s; a 2xx resets it."""
    await add(store, 2)
    receiver.fail_next(7, 503)
    async with sender(store, WebhookEndpoint(receiver.url, SECRET), clock=now_clock) as s:
        assert await s.run_once() == 0 and receiver.posts == 1
        for k in range(1, 8):
            nominal = min(2.0 ** (k - 1), 300.0)
            now_clock.advance(nominal / 2 - 0.01)
            assert await s.run_once() == 0
            assert receiver.posts == k, f"attempt too early after failure {k}"
            now_clock.advance(nominal / 2 + 0.01)
            delivered = await s.run_once()
            assert receiver.posts == k + (2 if k == 7 else 1)
        assert delivered == 2  # the 8th attempt succeeded, and the next notice followed
        (status,) = s.status
        assert status.failing == 0 and status.failures == 7 and status.next_try == 0.0


@slow
async def test_retry_after_is_honoured(
    store: Storage, receiver: WebhookReceiver, now_clock: FakeClock
):
    """A 429 with `retry-after: 120` waits 120 s, not the 1 s backoff."""
    await add(store, 1)
    receiver.fail_next(1, 429, retry_after="120")
    async with sender(store, WebhookEndpoint(receiver.url, SECRET), clock=now_clock) as s:
        await s.run_once()
        now_clock.advance(100)
        assert await s.run_once() == 0 and receiver.posts == 1
        now_clock.advance(21)
        assert await s.run_once() == 1


@slow
@pytest.mark.parametrize("status", [400, 404, 410, 422])
async def test_a_refusing_4xx_is_given_up_after_five_attempts(
    status: int, store: Storage, receiver: WebhookReceiver, now_clock: FakeClock
):
    """A notice refused 5 times (4xx) is given up on, with its reason; the next one goes on."""
    ids = await add(store, 2)
    receiver.fail_next(5, status)
    endpoint = WebhookEndpoint(receiver.url, SECRET)
    async with sender(store, endpoint, clock=now_clock) as s:
        for _ in range(5):
            await s.run_once()
            now_clock.advance(16)  # past any wait after 5 failures
        assert await s.run_once() == 1
    assert receiver.deliveries == [ids[1]]
    ((seq, msg_id, reason, _),) = await store.rejections(endpoint.reader)
    assert (seq, msg_id, reason) == (1, ids[0], f"HTTP {status} to 5 attempts")


@slow
@pytest.mark.parametrize("status", [408, 409, 429, 500, 503])
async def test_retryable_answers_are_never_given_up_early(
    status: int, store: Storage, receiver: WebhookReceiver, now_clock: FakeClock
):
    """408, 409, 429 and 5xx are retried (more than 5 times here), then delivered."""
    ids = await add(store, 1)
    receiver.fail_next(6, status)
    endpoint = WebhookEndpoint(receiver.url, SECRET)
    async with sender(store, endpoint, clock=now_clock) as s:
        for k in range(7):
            await s.run_once()
            now_clock.advance(2**k)
    assert receiver.deliveries == ids and receiver.posts == 7
    assert await store.rejections(endpoint.reader) == []


@slow
async def test_a_notice_is_given_up_after_max_age(
    store: Storage, receiver: WebhookReceiver, now_clock: FakeClock
):
    """A notice past 3 days is given up on failing, untried while the endpoint fails."""
    endpoint = WebhookEndpoint(receiver.url, SECRET)
    now = now_clock()
    assert await store.add_notice(notice(0, at=now))
    async with sender(store, endpoint, clock=now_clock) as s:
        assert await s.run_once() == 1  # the reader exists: no history is skipped now
        receiver.fail_rate(1.0, status=503)
        assert await store.add_notice(notice(1, at=now - MAX_AGE - 10))
        assert await store.add_notice(notice(2, at=now - MAX_AGE + 50))
        assert await store.add_notice(notice(3, at=now - MAX_AGE - 1000))
        assert await store.add_notice(notice(4, at=now))
        await s.run_once()  # 1: tried (the endpoint was not failing), given up
        assert receiver.arrivals == [notice(i).id for i in (0, 1)]
        now_clock.advance(3)
        await s.run_once()  # 2: tried, younger than 3 days: kept
        assert receiver.arrivals == [notice(i).id for i in (0, 1, 2)]
        now_clock.advance(100)
        await s.run_once()  # 2 and 3: given up untried; 4: tried
        (status,) = s.status
    reasons = {msg_id: reason for _, msg_id, reason, _ in await store.rejections(endpoint.reader)}
    assert reasons == {notice(i).id: "not delivered within 3 days: HTTP 503" for i in (1, 2, 3)}
    assert receiver.arrivals == [notice(i).id for i in (0, 1, 2, 4)]
    assert status.rejected == 3 and status.position == 4


@slow
async def test_a_new_endpoint_skips_old_history_and_other_types(
    store: Storage, receiver: WebhookReceiver
):
    """A new endpoint skips history older than 3 days; types filter; the cursor passes both."""
    now = time.time()
    assert await store.add_notice(notice(0, at=now - 4 * DAY))
    assert await store.add_notice(notice(1, at=now - DAY, type="key.created"))
    assert await store.add_notice(notice(2, at=now))
    assert await store.add_notice(notice(3, at=now, type="key.revoked"))
    everything = WebhookEndpoint(receiver.url, SECRET, name="all")
    keys = WebhookEndpoint(receiver.url, SECRET, name="keys", types={"key.created", "key.revoked"})
    async with sender(store, everything) as s:
        assert await s.run_once() == 3
        assert s.status[0].skipped == 1
    async with sender(store, keys) as s:
        assert await s.run_once() == 2
    assert receiver.deliveries == [notice(i).id for i in (1, 2, 3, 1, 3)]
    assert await store.cursor("webhook:all") == 4 and await store.cursor("webhook:keys") == 4


@slow
async def test_a_lease_held_elsewhere_stops_delivery_until_it_expires(
    store: Storage, receiver: WebhookReceiver, now_clock: FakeClock
):
    """While another sender holds the lease nothing is sent; once it expires, all is."""
    await add(store, 3)
    endpoint = WebhookEndpoint(receiver.url, SECRET)
    assert await store.take_lease(endpoint.reader, "other", now=now_clock(), ttl=30)
    async with sender(store, endpoint, clock=now_clock) as s:
        assert await s.run_once() == 0 and not s.status[0].holding
        now_clock.advance(31)
        assert await s.run_once() == 3 and s.status[0].holding
    assert receiver.posts == 3


@slow
async def test_fencing_a_sender_that_lost_its_lease_moves_nothing(
    store: Storage,
    receiver: WebhookReceiver,
    now_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
):
    """A sender whose lease lapsed and was taken mid-notice leaves the cursor as it was."""
    await add(store, 3)
    endpoint = WebhookEndpoint(receiver.url, SECRET)
    receiver.delay = 0.3
    async with sender(store, endpoint, clock=now_clock) as s:
        task = asyncio.create_task(s.run_once())
        await until(lambda: receiver.held > 0, "a held request", 10)
        now_clock.advance(11)  # past the 10 s lease
        assert await store.take_lease(endpoint.reader, "intruder", now=now_clock(), ttl=30)
        assert await task == 0
    assert receiver.deliveries == [notice(0).id]  # it arrived, but is not acknowledged
    assert await store.cursor(endpoint.reader) is None
    assert "the lease was lost with a notice in flight" in caplog.text


@slow
async def test_run_stops_on_the_event_and_releases_the_lease(
    store: Storage, receiver: WebhookReceiver
):
    """`run` delivers as notices arrive, stops when told and releases its lease."""
    endpoint = WebhookEndpoint(receiver.url, SECRET)
    s = sender(store, endpoint, poll=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(s.run(stop))
    ids = await add(store, 5)
    await until(lambda: receiver.distinct() == 5, "the first notices", 10)
    ids += await add(store, 5, first=5)
    await until(lambda: receiver.distinct() == 10, "the next notices", 10)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert receiver.deliveries == ids
    assert await store.take_lease(endpoint.reader, "next", now=time.time(), ttl=30)


@slow
async def test_every_http_and_store_call_is_bounded(
    store: Storage, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
):
    """A silent endpoint or a hanging store costs at most `timeout` seconds; both are retried."""
    await add(store, 1)
    receiver.delay = 3.0
    async with sender(store, WebhookEndpoint(receiver.url, SECRET), timeout=0.3) as s:
        began = time.monotonic()
        assert await s.run_once() == 0
        assert time.monotonic() - began < 1.5
        assert s.status[0].last_error == "no answer within 0.3 s"

        async def hang(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(30)

        monkeypatch.setattr(store, "notices_after", hang)
        s.status[0].next_try = 0.0
        began = time.monotonic()
        assert await s.run_once() == 0
        assert time.monotonic() - began < 1.5
        assert "no answer within 0.3 s" in str(s.status[0].store_error)
        monkeypatch.undo()
        receiver.delay = 0.0
        assert await s.run_once() == 1
        assert s.status[0].store_error is None


# -- the command, in real processes -----------------------------------------------------------

LAUNCH = """
import argparse, sys
from meterware import cli
from meterware.cli import webhooks
from meterware.cli.args import store_options

build = cli.parser

def parser():
    top = build()
    commands = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    if "webhooks" not in commands.choices:
        webhooks.register(commands, store_options())
    return top

cli.parser = parser
sys.exit(cli.main())
"""
"""`meterware ...` with the `webhooks` commands registered (a no-op once `meterware.cli`
registers them itself)."""


def environment(url: str, secret: str = SECRET) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
    env.update(METERWARE_WEBHOOK_URL=url, METERWARE_WEBHOOK_SECRET=secret, PYTHONUNBUFFERED="1")
    return env


def meterware(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LAUNCH, *args], capture_output=True, text=True, env=env,
        timeout=timeout,
    )  # fmt: skip


class Sidecar:
    """`meterware webhooks deliver --follow` as a process, started again as often as it is
    killed, its output kept in files of `tmp_path`."""

    def __init__(self, tmp_path: Path, storage: str, env: dict[str, str], *options: str):
        self.tmp_path = tmp_path
        self.command = [sys.executable, "-c", LAUNCH, "webhooks", "deliver", "--follow",
                        "--storage", storage, "--json", *options]  # fmt: skip
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.outputs: list[Path] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.runs += 1
        out = self.tmp_path / f"sidecar-{id(self)}-{self.runs}.out"
        err = out.with_suffix(".err")
        self.outputs += [out, err]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=stdout, stderr=stderr
            )

    def kill(self) -> None:
        """SIGKILL, and wait for the process to be gone."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def term(self) -> tuple[int, Any]:
        """SIGTERM (a graceful stop): the exit status, and the summary it printed."""
        assert self.process is not None
        process, self.process = self.process, None
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=30)
        return status, json.loads(self.outputs[-2].read_text())

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.outputs if p.exists())


@pytest.fixture
async def shared(durable_backend: Backend) -> tuple[Storage, str]:
    """An open store that other processes open too, and its URL."""
    store = durable_backend.new()
    await store.open()
    return store, durable_backend.url


@slow
async def test_command_delivers_tests_and_lists_rejections(
    shared: tuple[Storage, str], receiver: WebhookReceiver
):
    """`deliver`, `test` and `rejected` do their job and print no secret."""
    store, url = shared
    env = environment(receiver.url)
    ids = await add(store, 5)
    done = meterware("webhooks", "deliver", "--storage", url, "--json", env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["delivered"] == 5 and summary["position"] == 5 and summary["gave_up"] is None
    assert receiver.deliveries == ids
    text = meterware("webhooks", "deliver", "--storage", url, env=env)
    assert text.returncode == 0 and "delivered:" in text.stdout and "0 notices" in text.stdout

    test = meterware("webhooks", "test", "--json", env=env)
    assert test.returncode == 0, test.stderr
    sent = json.loads(test.stdout)
    assert sent["status"] == 200 and receiver.payloads[sent["webhook_id"]]["type"] == (
        "meterware.test"
    )

    reader = WebhookEndpoint(receiver.url, SECRET).reader
    none = meterware("webhooks", "rejected", "--storage", url, env=env)
    assert none.returncode == 0 and "No notices given up on" in none.stdout
    await store.advance_cursor(reader, 5, rejected=[(3, ids[2], "HTTP 400 to 5 attempts")])
    listed = meterware("webhooks", "rejected", "--storage", url, "--json", env=env)
    assert [(r["seq"], r["id"], r["reason"]) for r in json.loads(listed.stdout)] == [
        (3, ids[2], "HTTP 400 to 5 attempts")
    ]
    for run in (done, text, test, none, listed):
        for part in secret_parts():
            assert part not in run.stdout + run.stderr


@slow
async def test_command_failures_and_exit_statuses(
    shared: tuple[Storage, str], receiver: WebhookReceiver
):
    """No endpoint 1, bad option 2, endpoint down 1, lease held 7, bad secret named unshown."""
    store, url = shared
    await add(store, 1)
    bare = {k: v for k, v in environment(receiver.url).items() if not k.startswith("METERWARE_")}
    missing = meterware("webhooks", "deliver", "--storage", url, env=bare)
    assert missing.returncode == 1 and "METERWARE_WEBHOOK_URL" in missing.stderr
    option = meterware("webhooks", "deliver", "--secret", "whsec_x", "--storage", url, env=bare)
    assert option.returncode == 2

    receiver.fail_next(2, 503)
    env = environment(receiver.url)
    failed = meterware("webhooks", "deliver", "--retries", "1", "--storage", url, env=env)
    assert failed.returncode == 1 and "HTTP 503" in failed.stderr and receiver.posts == 2

    endpoint = WebhookEndpoint(receiver.url, SECRET)
    assert await store.take_lease(endpoint.reader, "elsewhere", now=time.time(), ttl=60)
    held = meterware("webhooks", "deliver", "--storage", url, env=env)
    assert held.returncode == 7 and "another sender holds the lease" in held.stderr

    wrong = "whsec_" + base64.b64encode(b"short").decode()
    bad = meterware("webhooks", "test", env=environment(receiver.url, wrong))
    assert bad.returncode == 1 and "decodes to 5 bytes" in bad.stderr
    assert wrong not in bad.stderr and wrong[6:] not in bad.stderr
    for run in (missing, option, failed, held):
        for part in secret_parts():
            assert part not in run.stdout + run.stderr


KILL_NOTICES = 200
KILLS = 15
# When the sidecar is killed (`moment`):
# - `held`: while the receiver holds one of its requests (a 0.5 s delay), before processing
#   it. The receiver then sees the hang-up and does not process it: no repeat is possible,
#   so none is allowed.
# - `answered`: by the receiver, right after it processed a notice and before answering it:
#   the worst moment (the sender never learns of it), so one repeat per kill.
# - `random`: a random pause after some progress, the receiver answering at once.
# Every repeat must be of a notice hit by a kill: at most one per kill not `held`.


@slow
@pytest.mark.parametrize("moment", ["held", "answered", "random"])
async def test_a_sender_killed_mid_delivery_and_restarted(
    moment: str, shared: tuple[Storage, str], tmp_path: Path
):
    """Killed 15 times over 200 notices: all arrive, verified, at most one repeat per kill."""
    store, url = shared
    ids = await add(store, KILL_NOTICES)
    rng = random.Random(f"kill-{moment}")
    with WebhookReceiver(SECRET) as receiver:
        env = environment(receiver.url)
        sidecar = Sidecar(tmp_path, url, env, "--owner", "sidecar-1", "--timeout", "2")
        kills = 0
        try:
            while kills < KILLS:
                sidecar.start()
                target = receiver.distinct() + rng.randint(3, 10)
                if moment == "answered":
                    pid = sidecar.pid

                    def kill_now(msg_id: str, pid: int = pid, target: int = target) -> None:
                        if receiver.distinct() >= target:
                            receiver.on_delivery = None
                            os.kill(pid, signal.SIGKILL)

                    receiver.on_delivery = kill_now
                    process = sidecar.process
                    assert process is not None
                    wait_for(lambda p=process: p.poll() is not None, "the kill", 30)
                else:
                    wait_for(lambda t=target: receiver.distinct() >= t, "progress", 30)
                    if moment == "held":
                        receiver.delay = 0.5
                        wait_for(lambda: receiver.held > 0, "a held request", 10)
                    else:
                        await asyncio.sleep(rng.uniform(0.0, 0.01))
                sidecar.kill()
                kills += 1
                receiver.delay = 0.0
                wait_for(lambda: receiver.in_flight == 0, "abandoned requests", 10)
            sidecar.start()
            wait_for(lambda: receiver.distinct() == KILL_NOTICES, "every notice", 60)
            status, summary = sidecar.term()
        finally:
            sidecar.kill()
        duplicates, arrivals = receiver.duplicates(), receiver.arrival_duplicates()
        print(
            f"\n[webhooks kill test, {moment}, {store!r}] {KILL_NOTICES} notices, {kills} kills"
            f" ({receiver.abandoned} while a request was held): {duplicates} notices processed"
            f" twice {receiver.repeated()}, {arrivals} repeated arrivals (abandoned included),"
            f" {receiver.bad_signatures} bad signatures"
        )
        assert status == 0 and summary["delivered"] > 0
        assert set(receiver.deliveries) == set(ids) and receiver.bad_signatures == 0
        assert duplicates <= kills - receiver.abandoned
        assert max(receiver.repeated().values(), default=1) <= 2
        if moment == "held":
            assert receiver.abandoned == kills and duplicates == 0
        assert await store.cursor(WebhookEndpoint(receiver.url, SECRET).reader) == KILL_NOTICES
        for part in secret_parts():
            assert part not in sidecar.output()


@slow
async def test_two_senders_at_once_deliver_each_notice_once(
    shared: tuple[Storage, str], tmp_path: Path
):
    """Two sidecars at once: one delivers at a time, no notice arrives twice."""
    store, url = shared
    ids = await add(store, 150)
    with WebhookReceiver(SECRET, delay=0.005) as receiver:
        env = environment(receiver.url)
        options = ("--timeout", "1", "--lease-ttl", "4")
        a = Sidecar(tmp_path, url, env, "--owner", "a", *options)
        b = Sidecar(tmp_path, url, env, "--owner", "b", *options)
        try:
            a.start()
            b.start()
            wait_for(lambda: receiver.distinct() >= 50, "deliveries", 30)
            ids += await add(store, 50, first=150)
            wait_for(lambda: receiver.distinct() == 200, "every notice", 60)
            (status_a, summary_a), (status_b, summary_b) = a.term(), b.term()
        finally:
            a.kill()
            b.kill()
        assert status_a == status_b == 0
        assert receiver.deliveries == ids and receiver.arrival_duplicates() == 0
        assert receiver.max_in_flight == 1
        assert summary_a["delivered"] + summary_b["delivered"] == 200


@slow
async def test_a_standby_sender_takes_over_from_a_killed_one(
    shared: tuple[Storage, str], tmp_path: Path
):
    """A standby takes over a killed sidecar once its lease expires, repeating at most one."""
    store, url = shared
    ids = await add(store, 200)
    with WebhookReceiver(SECRET, delay=0.02) as receiver:  # 200 notices take ~5 s
        env = environment(receiver.url)
        options = ("--timeout", "1", "--lease-ttl", "4")
        a = Sidecar(tmp_path, url, env, "--owner", "a", *options)
        b = Sidecar(tmp_path, url, env, "--owner", "b", *options)
        try:
            a.start()
            wait_for(lambda: receiver.distinct() >= 30, "the first sender", 30)
            b.start()
            await asyncio.sleep(1.0)  # b is up, standing by
            wait_for(lambda: receiver.distinct() >= 100, "more deliveries", 30)
            a.kill()
            killed_at = time.monotonic()
            at_kill = receiver.distinct()
            wait_for(lambda: receiver.distinct() > at_kill, "the standby", 30)
            took_over = time.monotonic() - killed_at
            wait_for(lambda: receiver.distinct() == 200, "every notice", 60)
            status_b, summary_b = b.term()
        finally:
            a.kill()
            b.kill()
        print(
            f"\n[webhooks takeover, {store!r}] standby delivered after {took_over:.1f} s;"
            f" {receiver.duplicates()} notices processed twice"
        )
        assert status_b == 0 and 0 < summary_b["delivered"] <= 200 - 100 + 1
        assert set(receiver.deliveries) == set(ids) and receiver.duplicates() <= 1
        assert receiver.max_in_flight == 1 and took_over < 4 + 3
