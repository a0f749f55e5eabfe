"""The JSON-over-HTTP sinks: CloudEvents batches (OpenMeter, Kong Konnect Metering) and
Lago usage events (see `meterware.export.sinks` for what every sink promises)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from meterware.errors import ConfigurationError
from meterware.export.events import UsageEvent
from meterware.export.sinks import Delivery, Sink, SinkUnavailable, credential, needs, scrub

if TYPE_CHECKING:
    import httpx

__all__ = ["CloudEventsSink", "LagoSink"]


class _HttpSink(Sink):
    """A JSON-over-HTTP sink with a bearer token: httpx, one client, `timeout` per call."""

    _variable: ClassVar[str]

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        needs("httpx", self.name, "httpx")
        import httpx

        self.url = url
        self.timeout = timeout
        self._token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(timeout=timeout, headers=headers)

    async def _post(self, url: str, body: bytes, content_type: str) -> httpx.Response:
        """The answer to the POST, or `SinkUnavailable` for no answer, 401/403, 429, 5xx..."""
        import httpx

        try:
            response = await asyncio.wait_for(
                self._http.post(url, content=body, headers={"Content-Type": content_type}),
                self.timeout,
            )
        except asyncio.TimeoutError:
            raise SinkUnavailable(f"{self.name}: no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            what = scrub(str(exc) or type(exc).__name__, self._token)
            raise SinkUnavailable(f"{self.name}: {url}: {what}") from None
        if response.status_code in (401, 403):
            raise SinkUnavailable(
                f"{self.name}: the token was refused (HTTP {response.status_code}): "
                f"check {self._variable}"
            )
        if response.is_success or response.status_code in (400, 422):
            return response
        raise SinkUnavailable(f"{self.name}: HTTP {response.status_code}: {self._detail(response)}")

    def _detail(self, response: httpx.Response) -> str:
        """The error message in a response body (problem+json, Lago's, or the text)."""
        try:
            body = response.json()
        except ValueError:
            text = response.text
        else:
            found = [
                body[k]
                for k in ("detail", "message", "error", "title")
                if isinstance(body, dict) and k in body
            ]
            text = str(found[0]) if found else json.dumps(body)
        return scrub(text.strip(), self._token) or response.reason_phrase

    async def aclose(self) -> None:
        await self._http.aclose()


class CloudEventsSink(_HttpSink):
    """CloudEvents 1.0 in JSON batches, as OpenMeter and Kong Konnect Metering ingest
    them (`POST <url>` with `application/cloudevents-batch+json`).

    Each event is built and serialized by the `cloudevents` SDK (2.x, `cloudevents.core`):
    `id` the event id, `source`, `type`, `subject` (the account's external id, else its
    id; or always its id with `subject="account"`), `time` in RFC 3339, `data` its counts
    with `action`, `key_id` and `day`. The SDK has no batch writer: the batch is the JSON
    array of the events it wrote, which is the spec's JSON Batch Format. OpenMeter
    deduplicates on `id` + `source`, so `source` must not change between runs.

    A 400 (OpenMeter refuses a request whose events do not all validate, and ingests none
    of it) is narrowed by halving the batch until the invalid events are alone; those are
    rejected with the message. That costs about 2 log2(n) requests per invalid event.
    """

    name = "cloudevents"
    max_batch = 100
    _variable = "OPENMETER_API_KEY"

    def __init__(
        self,
        *,
        url: str,
        token: str | None = None,
        source: str = "meterware",
        type: str = "api-usage",
        subject: Literal["account", "external_id"] = "external_id",
        timeout: float = 10.0,
    ) -> None:
        if not url:
            raise ConfigurationError(
                "the cloudevents sink needs url (e.g. https://openmeter.cloud/api/v1/events)"
            )
        if subject not in ("account", "external_id"):
            raise ConfigurationError(
                f"cloudevents sink: subject must be account or external_id, not {subject!r}"
            )
        needs("cloudevents.core", self.name, "cloudevents>=2")
        super().__init__(url, credential(token, self._variable), timeout)
        self.source = source
        self.type = type
        self.subject = subject

    def __repr__(self) -> str:
        return f"CloudEventsSink(url={self.url!r}, source={self.source!r}, type={self.type!r})"

    def _encode(self, event: UsageEvent) -> bytes:
        from cloudevents.core.formats.json import JSONFormat
        from cloudevents.core.v1.event import CloudEvent

        subject = event.account_id
        if self.subject == "external_id" and event.external_id:
            subject = event.external_id
        attributes = {
            "specversion": "1.0",
            "id": event.id,
            "source": self.source,
            "type": self.type,
            "subject": subject,
            "time": datetime.fromtimestamp(event.time, timezone.utc),
            "datacontenttype": "application/json",
        }
        data = {
            "requests": event.requests,
            "calls": event.calls,
            "credits": event.credits,
            "action": event.action,
            "key_id": event.key_id,
            "day": event.day,
        }
        return JSONFormat().write(CloudEvent(attributes, data))

    async def send(self, events: Sequence[UsageEvent]) -> Delivery:
        from cloudevents.core.exceptions import BaseCloudEventException

        delivery, encoded = Delivery(), []
        for event in events:
            try:
                encoded.append((event.id, self._encode(event)))
            except (BaseCloudEventException, ValueError) as exc:
                delivery.rejected[event.id] = f"not a valid CloudEvent: {exc}"
        for start in range(0, len(encoded), self.max_batch):
            delivery.add(await self._send(encoded[start : start + self.max_batch]))
        return delivery

    async def _send(self, batch: list[tuple[str, bytes]]) -> Delivery:
        body = b"[" + b",".join(data for _, data in batch) + b"]"
        response = await self._post(self.url, body, "application/cloudevents-batch+json")
        if response.is_success:
            return Delivery(accepted=[event_id for event_id, _ in batch])
        if len(batch) == 1:
            return Delivery(rejected={batch[0][0]: f"refused: {self._detail(response)}"})
        half = len(batch) // 2
        return (await self._send(batch[:half])).add(await self._send(batch[half:]))


class LagoSink(_HttpSink):
    """Lago usage events (`POST <url>/api/v1/events/batch`), at most 100 a request.

    `transaction_id` is the event id, `external_subscription_id` the account's external id
    (or its id with `subscription="account"`), `code` the billable metric, `timestamp` the
    event's time in seconds, `properties` its counts with `action`, `key_id` and `day`. An
    event whose account has no external id is rejected (with `subscription="external_id"`).

    Lago checks a batch as a whole: a 422 names the invalid events by index and stores none
    of the batch. Events it refuses as already there (`transaction_id:
    value_already_exist`) are accepted, the others named are rejected with Lago's codes,
    and the rest are sent again. An unknown metric (`code: metric_not_found`) is this
    sink's configuration, not the events': `SinkUnavailable`. Lago has no async Python
    client (lago-python-client uses requests), hence httpx.
    """

    name = "lago"
    max_batch = 100
    _variable = "LAGO_API_KEY"

    def __init__(
        self,
        *,
        url: str = "https://api.getlago.com",
        api_key: str | None = None,
        code: str,
        subscription: Literal["external_id", "account"] = "external_id",
        timeout: float = 10.0,
    ) -> None:
        key = credential(api_key, self._variable)
        if key is None:
            raise ConfigurationError("the lago sink needs an API key: set LAGO_API_KEY")
        if not code:
            raise ConfigurationError("the lago sink needs code (the billable metric's code)")
        if subscription not in ("external_id", "account"):
            raise ConfigurationError(
                f"lago sink: subscription must be external_id or account, not {subscription!r}"
            )
        base = url.rstrip("/").removesuffix("/api/v1")
        super().__init__(base, key, timeout)
        self.code = code
        self.subscription = subscription

    def __repr__(self) -> str:
        return f"LagoSink(url={self.url!r}, code={self.code!r})"

    async def send(self, events: Sequence[UsageEvent]) -> Delivery:
        delivery, items = Delivery(), []
        for event in events:
            subscription = event.account_id if self.subscription == "account" else event.external_id
            if not subscription:
                delivery.rejected[event.id] = "the account has no external id (Lago subscription)"
                continue
            items.append((event.id, {
                "transaction_id": event.id,
                "external_subscription_id": subscription,
                "code": self.code,
                "timestamp": event.time,
                "properties": {
                    "credits": event.credits,
                    "calls": event.calls,
                    "requests": event.requests,
                    "action": event.action,
                    "key_id": event.key_id,
                    "day": event.day,
                },
            }))  # fmt: skip
        for start in range(0, len(items), self.max_batch):
            delivery.add(await self._send(items[start : start + self.max_batch]))
        return delivery

    async def _send(self, items: list[tuple[str, dict[str, Any]]]) -> Delivery:
        body = json.dumps({"events": [event for _, event in items]}).encode()
        response = await self._post(f"{self.url}/api/v1/events/batch", body, "application/json")
        if response.is_success:
            return Delivery(accepted=[event_id for event_id, _ in items])
        details = _json(response).get("error_details")
        named = {}
        if isinstance(details, dict):
            named = {
                int(k): v for k, v in details.items() if str(k).isdigit() and int(k) < len(items)
            }
        if not named:  # about the request (too many events...) or unreadable
            if len(items) == 1:
                reason = _lago_errors(details) if details else self._detail(response)
                return Delivery(rejected={items[0][0]: f"Lago refused it: {reason}"})
            half = len(items) // 2
            return (await self._send(items[:half])).add(await self._send(items[half:]))
        if any(_lago_codes(errors, "code") & {"metric_not_found"} for errors in named.values()):
            raise SinkUnavailable(f"lago: no billable metric with code {self.code!r}: check code")
        delivery, again = Delivery(), []
        for index, item in enumerate(items):
            if index not in named:
                again.append(item)
            elif named[index] == {"transaction_id": ["value_already_exist"]}:
                delivery.accepted.append(item[0])
            else:
                delivery.rejected[item[0]] = f"Lago refused it: {_lago_errors(named[index])}"
        return delivery.add(await self._send(again)) if again else delivery


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _lago_codes(errors: object, field: str) -> set[str]:
    """The error codes Lago gives for one field of an event."""
    codes = errors.get(field) if isinstance(errors, dict) else None
    return {str(code) for code in codes} if isinstance(codes, list) else set()


def _lago_errors(errors: object) -> str:
    """`{"code": ["metric_not_found"]}` as `code: metric_not_found`."""
    if isinstance(errors, dict):
        return "; ".join(
            f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in errors.items()
        )
    return str(errors)
