"""Local stand-ins for the billing systems the export sinks talk to, each speaking its
wire format and deduplicating as the real system documents:

- `StripeReceiver`: `POST /v1/billing/meter_events`, form-encoded as the stripe SDK sends
  it; Stripe's error shape; `timestamp` within the past 35 days and 5 minutes ahead; a
  repeated `identifier` refused with a 400 ("An event already exists with identifier
  ..."); `Idempotency-Key` replays.
- `OpenMeterReceiver`: `POST /api/v1/events`, one CloudEvent or a JSON batch, each parsed
  with the cloudevents SDK; a 400 problem+json for any invalid event (nothing of the
  request is ingested); a repeated `id` + `source` dropped with a 204.
- `LagoReceiver`: `POST /api/v1/events/batch` (at most 100) and `POST /api/v1/events`;
  a batch is checked as a whole (a 422 names the invalid events by index and nothing is
  stored); a repeated `transaction_id` (per subscription) refused as `value_already_exist`,
  or dropped silently with `duplicates="ignore"` (Lago's ClickHouse event store).

Each runs a real uvicorn in a thread on a port it keeps across `stop()` and `start()`
(an outage), checks a bearer key, and has knobs for faults: `fail_next(n, status)`,
`fail_rate(p, seed)` (deterministic), both with `after=True` to fail after storing (a lost
answer), and `delay` seconds before answering. Counters: `posts` (every POST that
arrived), `received` (events in the requests it processed, repeats included),
`duplicates`, `batch_sizes`; `events` holds what it keeps, once each; `totals()` sums it.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_structured
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.servers import Served

DAY = 86_400.0
R = TypeVar("R", bound="Receiver")


class Receiver:
    """What the three receivers share: the server, the fault knobs and the counters."""

    path: str

    def __init__(self, *, delay: float = 0.0, now: Callable[[], float] = time.time) -> None:
        self.delay = delay  # seconds to wait before answering each POST
        self.now = now
        self.posts = 0
        self.received = 0
        self.duplicates = 0
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()
        self._failures: list[tuple[int, bool]] = []
        self._rate: tuple[float, random.Random, int, bool] | None = None
        self.served = Served(Starlette(routes=self.routes()))

    def routes(self) -> list[Route]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return self.served.url

    def start(self) -> None:
        self.served.start()

    def stop(self) -> None:
        self.served.stop()

    def __enter__(self: R) -> R:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, n: int, status: int = 503, *, after: bool = False) -> None:
        """Answer the next `n` POSTs with `status`; with `after`, once they are processed
        (the events are kept, the answer says they were not)."""
        with self.lock:
            self._failures.extend([(status, after)] * n)

    def fail_rate(self, p: float, seed: int = 0, status: int = 503, *, after: bool = False) -> None:
        """Answer each POST with `status` with probability `p` (a seeded draw: the same
        sequence every run); `p=0` stops."""
        with self.lock:
            self._rate = (p, random.Random(seed), status, after) if p > 0 else None

    def heal(self) -> None:
        """No more faults and no delay."""
        with self.lock:
            self._failures.clear()
            self._rate = None
            self.delay = 0.0

    def _draw(self) -> tuple[int, bool] | None:
        with self.lock:
            self.posts += 1
            if self._failures:
                return self._failures.pop(0)
            if self._rate is not None:
                p, draw, status, after = self._rate
                if draw.random() < p:
                    return status, after
        return None

    async def handle(
        self, request: Request, process: Callable[[Request, bytes], Response]
    ) -> Response:
        """One POST: count it, wait `delay`, maybe fail, check the key, `process` it."""
        failure = self._draw()
        body = await request.body()
        if self.delay:
            await asyncio.sleep(self.delay)
        if failure is not None and not failure[1]:
            return self.failure(failure[0])
        refusal = self.authorize(request.headers.get("authorization", ""))
        if refusal is not None:
            return refusal
        with self.lock:
            response = process(request, body)
        if failure is not None:
            return self.failure(failure[0])
        return response

    def authorize(self, header: str) -> Response | None:
        raise NotImplementedError

    def failure(self, status: int) -> Response:
        raise NotImplementedError


# -- Stripe -----------------------------------------------------------------------------


class StripeReceiver(Receiver):
    """`POST /v1/billing/meter_events` as Stripe answers it (see the module doc).

    `duplicate_code` is the `code` of the refusal of a repeated identifier: Stripe's
    generic `resource_already_exists` by default; None for a refusal with the message
    alone, as users report seeing it. `events` maps identifier -> the stored event
    (`customer`, `value`, `timestamp`, `event_name`, `payload`).
    """

    path = "/v1/billing/meter_events"

    def __init__(
        self,
        *,
        api_key: str = "sk_test_meterware",
        customer_key: str = "stripe_customer_id",
        value_key: str = "value",
        duplicate_code: str | None = "resource_already_exists",
        delay: float = 0.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.customer_key = customer_key
        self.value_key = value_key
        self.duplicate_code = duplicate_code
        self.events: dict[str, dict[str, Any]] = {}
        self._replays: dict[str, tuple[bytes, dict[str, Any]]] = {}
        super().__init__(delay=delay, now=now)

    def routes(self) -> list[Route]:
        async def endpoint(request: Request) -> Response:
            return await self.handle(request, self._create)

        return [Route(self.path, endpoint, methods=["POST"])]

    def totals(self) -> dict[str, int]:
        """The sum of `value` per customer."""
        with self.lock:
            sums: dict[str, int] = {}
            for event in self.events.values():
                sums[event["customer"]] = sums.get(event["customer"], 0) + event["value"]
            return sums

    @staticmethod
    def error(
        status: int, message: str, *, type: str = "invalid_request_error",
        code: str | None = None, param: str | None = None, retry: bool | None = None,
    ) -> Response:  # fmt: skip
        """A response in Stripe's error shape."""
        error: dict[str, Any] = {"type": type, "message": message}
        if code is not None:
            error["code"] = code
        if param is not None:
            error["param"] = param
        headers = {"Request-Id": f"req_{uuid.uuid4().hex[:14]}"}
        if retry is not None:
            headers["Stripe-Should-Retry"] = "true" if retry else "false"
        return JSONResponse({"error": error}, status, headers=headers)

    def authorize(self, header: str) -> Response | None:
        scheme, _, key = header.partition(" ")
        if scheme.lower() == "bearer" and key == self.api_key:
            return None
        if not key:
            return self.error(401, "You did not provide an API key.")
        masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]
        return self.error(401, f"Invalid API Key provided: {masked}")

    def failure(self, status: int) -> Response:
        if status == 429:
            return self.error(429, "Too many requests.", code="rate_limit")
        return self.error(status, "The service is unavailable (injected).", type="api_error")

    def _create(self, request: Request, body: bytes) -> Response:
        key = request.headers.get("idempotency-key")
        if key and key in self._replays:
            first, answer = self._replays[key]
            if first != body:
                return self.error(
                    400, "Keys for idempotent requests can only be used with the same "
                    "parameters they were first used with.", type="idempotency_error",
                )  # fmt: skip
            return JSONResponse(answer, headers={"Idempotent-Replayed": "true"})
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        for param in ("event_name", f"payload[{self.customer_key}]", f"payload[{self.value_key}]"):
            if not form.get(param):
                return self.error(400, f"Missing required param: {param}.",
                                  code="parameter_missing", param=param)  # fmt: skip
        value = form[f"payload[{self.value_key}]"]
        if not re.fullmatch(r"-?\d+", value):
            return self.error(400, "The value must be a whole number.",
                              code="meter_event_invalid_value", param="payload")  # fmt: skip
        now = self.now()
        raw = form.get("timestamp", str(int(now)))
        if not re.fullmatch(r"\d+", raw):
            return self.error(400, "Invalid integer: " + raw,
                              code="parameter_invalid_integer", param="timestamp")  # fmt: skip
        timestamp = int(raw)
        if timestamp < now - 35 * DAY:
            return self.error(400, "Timestamp must be within the past 35 calendar days.",
                              code="timestamp_too_far_in_past", param="timestamp")  # fmt: skip
        if timestamp > now + 300:
            return self.error(400, "Timestamp must not be more than 5 minutes in the future.",
                              code="timestamp_in_future", param="timestamp")  # fmt: skip
        identifier = form.get("identifier") or f"idmp_{uuid.uuid4().hex}"
        if len(identifier) > 100:
            return self.error(400, "identifier is longer than 100 characters.",
                              code="string_too_long", param="identifier")  # fmt: skip
        self.received += 1
        self.batch_sizes.append(1)
        if identifier in self.events:
            self.duplicates += 1
            return self.error(
                400, f"An event already exists with identifier {identifier}.",
                code=self.duplicate_code, retry=False,
            )  # fmt: skip
        payload = {k[8:-1]: v for k, v in form.items() if k.startswith("payload[")}
        self.events[identifier] = {
            "event_name": form["event_name"],
            "customer": form[f"payload[{self.customer_key}]"],
            "value": int(value),
            "timestamp": timestamp,
            "payload": payload,
        }
        answer = {
            "object": "billing.meter_event",
            "created": int(now),
            "event_name": form["event_name"],
            "identifier": identifier,
            "livemode": False,
            "payload": payload,
            "timestamp": timestamp,
        }
        if key:
            self._replays[key] = (body, answer)
        return JSONResponse(answer)


# -- OpenMeter --------------------------------------------------------------------------


class OpenMeterReceiver(Receiver):
    """`POST /api/v1/events` as OpenMeter answers it (see the module doc).

    `token=None` checks no key (a self-hosted OpenMeter). `invalid` is a test hook: an
    event for which it returns a message is invalid (400). `events` maps (source, id) ->
    the CloudEvent the SDK parsed.
    """

    path = "/api/v1/events"

    def __init__(
        self,
        *,
        token: str | None = "om_test_meterware",
        invalid: Callable[[BaseCloudEvent], str | None] = lambda event: None,
        delay: float = 0.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.token = token
        self.invalid = invalid
        self.events: dict[tuple[str, str], BaseCloudEvent] = {}
        self.content_types: list[str] = []
        super().__init__(delay=delay, now=now)

    def routes(self) -> list[Route]:
        async def endpoint(request: Request) -> Response:
            return await self.handle(request, self._ingest)

        return [Route(self.path, endpoint, methods=["POST"])]

    def totals(self) -> dict[str, dict[str, int]]:
        """Per subject, the sums of `requests`, `calls` and `credits` in `data`."""
        with self.lock:
            sums: dict[str, dict[str, int]] = {}
            for event in self.events.values():
                data = event.get_data()
                assert isinstance(data, dict)
                into = sums.setdefault(event.get_subject() or "", dict.fromkeys(
                    ("requests", "calls", "credits"), 0))  # fmt: skip
                for name in into:
                    into[name] += data[name]
            return sums

    @staticmethod
    def problem(status: int, title: str, detail: str) -> Response:
        """An RFC 7807 problem, as OpenMeter answers errors."""
        body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
        return JSONResponse(body, status, media_type="application/problem+json")

    def authorize(self, header: str) -> Response | None:
        if self.token is None or header == f"Bearer {self.token}":
            return None
        return self.problem(401, "Unauthorized", "invalid or missing token")

    def failure(self, status: int) -> Response:
        title = "Too Many Requests" if status == 429 else "Service Unavailable"
        return self.problem(status, title, "injected failure")

    def _ingest(self, request: Request, body: bytes) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        self.content_types.append(content_type)
        try:
            document = json.loads(body)
        except ValueError as exc:
            return self.problem(400, "Bad Request", f"invalid event: {exc}")
        if content_type == "application/cloudevents+json" and isinstance(document, dict):
            items = [document]
        elif content_type == "application/cloudevents-batch+json" and isinstance(document, list):
            items = document
        elif content_type == "application/json" and isinstance(document, (dict, list)):
            items = document if isinstance(document, list) else [document]
        else:
            return self.problem(400, "Bad Request", f"invalid content type: {content_type}")
        parsed = []
        for item in items:
            try:
                event = self._parse(item)
            except (BaseCloudEventException, ValueError, TypeError) as exc:
                return self.problem(400, "Bad Request", f"invalid event: {exc}")
            parsed.append(event)
        self.received += len(parsed)
        self.batch_sizes.append(len(parsed))
        for event in parsed:
            key = (event.get_source(), event.get_id())
            if key in self.events:
                self.duplicates += 1
            else:
                self.events[key] = event
        return Response(status_code=204)

    def _parse(self, item: object) -> BaseCloudEvent:
        """One structured CloudEvent, read by the SDK, then OpenMeter's own checks."""
        if not isinstance(item, dict):
            raise ValueError("an event must be a JSON object")
        message = HTTPMessage(
            headers={"content-type": "application/cloudevents+json"},
            body=json.dumps(item).encode(),
        )
        event = from_structured(message, JSONFormat(), CloudEvent)
        if not event.get_subject():
            raise ValueError("subject is required")
        if event.get_datacontenttype() not in (None, "application/json"):
            raise ValueError("datacontenttype must be application/json")
        if not isinstance(event.get_data(), (dict, type(None))):
            raise ValueError("data must be a JSON object")
        reason = self.invalid(event)
        if reason:
            raise ValueError(reason)
        return event


# -- Lago -------------------------------------------------------------------------------


class LagoReceiver(Receiver):
    """`POST /api/v1/events/batch` and `POST /api/v1/events` as Lago answers them (see the
    module doc).

    `metrics`, when given, are the billable metric codes it knows (another code is
    `metric_not_found`). `invalid` is a test hook: the errors it returns for an event
    (`{"properties": ["invalid_format"]}`) make it invalid. `events` maps
    (external_subscription_id, transaction_id) -> the event as posted.
    """

    path = "/api/v1/events/batch"
    max_batch = 100

    def __init__(
        self,
        *,
        api_key: str = "lago_test_meterware",
        metrics: set[str] | None = None,
        duplicates: Literal["reject", "ignore"] = "reject",
        invalid: Callable[[dict[str, Any]], dict[str, list[str]] | None] = lambda event: None,
        delay: float = 0.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.api_key = api_key
        self.metrics = metrics
        self.invalid = invalid
        self.on_duplicate = duplicates
        self.events: dict[tuple[str, str], dict[str, Any]] = {}
        super().__init__(delay=delay, now=now)

    def routes(self) -> list[Route]:
        async def batch(request: Request) -> Response:
            return await self.handle(request, self._batch)

        async def single(request: Request) -> Response:
            return await self.handle(request, self._single)

        return [
            Route(self.path, batch, methods=["POST"]),
            Route("/api/v1/events", single, methods=["POST"]),
        ]

    def totals(self) -> dict[str, dict[str, float]]:
        """Per subscription, the sums of the `credits`, `calls` and `requests` properties."""
        with self.lock:
            sums: dict[str, dict[str, float]] = {}
            for (subscription, _), event in self.events.items():
                into = sums.setdefault(subscription, dict.fromkeys(
                    ("credits", "calls", "requests"), 0))  # fmt: skip
                for name in into:
                    into[name] += event["properties"].get(name, 0)
            return sums

    @staticmethod
    def unprocessable(details: dict[Any, Any]) -> Response:
        """Lago's 422."""
        body = {
            "status": 422,
            "error": "Unprocessable Entity",
            "code": "validation_errors",
            "error_details": details,
        }
        return JSONResponse(body, 422)

    def authorize(self, header: str) -> Response | None:
        if header == f"Bearer {self.api_key}":
            return None
        return JSONResponse({"status": 401, "error": "Unauthorized"}, 401)

    def failure(self, status: int) -> Response:
        error = "Too Many Requests" if status == 429 else "Service Unavailable"
        return JSONResponse({"status": status, "error": error}, status)

    def _check(self, event: object) -> dict[str, list[str]]:
        if not isinstance(event, dict):
            return {"event": ["invalid_format"]}
        errors: dict[str, list[str]] = {}
        for name in ("transaction_id", "code"):
            if not event.get(name):
                errors[name] = ["value_is_mandatory"]
        if not event.get("external_subscription_id") and not event.get("external_customer_id"):
            errors["base"] = ["missing_external_identifier"]
        if self.metrics is not None and event.get("code") and event["code"] not in self.metrics:
            errors["code"] = ["metric_not_found"]
        if event.get("timestamp") is not None:
            try:
                float(event["timestamp"])
            except (TypeError, ValueError):
                errors["timestamp"] = ["invalid_format"]
        if not isinstance(event.get("properties", {}), dict):
            errors["properties"] = ["invalid_format"]
        return {**errors, **(self.invalid(event) or {})}

    @staticmethod
    def _key(event: dict[str, Any]) -> tuple[str, str]:
        return str(event.get("external_subscription_id", "")), str(event["transaction_id"])

    def _store(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            if self._key(event) in self.events:
                self.duplicates += 1
            else:
                self.events[self._key(event)] = event

    def _batch(self, request: Request, body: bytes) -> Response:
        try:
            events = json.loads(body).get("events")
        except (ValueError, AttributeError):
            events = None
        if not isinstance(events, list) or not events:
            return self.unprocessable({"events": ["no_events"]})
        if len(events) > self.max_batch:
            return self.unprocessable({"events": ["too_many_events"]})
        self.received += len(events)
        self.batch_sizes.append(len(events))
        errors = {str(i): e for i, event in enumerate(events) if (e := self._check(event))}
        if errors:
            return self.unprocessable(errors)
        if self.on_duplicate == "reject":  # one transaction: a repeat rolls back the batch
            seen: set[tuple[str, str]] = set()
            for i, event in enumerate(events):
                if self._key(event) in self.events or self._key(event) in seen:
                    errors[str(i)] = {"transaction_id": ["value_already_exist"]}
                seen.add(self._key(event))
            if errors:
                self.duplicates += len(errors)
                return self.unprocessable(errors)
        self._store(events)
        return JSONResponse({"events": [self._answer(event) for event in events]})

    def _single(self, request: Request, body: bytes) -> Response:
        try:
            event = json.loads(body).get("event")
        except (ValueError, AttributeError):
            event = None
        errors = self._check(event)
        if errors:
            return self.unprocessable(errors)
        assert isinstance(event, dict)
        self.received += 1
        self.batch_sizes.append(1)
        if self.on_duplicate == "reject" and self._key(event) in self.events:
            self.duplicates += 1
            return self.unprocessable({"transaction_id": ["value_already_exist"]})
        self._store([event])
        return JSONResponse({"event": self._answer(event)})

    def _answer(self, event: dict[str, Any]) -> dict[str, Any]:
        return {"lago_id": str(uuid.uuid4()), **event, "created_at": self.now()}
