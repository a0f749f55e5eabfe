"""Webhooks: the stored notices, delivered to HTTP endpoints and signed as the Standard
Webhooks specification describes (https://www.standardwebhooks.com).

A notice (a threshold crossed, a key created, a concern failing open...) is stored once
(`store.add_notice`). A `WebhookSender` delivers the stored notices to each
`WebhookEndpoint`, in the order they were stored. Run it in the app (`await
sender.run(stop)` in a background task) or beside it (`meterware webhooks deliver
--follow`, see `meterware.cli.webhooks`). It needs `pip install 'meterware[webhooks]'`
(`standardwebhooks`, `httpx`).

The request
    `POST <url>`, `content-type: application/json`, with the body
    `{"type": "<notice type>", "timestamp": "2026-04-12T14:30:00.000Z", "data": {<the
    notice's data>, "account_id": ..., "key_id": ..., "id": "<notice id>"}}` (`timestamp`
    is when the notice was created) and the headers `webhook-id` (the notice's id, the
    same on every attempt), `webhook-timestamp` (the attempt's Unix time, in seconds)
    and `webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, signed by
    the `standardwebhooks` library). A receiver checks it with
    `standardwebhooks.Webhook(secret).verify(body, headers)`, and deduplicates on
    `webhook-id`, as the specification asks.

Delivery
    *At least once* to each endpoint; a second time only around a failure. Each notice
    is stored before anything is sent. Each endpoint is a reader of the stored notices,
    with a cursor in the store (`webhook:<name>`): the last notice it is done with. A
    notice is sent until the endpoint answers 2xx, and the cursor moves past it right
    after that answer (one write per notice, not per batch), before the next one is
    sent. So a sender that dies (killed, crashed) sends one notice again when it, or a
    standby, resumes, with the same `webhook-id`: the one it had sent and had no answer
    for (the endpoint may have processed it), or the one whose 2xx came in just before
    the cursor's write (the time of one store write). The same happens when the store
    fails that write. At most one notice per endpoint and failure; receivers drop it by
    its `webhook-id`, as the specification asks. A graceful stop (`stop`, SIGTERM to
    the command) finishes the notice in flight and repeats nothing.

Ordering and retries
    Per endpoint, notices go one at a time in stored order: a notice being retried holds
    back the ones after it. A failed attempt (no answer within `timeout`, a connection
    error, any status but 2xx) is retried after a backoff of the endpoint's: 1 s
    doubling to 5 minutes, each wait drawn between half and all of it (jitter), or
    longer when the answer has a `retry-after` (honoured up to an hour). It resets at
    the next 2xx. Endpoints are independent: each has its own loop, backoff and lease,
    so a failing or slow endpoint holds back no other.

Giving up
    A notice is given up on when the endpoint refused it `refusals` times (default 5)
    with a 4xx other than 408, 409 and 429 (which are retried like a 5xx), or when it
    could not be delivered within `max_age` of its creation (default 3 days, as the
    specification's schedule; while an endpoint is failing, a notice older than that is
    given up on without another attempt). It is recorded in the store with the reason,
    in the write that moves the cursor past it (`store.rejections("webhook:<name>")`,
    `meterware webhooks rejected`), logged at ERROR, and the notices after it go on. A
    wrong secret is such a case: the receiver answers 400 to every attempt.

The lease
    One sender per endpoint at a time: the store lease `webhook:<name>`, held by
    `owner` for `lease_ttl` seconds and renewed before a notice is sent whenever less
    than `2 × timeout + 1` seconds of it remain, so it cannot lapse while the notice is
    in flight and its cursor written. *Fencing*: before the cursor moves, the sender
    checks that the lease it holds still has `timeout` seconds to run (by its clock);
    if not (a stalled process), it asks the store again, and a sender that lost the
    lease moves nothing and stops: the holder sends that notice again. Another sender
    stands by and takes over within `lease_ttl` (and a `poll`) of a holder's crash, at
    its next poll after a graceful stop (`run` releases its leases). A process restarted
    with the `owner` it had resumes its own lease at once. Leases compare the clocks of
    the processes that share them: keep them in sync.

A new endpoint (no cursor yet) starts with the notices of the past `max_age`; older ones
are skipped, as are notices of types the endpoint does not take. Every HTTP call and
every store call is bounded by `timeout` seconds. The secret is never in a repr, a log
line or an exception.

Environment (`endpoints_from_env`, the `meterware webhooks` command):

| variable | what |
| --- | --- |
| `METERWARE_WEBHOOK_URL` | the endpoint's URL (http or https) |
| `METERWARE_WEBHOOK_SECRET` | its secret, `whsec_` + base64 of 24 to 64 random bytes |
| `METERWARE_WEBHOOK_NAME` | its name in the store (optional; default from the URL) |
| `METERWARE_WEBHOOK_TYPES` | the notice types it takes, comma-separated (optional: all) |
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import importlib
import json
import logging
import os
import random
import re
import secrets
import socket
import time
from collections.abc import Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from meterware.clock import isoformat_ms
from meterware.errors import ConfigurationError, StorageError
from meterware.guard import bounded
from meterware.storage.base import Storage, redact
from meterware.storage.records import Notice

if TYPE_CHECKING:
    import httpx

__all__ = [
    "MAX_AGE",
    "Attempt",
    "EndpointStatus",
    "WebhookEndpoint",
    "WebhookSender",
    "endpoints_from_env",
    "new_secret",
    "payload",
    "retry_delay",
    "send_once",
    "signed_request",
]

log = logging.getLogger("meterware.webhooks")

T = TypeVar("T")

FIRST_DELAY = 1.0  # seconds before the first retry
MAX_DELAY = 300.0  # the longest backoff
MAX_RETRY_AFTER = 3600.0  # the longest `retry-after` honoured
MAX_AGE = 3 * 86_400.0
"""How long a notice is retried, from its creation (the specification's schedule spans
about 3 days)."""
REFUSALS = 5  # 4xx answers (but 408, 409, 429) to one notice before it is given up on
RETRIED_4XX = frozenset({408, 409, 429})
POLL = 1.0  # seconds between looks for new notices when caught up
MAX_ANSWER = 65_536  # bytes of an answer's body read (more: the connection is dropped)
_PREFIX = "whsec_"
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_HEADER_VALUE = re.compile(r"[!-~]{1,255}")  # what a webhook-id may be: visible ASCII


def _require() -> None:
    for module in ("standardwebhooks", "httpx"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigurationError(
                f"webhooks need {module}: pip install 'meterware[webhooks]'"
            ) from None


def new_secret() -> str:
    """A fresh endpoint secret: `whsec_` + base64 of 32 random bytes."""
    return _PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _check_secret(secret: object) -> None:
    how = (
        "a webhook secret is 'whsec_' followed by the base64 of 24 to 64 random bytes "
        "(meterware.webhooks.new_secret() makes one)"
    )
    if not isinstance(secret, str) or not secret.startswith(_PREFIX):
        raise ConfigurationError(f"{how}: this one does not start with 'whsec_'")
    encoded = secret[len(_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{how}: this one is not base64 after 'whsec_'") from None
    if not 24 <= len(key) <= 64:
        raise ConfigurationError(f"{how}: this one decodes to {len(key)} bytes")


class WebhookEndpoint:
    """Where notices go, and the secret they are signed with.

    - `url` - the endpoint, `http://` or `https://`.
    - `secret` - `whsec_` + base64 of 24 to 64 random bytes (the Standard Webhooks form),
      checked here; never shown in a repr, a log line or an error.
    - `name` - the endpoint's cursor, lease and rejections in the store
      (`webhook:<name>`). Defaults to a hash of the URL, so every process that sends to
      one URL shares them. Give one when the URL may change.
    - `types` - the notice types it takes. Defaults to None: every type.
    """

    __slots__ = ("_secret", "_signer", "name", "types", "url")

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        name: str | None = None,
        types: Collection[str] | None = None,
    ) -> None:
        try:
            parts = urlsplit(url) if isinstance(url, str) else None
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"a webhook URL is http:// or https://, not {_shown(url)!r}")
        _check_secret(secret)
        if name is not None and not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"a webhook endpoint's name is 1-64 characters of A-Za-z0-9_.:-, not {name!r}"
            )
        if isinstance(types, str) or (types is not None and not types):
            raise ConfigurationError("types is a non-empty collection of notice types, or None")
        self.url = url
        self.name = name or "url_" + hashlib.sha256(url.encode()).hexdigest()[:16]
        self.types = None if types is None else frozenset(types)
        self._secret = secret
        self._signer: Any = None

    def __repr__(self) -> str:
        return f"WebhookEndpoint({redact(self.url)!r}, name={self.name!r})"

    @property
    def reader(self) -> str:
        """Its cursor, lease and rejections in the store."""
        return f"webhook:{self.name}"

    def wants(self, notice_type: str) -> bool:
        """Whether it takes notices of this type."""
        return self.types is None or notice_type in self.types

    def sign(self, msg_id: str, timestamp: int, body: str) -> str:
        """The `webhook-signature` of one attempt (the `standardwebhooks` library's)."""
        if self._signer is None:
            _require()
            from standardwebhooks import Webhook

            self._signer = Webhook(self._secret)
        at = datetime.fromtimestamp(timestamp, tz=timezone.utc)
        signature: str = self._signer.sign(msg_id, at, body)
        return signature


def _span(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:g} days"
    return f"{seconds / 3600:g} hours" if seconds >= 3600 else f"{seconds:g} s"


def _shown(url: object) -> str:
    return redact(url) if isinstance(url, str) else repr(url)


def endpoints_from_env(environ: Mapping[str, str] | None = None) -> list[WebhookEndpoint]:
    """The endpoint `METERWARE_WEBHOOK_URL` and `METERWARE_WEBHOOK_SECRET` name (with
    `METERWARE_WEBHOOK_NAME` and `METERWARE_WEBHOOK_TYPES` if set), or none when no URL
    is set. A URL without a secret (or the reverse) is a `ConfigurationError`."""
    env = os.environ if environ is None else environ
    url = env.get("METERWARE_WEBHOOK_URL") or None
    secret = env.get("METERWARE_WEBHOOK_SECRET") or None
    if url is None and secret is None:
        return []
    if url is None or secret is None:
        missing = "METERWARE_WEBHOOK_SECRET" if url else "METERWARE_WEBHOOK_URL"
        raise ConfigurationError(f"webhooks: {missing} is not set")
    types = [t.strip() for t in (env.get("METERWARE_WEBHOOK_TYPES") or "").split(",")]
    types = [t for t in types if t]
    name = env.get("METERWARE_WEBHOOK_NAME") or None
    return [WebhookEndpoint(url, secret, name=name, types=types or None)]


def payload(notice: Notice) -> str:
    """The request's body: the notice as Standard Webhooks recommends (minified JSON)."""
    data = {**notice.data, "account_id": notice.account_id, "key_id": notice.key_id}
    data["id"] = notice.id
    event = {"type": notice.type, "timestamp": isoformat_ms(notice.created_at), "data": data}
    return json.dumps(event, separators=(",", ":"), default=str)


def signed_request(
    endpoint: WebhookEndpoint, notice: Notice, timestamp: int
) -> tuple[dict[str, str], bytes]:
    """The headers and body of one attempt to deliver `notice`, at `timestamp`."""
    body = payload(notice)
    headers = {
        "content-type": "application/json",
        "webhook-id": notice.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": endpoint.sign(notice.id, timestamp, body),
    }
    return headers, body.encode()


def retry_delay(failures: int, draw: float) -> float:
    """The wait after `failures` consecutive failed attempts (1 s doubling to 5 min),
    `draw` (from 0 to 1) placing it between half and all of that."""
    nominal = min(FIRST_DELAY * 2.0 ** min(failures - 1, 30), MAX_DELAY)
    return nominal * (0.5 + 0.5 * draw)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt got: the HTTP `status` (None: no answer, then `error` says why),
    and the `retry-after` it asked for, in seconds."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def refused(self) -> bool:
        """A 4xx that is not worth retrying for long (not 408, 409 or 429)."""
        status = self.status
        return status is not None and 400 <= status < 500 and status not in RETRIED_4XX

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else str(self.error)


class _Poster:
    """One httpx client; each POST, its answer's status and headers within `timeout`
    seconds. The answer's body is read (to keep the connection) in what is left of
    them, and does not matter: a 2xx whose body breaks off is a 2xx."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Attempt:
        import httpx

        if self._client is None:
            from meterware import __version__

            self._client = httpx.AsyncClient(
                timeout=self.timeout, headers={"user-agent": f"meterware/{__version__}"}
            )
        request = self._client.build_request("POST", url, headers=headers, content=body)
        deadline = time.monotonic() + self.timeout
        try:
            response = await asyncio.wait_for(self._client.send(request, stream=True), self.timeout)
        except asyncio.TimeoutError:
            return Attempt(None, f"no answer within {self.timeout:g} s")
        except (httpx.HTTPError, OSError) as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:300])
        attempt = Attempt(response.status_code, None, _retry_after(response.headers))
        try:
            left = max(0.0, deadline - time.monotonic())
            await asyncio.wait_for(_drain(response), left)
        except (asyncio.TimeoutError, httpx.HTTPError, OSError):
            pass
        finally:
            await response.aclose()
        return attempt

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


async def _drain(response: httpx.Response) -> None:
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > MAX_ANSWER:
            return


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


async def send_once(
    endpoint: WebhookEndpoint,
    notice: Notice,
    *,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> Attempt:
    """Send one notice to one endpoint, once, nothing stored (a test of the endpoint)."""
    _require()
    poster = _Poster(timeout)
    try:
        headers, body = signed_request(endpoint, notice, int(clock()))
        return await poster.post(endpoint.url, headers, body)
    finally:
        await poster.aclose()


@dataclass
class EndpointStatus:
    """Where a sender is with one endpoint.

    `delivered` notices were answered 2xx, `rejected` given up on, `skipped` not sent
    (types it does not take, history older than `max_age` for a new endpoint), since the
    sender started; `failures` attempts failed. `holding`: the store's last answer to
    its taking the lease (a release leaves it as it was); `caught_up`: nothing was left
    after `position` (its cursor) when it last looked; `failing` consecutive attempts
    failed (`last_error` the latest), the next one not before `next_try`.
    `store_error`: why its last round could not read or write the store (None when it
    could).
    """

    name: str
    url: str
    delivered: int = 0
    rejected: int = 0
    skipped: int = 0
    failures: int = 0
    failing: int = 0
    last_error: str | None = None
    holding: bool = False
    caught_up: bool = False
    position: int | None = None
    next_try: float = 0.0
    store_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "url": self.url, "delivered": self.delivered,
            "rejected": self.rejected, "skipped": self.skipped, "failures": self.failures,
            "failing": self.failing, "last_error": self.last_error, "holding": self.holding,
            "caught_up": self.caught_up, "position": self.position,
            "store_error": self.store_error,
        }  # fmt: skip


@dataclass
class _Reader:
    """A sender's state for one endpoint."""

    endpoint: WebhookEndpoint
    status: EndpointStatus
    held_until: float = 0.0  # the lease, by our clock (0: not held)
    position: int | None = None  # the cursor, known while the lease is held throughout
    written: int = 0  # the cursor as last written or read
    fresh: bool = False  # no cursor in the store yet: a new endpoint
    head: str = ""  # the notice being retried
    refusals: int = 0  # its 4xx answers
    told: bool | None = None  # whether the log last said we hold the lease
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _LeaseLost(Exception):
    pass


class WebhookSender:
    """Delivers the stored notices to `endpoints` (see the module doc for guarantees).

    - `store` - an open store (the one notices are added to); the caller closes it.
    - `endpoints` - the `WebhookEndpoint`s, with distinct names.
    - `owner` - who holds the leases. Defaults to `host:pid:random`; a stable one (a
      pod's name) lets a restarted process resume at once. Never two live processes
      with one owner.
    - `lease_ttl` - seconds a lease lasts unless renewed: how long a crashed sender holds
      up another. Defaults to 30; more than `2 × timeout + 1`.
    - `timeout` - the bound of each HTTP call and each store call, in seconds.
      Defaults to 10.
    - `batch` - notices read from the store at a time. Defaults to 100.
    - `max_age` - how long a notice is retried, from its creation. Defaults to 3 days.
    - `refusals` - 4xx answers (but 408, 409, 429) to a notice before it is given up on.
      Defaults to 5.
    - `poll` - seconds between looks for new notices, in `run`. Defaults to 1.
    - `clock` - the wall clock (leases, backoff, ages, `webhook-timestamp`). Defaults
      to `time.time`.
    """

    def __init__(
        self,
        store: Storage,
        endpoints: Collection[WebhookEndpoint],
        *,
        owner: str | None = None,
        lease_ttl: float = 30.0,
        timeout: float = 10.0,
        batch: int = 100,
        max_age: float = MAX_AGE,
        refusals: int = REFUSALS,
        poll: float = POLL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        _require()
        names = [e.name for e in endpoints]
        if not names:
            raise ConfigurationError("a webhook sender needs at least one endpoint")
        if len(set(names)) != len(names):
            raise ConfigurationError(f"webhook endpoints need distinct names: {sorted(names)}")
        if not timeout > 0 or not lease_ttl > 2 * timeout + 1:
            raise ConfigurationError("timeout > 0 and lease_ttl > 2 × timeout + 1 (seconds)")
        if batch < 1 or refusals < 1 or not max_age > 0 or not poll > 0:
            raise ConfigurationError("batch and refusals >= 1, max_age and poll > 0")
        self.store = store
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease_ttl = lease_ttl
        self.timeout = timeout
        self.batch = batch
        self.max_age = max_age
        self.refusals = refusals
        self.poll = poll
        self.clock = clock
        self._reserve = 2 * timeout + 1  # lease left to start a notice
        self._readers = [_Reader(e, EndpointStatus(e.name, redact(e.url))) for e in endpoints]
        self._poster = _Poster(timeout)
        self._random = random.Random()
        self._stop: asyncio.Event | None = None
        self._store_failing = False

    def __repr__(self) -> str:
        return f"WebhookSender({[r.endpoint for r in self._readers]!r}, owner={self.owner!r})"

    @property
    def status(self) -> list[EndpointStatus]:
        """Where it is with each endpoint."""
        return [r.status for r in self._readers]

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the leases it holds, close its HTTP connections."""
        for reader in self._readers:
            await self._release(reader)
        await self._poster.aclose()

    # -- the loop -----------------------------------------------------------------------

    async def run_once(self) -> int:
        """Deliver what is pending to each endpoint whose lease it holds (or takes) and
        whose backoff has passed, until caught up or an attempt fails; the number of
        notices delivered. The endpoints are served concurrently."""
        counts = await asyncio.gather(*(self._round(r) for r in self._readers))
        return sum(counts)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set, each endpoint in a loop of its own (a round, then
        `poll` seconds); then finish the notice in flight, release the leases and close
        the connections."""
        self._stop = stop
        try:
            await asyncio.gather(*(self._follow(r, stop) for r in self._readers))
        finally:
            self._stop = None
            await self.aclose()

    async def _follow(self, reader: _Reader, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._round(reader)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll)

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _round(self, reader: _Reader) -> int:
        status = reader.status
        before = status.delivered
        async with reader.lock:  # run_once and run on one sender: one round at a time
            try:
                if self.clock() >= status.next_try:
                    await self._deliver(reader)
                elif reader.held_until:  # backing off: keep the lease meanwhile
                    await self._hold(reader)
                status.store_error = None
                self._store_answers()
            except _LeaseLost:
                pass
            except StorageError as exc:
                reader.position = None  # read the cursor again
                status.store_error = str(exc)
                self._store_failed(exc)
            except Exception:
                reader.position = None
                log.exception("%s: delivery round failed", reader.endpoint.reader)
        return status.delivered - before

    async def _deliver(self, reader: _Reader) -> None:
        status = reader.status
        if not await self._hold(reader):
            return
        if reader.position is None:
            stored = await self._call(self.store.cursor(reader.endpoint.reader), "cursor read")
            reader.fresh = stored is None
            reader.position = reader.written = stored or 0
        position = reader.position
        status.position = reader.written
        while not self._stopping():
            notices = await self._call(
                self.store.notices_after(position, self.batch), "notices read"
            )
            status.caught_up = not notices
            if not notices:
                break
            for notice in notices:
                if self._stopping():
                    break
                if not await self._handle(reader, notice):
                    return
                reader.position = position = notice.seq
        if position > reader.written and self._holds(reader):  # skipped ones at the end
            await self._advance(reader, position)

    async def _handle(self, reader: _Reader, notice: Notice) -> bool:
        """Deliver one notice, skip it or give it up; False when the round must end (a
        failed attempt: the backoff runs)."""
        endpoint, status, now = reader.endpoint, reader.status, self.clock()
        too_old = now - notice.created_at >= self.max_age
        if not endpoint.wants(notice.type) or (reader.fresh and too_old):
            status.skipped += 1
            return True
        reader.fresh = False  # past the history a new endpoint skips
        if not _HEADER_VALUE.fullmatch(notice.id):
            await self._give_up(reader, notice, "its id cannot be a webhook-id header")
            return True
        if too_old and status.failing:
            why = f"not delivered within {_span(self.max_age)}: {status.last_error}"
            await self._give_up(reader, notice, why)
            return True
        if not await self._hold(reader) or reader.position is None:
            raise _LeaseLost  # lost, or lapsed and taken again: read the cursor again
        headers, body = signed_request(endpoint, notice, int(self.clock()))
        attempt = await self._poster.post(endpoint.url, headers, body)
        if attempt.ok:
            if not await self._still_held(reader):
                raise _LeaseLost
            await self._advance(reader, notice.seq)
            self._delivered(reader)
            return True
        self._failed(reader, notice, attempt)
        if notice.id != reader.head:
            reader.head, reader.refusals = notice.id, 0
        reader.refusals += attempt.refused
        if reader.refusals >= self.refusals:
            why = f"{attempt.describe()} to {reader.refusals} attempts"
            await self._give_up(reader, notice, why)
        elif self.clock() - notice.created_at >= self.max_age:
            why = f"not delivered within {_span(self.max_age)}: {attempt.describe()}"
            await self._give_up(reader, notice, why)
        return False

    def _delivered(self, reader: _Reader) -> None:
        status = reader.status
        status.delivered += 1
        if status.failing:
            log.warning(
                "%s delivers again after %d failed attempts",
                reader.endpoint.reader, status.failing,
            )  # fmt: skip
        status.failing, status.next_try, status.last_error = 0, 0.0, None
        reader.head, reader.refusals = "", 0

    def _failed(self, reader: _Reader, notice: Notice, attempt: Attempt) -> None:
        status = reader.status
        status.failures += 1
        status.failing += 1
        status.last_error = attempt.describe()
        delay = retry_delay(status.failing, self._random.random())
        if attempt.retry_after is not None:
            delay = max(delay, min(attempt.retry_after, MAX_RETRY_AFTER))
        status.next_try = self.clock() + delay
        level = logging.WARNING if status.failing == 1 else logging.INFO
        log.log(
            level,
            "%s (%s): notice %s not delivered (%s); next attempt in %.1f s",
            reader.endpoint.reader, status.url, notice.id, status.last_error, delay,
        )  # fmt: skip

    async def _give_up(self, reader: _Reader, notice: Notice, reason: str) -> None:
        if not await self._still_held(reader):
            raise _LeaseLost
        log.error(
            "%s: notice %s (seq %d, %s) GIVEN UP, it will not be sent again: %s",
            reader.endpoint.reader, notice.id, notice.seq, notice.type, reason,
        )  # fmt: skip
        await self._advance(reader, notice.seq, [(notice.seq, notice.id, reason)])
        reader.status.rejected += 1
        reader.head, reader.refusals = "", 0

    async def _advance(
        self, reader: _Reader, position: int, rejected: Sequence[tuple[int, str, str]] = ()
    ) -> None:
        work = self.store.advance_cursor(
            reader.endpoint.reader, position, rejected=rejected, now=self.clock()
        )
        await self._call(work, "cursor write")
        reader.position = reader.written = reader.status.position = position

    # -- the lease ----------------------------------------------------------------------

    def _holds(self, reader: _Reader) -> bool:
        """Whether the lease has `timeout` seconds left, by our clock: long enough for a
        cursor write."""
        return reader.held_until - self.clock() >= self.timeout

    async def _hold(self, reader: _Reader) -> bool:
        """Hold the lease with enough time left to send a notice and write the cursor:
        renewed when less than `2 × timeout + 1` s is left. A lease that lapsed meanwhile
        (a stalled process) counts as lost, even if taken again: the cursor is read
        again."""
        now = self.clock()
        if reader.held_until - now >= self._reserve:
            return True
        lapsed = reader.held_until <= now
        held = reader.status.holding = await self._take(reader, now)
        if held != reader.told:
            reader.told = held
            log.info(
                "%s: %s", reader.endpoint.reader,
                "this sender delivers" if held else "another sender holds the lease",
            )  # fmt: skip
        if not held or lapsed:
            reader.position = None
        return held

    async def _still_held(self, reader: _Reader) -> bool:
        """The fencing check before the cursor moves (see the module doc)."""
        if self._holds(reader):
            return True
        held = reader.status.holding = await self._take(reader, self.clock())
        if not held:
            reader.position = None
            log.warning(
                "%s: the lease was lost with a notice in flight: the cursor stays, "
                "the sender holding it sends that notice again", reader.endpoint.reader,
            )  # fmt: skip
        return held

    async def _take(self, reader: _Reader, now: float) -> bool:
        """Take or renew the lease in the store; whether we hold it."""
        work = self.store.take_lease(
            reader.endpoint.reader, self.owner, now=now, ttl=self.lease_ttl
        )
        held = await self._call(work, "lease")
        reader.held_until = now + self.lease_ttl if held else 0.0
        return held

    async def _release(self, reader: _Reader) -> None:
        if not reader.held_until:
            return
        reader.held_until, reader.position = 0.0, None
        try:
            await self._call(
                self.store.release_lease(reader.endpoint.reader, self.owner), "lease release"
            )
        except StorageError as exc:
            log.warning(
                "%s: could not release the lease (it expires by itself): %s",
                reader.endpoint.reader, exc,
            )  # fmt: skip

    # -- the store ----------------------------------------------------------------------

    async def _call(self, work: Coroutine[Any, Any, T], what: str) -> T:
        return await bounded(work, self.timeout, f"webhooks: {what}")

    def _store_failed(self, exc: StorageError) -> None:
        if not self._store_failing:
            self._store_failing = True
            log.warning("webhooks: the store fails (%s): trying again", exc)

    def _store_answers(self) -> None:
        if self._store_failing:
            self._store_failing = False
            log.warning("webhooks: the store answers again")
