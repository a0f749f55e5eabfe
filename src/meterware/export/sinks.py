"""Where usage events go: billing systems, and files.

A sink takes one batch of `UsageEvent`s and answers with a `Delivery`:

- `accepted`: the ids the sink now holds, including the ones it says it already had;
- `rejected`: id -> reason, for events it will never take (an event older than Stripe's
  35 days, an account without a Stripe customer, an event the system calls invalid). The
  exporter reports them loudly and does not send them again.

A failure of the batch as a whole (network error, timeout, 401/403, 429, 5xx) raises
`SinkUnavailable`: nothing of the batch counts as delivered and the exporter sends it
again later. Resending is safe because each system deduplicates by the event's id, for
as long as it documents:

| sink | key | a duplicate is | for |
| --- | --- | --- | --- |
| `stripe` | `identifier` | refused (400), read as accepted | at least 24 hours |
| `cloudevents` (OpenMeter, Konnect) | `id` + `source` | dropped (204) | its dedupe window |
| `lago` | `transaction_id` + subscription | refused (422), read as accepted | kept |
| `jsonl`, `csv` | `id` | not written again | the file |

So an event acknowledged by the sink but not yet by the exporter (a crash in between) is
counted once if it is resent within that window. Keep Stripe's in mind: an exporter that
stays down with unacknowledged events for more than a day may count them twice there.

Credentials come from the environment (`STRIPE_API_KEY`, `OPENMETER_API_KEY`,
`LAGO_API_KEY`) or a constructor argument, never from a command line; no repr, log line or
exception carries them. Every network call has a `timeout` (seconds, default 10).
The sinks live by kind: `meterware.export.stripe`, `meterware.export.http` (CloudEvents,
Lago) and `meterware.export.files` (JSON Lines, CSV); this module holds what they share,
and `meterware.export.registry` builds one by name (`sink_from(name, url=..., **options)`).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import ClassVar, Literal, TypeVar

from meterware.errors import ConfigurationError, MeterwareError
from meterware.export.events import UsageEvent

__all__ = ["SINK_NAMES", "Delivery", "Sink", "SinkUnavailable", "Value"]

Value = Literal["credits", "calls", "requests"]
S = TypeVar("S", bound="Sink")

SINK_NAMES: tuple[str, ...] = ("stripe", "cloudevents", "lago", "jsonl", "csv")
"""The names `sink_from` knows, in the order the docs list them."""


class SinkUnavailable(MeterwareError):
    """The sink could not take the batch now (network, timeout, credentials, 429, 5xx)."""


@dataclass
class Delivery:
    """What a sink did with a batch: the ids it holds, and those it will never take."""

    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # id -> reason

    def add(self, other: Delivery) -> Delivery:
        """Take in another delivery's ids (of another part of the same batch)."""
        self.accepted.extend(other.accepted)
        self.rejected.update(other.rejected)
        return self


class Sink(abc.ABC):
    """Sends batches of usage events somewhere; close it with `aclose` or `async with`."""

    name: ClassVar[str]
    max_batch: ClassVar[int]  # the most events one `send` should carry (more go in parts)

    @abc.abstractmethod
    async def send(self, events: Sequence[UsageEvent]) -> Delivery:
        """Deliver one batch, or raise `SinkUnavailable` if it cannot be now."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the connections (or files) the sink holds."""

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# -- what the sinks share --------------------------------------------------------------


def needs(module: str, sink: str, package: str) -> None:
    """`ConfigurationError` naming the extra to install when `module` is missing."""
    try:
        __import__(module)
    except ImportError:
        raise ConfigurationError(
            f"the {sink} sink needs {package}: pip install 'meterware[billing]'"
        ) from None


def credential(given: str | None, variable: str) -> str | None:
    """The credential given, else the environment variable's (None if neither)."""
    return given or os.environ.get(variable) or None


def scrub(text: str, secret: str | None, limit: int = 300) -> str:
    """`text` cut to `limit` characters, the secret (if it is there at all) masked."""
    if secret:
        text = text.replace(secret, "***")
    return text if len(text) <= limit else text[:limit] + "…"
