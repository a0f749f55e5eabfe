"""The usage event: one immutable delta of the ledger, as the outbox hands it to a sink.

Each ledger flush turns its per (account, key, action, UTC day) deltas into events with a
deterministic `id`, so that an event sent twice is the same event to whoever receives it:
every sink deduplicates by that id (see `meterware.export.sinks`). The counts are deltas,
never running totals: summing what a sink holds gives the usage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["EVENT_FIELDS", "UsageEvent"]


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One delta of usage for an (account, key, action, UTC day)."""

    id: str  # deterministic and unique, at most 100 characters of [A-Za-z0-9_-]
    seq: int  # position in the outbox
    account_id: str
    key_id: str  # "" when the caller was an account
    action: str  # the route's action name, "" when unknown
    day: str  # UTC day of the usage, YYYY-MM-DD
    requests: int
    calls: int
    credits: int
    time: float  # epoch seconds: when the usage was recorded (within `day`)
    external_id: str | None = None  # the account's id in the host's systems
    stripe_customer_id: str | None = None


EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(UsageEvent))
"""The field names of `UsageEvent`, in order: the columns of the CSV sink."""
