"""The records a store reads and writes: counter claims and grants, the ledger's rows and
batches, a key's totals, and a whole store's contents (`Snapshot`, for `meterware copy`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meterware.keys import Account, ApiKey

__all__ = [
    "OUTCOME_FIELDS",
    "BalanceDraw",
    "Claim",
    "CreditGrant",
    "Grant",
    "KeyTotals",
    "Notice",
    "OutboxEvent",
    "Rollup",
    "Snapshot",
    "UsageBatch",
    "UsageRow",
]

OUTCOME_FIELDS = (
    "rate_limited", "quota_exceeded", "insufficient_credits", "forbidden", "unavailable",
    "failed_open",
)  # fmt: skip
"""What a rollup counts beside admitted requests: refusals by outcome (a key was known:
401s are not attributable) and requests admitted while a check failed open."""


@dataclass(slots=True)
class Claim:
    """A request to take up to `want` units of a counter's current window without passing
    `limit`. When the counter has no live window (none yet, or it ended), a new one is
    opened that ends at `window_end`."""

    counter: str
    want: int
    limit: int
    window_end: float


@dataclass(slots=True)
class Grant:
    """What a claim got: `granted` units, the window's `count` after it, and the end of
    the window the units belong to."""

    granted: int
    count: int
    window_end: float


@dataclass(slots=True)
class Rollup:
    """What one key did under one action on one UTC day (`YYYY-MM-DD`): `calls` charged
    and their `credits`; `requests` admitted (charged or not); the last one's time.

    `key_id` is `""` when the caller was an account rather than a key. `action` is `""`
    for requests counted before meterware recorded actions (a store migrated from
    schema 1).
    """

    account_id: str
    key_id: str
    action: str
    day: str
    calls: int
    credits: int
    requests: int = 0
    last_used_at: float | None = None
    rate_limited: int = 0
    quota_exceeded: int = 0
    insufficient_credits: int = 0
    forbidden: int = 0
    unavailable: int = 0
    failed_open: int = 0

    def add(self, other: Rollup) -> None:
        """Add another rollup of the same key, action and day to this one."""
        self.calls += other.calls
        self.credits += other.credits
        self.requests += other.requests
        self.rate_limited += other.rate_limited
        self.quota_exceeded += other.quota_exceeded
        self.insufficient_credits += other.insufficient_credits
        self.forbidden += other.forbidden
        self.unavailable += other.unavailable
        self.failed_open += other.failed_open
        if other.last_used_at is not None and (
            self.last_used_at is None or other.last_used_at > self.last_used_at
        ):
            self.last_used_at = other.last_used_at


@dataclass(frozen=True, slots=True)
class CreditGrant:
    """Prepaid credits given to an account: `amount`, from `granted_at`, until
    `expires_at` (None: never). `grant_id` makes granting idempotent per account."""

    account_id: str
    grant_id: str
    amount: int
    granted_at: float
    expires_at: float | None = None

    @property
    def counter(self) -> str:
        """The counter its consumption is kept in (one window, ending at its expiry)."""
        return f"grant:{self.account_id}:{self.grant_id}"


@dataclass(slots=True)
class BalanceDraw:
    """Credits one grant paid for, under one action on one UTC day."""

    account_id: str
    grant_id: str
    action: str
    day: str
    credits: int


@dataclass
class UsageBatch:
    """What one flush writes, in one transaction: rollups to add, labels to set, credits
    drawn from prepaid grants, and (with `outbox`) one usage event per rollup."""

    rollups: Sequence[Rollup] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    draws: Sequence[BalanceDraw] = ()
    outbox: bool = False
    time: float = 0.0  # when the flush took it: the outbox events' time

    def __bool__(self) -> bool:
        return bool(self.rollups or self.labels or self.draws)


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A usage delta written with the ledger, to be exported: immutable, numbered in
    order (`seq`), with an identifier unique to the store (`id`)."""

    seq: int
    id: str
    account_id: str
    key_id: str
    action: str
    day: str
    requests: int
    calls: int
    credits: int
    time: float


@dataclass(frozen=True, slots=True)
class Notice:
    """Something to tell the host: a threshold crossed, a key created, a concern failing
    open. `id` is deterministic where the notice must happen once (a threshold per
    subject and period); `seq` is its place in the store (0 before it is stored)."""

    id: str
    type: str
    account_id: str | None
    key_id: str | None
    data: Mapping[str, Any]
    created_at: float
    seq: int = 0


@dataclass(slots=True)
class UsageRow:
    """One line of a usage query: an action's calls and credits on a day."""

    day: str
    action: str
    calls: int
    credits: int
    requests: int = 0


@dataclass(slots=True)
class KeyTotals:
    """Sums over rollups: requests admitted, calls charged, credits, and the last use."""

    requests: int = 0
    calls: int = 0
    credits: int = 0
    last_used_at: float | None = None


@dataclass
class Snapshot:
    """Everything a store holds, in plain dicts (what `Transferable.dump` returns).

    A key's totals and last use are not stored apart: they are sums over its rollups.
    """

    accounts: dict[str, Account] = field(default_factory=dict)
    keys: dict[str, ApiKey] = field(default_factory=dict)
    """Every stored field; `last_used_at` is None here (it lives in the rollups)."""
    secrets: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    """secret hash -> (key id, when it stops working: None for never)"""
    counters: dict[str, tuple[float, int]] = field(default_factory=dict)
    """counter -> (its window's end, count)"""
    rollups: dict[tuple[str, str, str, str], Rollup] = field(default_factory=dict)
    """(account_id, key_id, action, day) -> its rollup"""
    labels: dict[str, str] = field(default_factory=dict)
    grants: dict[tuple[str, str], CreditGrant] = field(default_factory=dict)
    """(account_id, grant_id) -> the grant"""
    draws: dict[tuple[str, str, str, str], BalanceDraw] = field(default_factory=dict)
    """(account_id, grant_id, day, action) -> what the grant paid for"""

    def empty(self) -> bool:
        return not (
            self.accounts
            or self.keys
            or self.secrets
            or self.counters
            or self.rollups
            or self.labels
            or self.grants
            or self.draws
        )

    def totals(self, key_id: str) -> KeyTotals:
        """A key's totals, summed over its rollups."""
        totals = KeyTotals()
        for rollup in self.rollups.values():
            if rollup.key_id == key_id:
                totals.requests += rollup.requests
                totals.calls += rollup.calls
                totals.credits += rollup.credits
                last = rollup.last_used_at
                if last is not None and (totals.last_used_at is None or last > totals.last_used_at):
                    totals.last_used_at = last
        return totals
