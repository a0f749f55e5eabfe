"""The Stripe sink: usage as Stripe billing meter events (see `meterware.export.sinks`
for what every sink promises)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from meterware.errors import ConfigurationError
from meterware.export.events import UsageEvent
from meterware.export.sinks import Delivery, Sink, SinkUnavailable, Value, credential, needs, scrub

if TYPE_CHECKING:
    import stripe

__all__ = ["StripeSink"]

T = TypeVar("T")
X = TypeVar("X")


class StripeSink(Sink):
    """One Stripe meter event per usage event (`POST /v1/billing/meter_events`), through
    the official SDK and its httpx client, 8 requests at once.

    `payload[<customer_key>]` is the account's Stripe customer, `payload[<value_key>]` the
    event's `value` count, `identifier` the event id, `timestamp` its time. An event whose
    count is 0 is accepted without a request; one whose account has no Stripe customer is
    rejected. Stripe checks the customer asynchronously (its meter error webhooks), so a
    customer unknown to Stripe is not seen here.

    A 400 is permanent for that event (e.g. a timestamp older than 35 days), except: a
    repeated identifier, which Stripe refuses ("An event already exists with identifier
    ...", code `resource_already_exists` where given) and which is read as accepted; an
    unknown meter (a configuration error) and a timestamp ahead of Stripe's clock (valid
    minutes later), which are `SinkUnavailable`. The SDK's own retries are off: the
    exporter retries.
    """

    name = "stripe"
    max_batch = 100
    concurrency = 8

    def __init__(
        self,
        *,
        url: str | None = None,
        api_key: str | None = None,
        event_name: str,
        value: Value = "credits",
        customer_key: str = "stripe_customer_id",
        value_key: str = "value",
        timeout: float = 10.0,
    ) -> None:
        needs("stripe", "stripe", "stripe")
        import stripe

        key = credential(api_key, "STRIPE_API_KEY")
        if key is None:
            raise ConfigurationError("the stripe sink needs an API key: set STRIPE_API_KEY")
        if not event_name:
            raise ConfigurationError("the stripe sink needs event_name (the meter's event name)")
        if value not in ("credits", "calls", "requests"):
            raise ConfigurationError(
                f"stripe sink: value must be credits, calls or requests, not {value!r}"
            )
        self.url = url or stripe.DEFAULT_API_BASE
        self.event_name = event_name
        self.value = value
        self.customer_key = customer_key
        self.value_key = value_key
        self.timeout = timeout
        self._key = key
        self._http = _stripe_http_client(timeout)
        self._client = stripe.StripeClient(
            key,
            base_addresses={"api": self.url},
            http_client=self._http,
            max_network_retries=0,
        )

    def __repr__(self) -> str:
        return f"StripeSink(url={self.url!r}, event_name={self.event_name!r}, value={self.value!r})"

    async def send(self, events: Sequence[UsageEvent]) -> Delivery:
        delivery, todo = Delivery(), []
        for event in events:
            if getattr(event, self.value) == 0:
                delivery.accepted.append(event.id)
            elif not event.stripe_customer_id:
                delivery.rejected[event.id] = "the account has no Stripe customer id"
            else:
                todo.append(event)
        refusals = await _all_or_nothing(self._create, todo, self.concurrency)
        for event, refusal in zip(todo, refusals, strict=True):
            if refusal is None:
                delivery.accepted.append(event.id)
            else:
                delivery.rejected[event.id] = refusal
        return delivery

    async def _create(self, event: UsageEvent) -> str | None:
        """Send one meter event: None when Stripe holds it, else why it never will."""
        import stripe

        assert event.stripe_customer_id is not None
        payload = {
            self.customer_key: event.stripe_customer_id,
            self.value_key: str(getattr(event, self.value)),
        }
        params: stripe.params.billing.MeterEventCreateParams = {
            "event_name": self.event_name,
            "payload": payload,
            "identifier": event.id,
            "timestamp": int(event.time),
        }
        try:
            await asyncio.wait_for(
                self._client.v1.billing.meter_events.create_async(params), self.timeout
            )
        except asyncio.TimeoutError:
            raise SinkUnavailable(f"stripe: no answer within {self.timeout:g} s") from None
        except stripe.InvalidRequestError as exc:
            return self._refusal(exc)
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            raise SinkUnavailable(
                f"stripe: the API key was refused (HTTP {exc.http_status}): check STRIPE_API_KEY"
            ) from None
        except stripe.APIConnectionError as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection failed"
            raise SinkUnavailable(f"stripe: no answer from {self.url}: {cause}") from None
        except stripe.StripeError as exc:
            message = scrub(exc.user_message or type(exc).__name__, self._key)
            raise SinkUnavailable(f"stripe: HTTP {exc.http_status}: {message}") from None
        return None

    def _refusal(self, exc: stripe.InvalidRequestError) -> str | None:
        message = exc.user_message or ""
        if exc.code == "resource_already_exists" or message.startswith(
            "An event already exists with identifier"
        ):
            return None
        if (
            exc.http_status != 400
            or exc.param == "event_name"
            or exc.code in ("no_meter", "archived_meter")
            or "No active meter" in message
        ):
            raise SinkUnavailable(
                f"stripe: HTTP {exc.http_status}: {scrub(message, self._key)} "
                f"(check the URL and event_name {self.event_name!r})"
            ) from None
        if exc.code == "timestamp_in_future":  # our clock is ahead: valid in a few minutes
            raise SinkUnavailable(f"stripe: {message} (is this host's clock ahead?)") from None
        code = f" ({exc.code})" if exc.code else ""
        return f"Stripe refused it{code}: {scrub(message, self._key)}"

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]


def _stripe_http_client(timeout: float) -> stripe.HTTPXClient:
    """The SDK's httpx client, sending the form as `content=`: as `data=` (what the SDK
    does) httpx 0.28 warns on every request."""
    import stripe

    class Client(stripe.HTTPXClient):
        def _get_request_args_kwargs(
            self, method: str, url: str, headers: Mapping[str, str], post_data: Any
        ) -> Any:
            args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
            kwargs["content"] = kwargs.pop("data", None) or None
            return args, kwargs

    return Client(timeout=timeout)


async def _all_or_nothing(
    function: Callable[[X], Awaitable[T]], items: Sequence[X], limit: int
) -> list[T]:
    """`function(item)` for each item, at most `limit` at once; at the first failure the
    others are cancelled (and waited for) and the failure is raised."""
    gate = asyncio.Semaphore(limit)

    async def run(item: X) -> T:
        async with gate:
            return await function(item)

    tasks = [asyncio.ensure_future(run(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
