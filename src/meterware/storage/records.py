"""The records a store reads and writes: counter claims and grants, the ledger's rows and
batches, a key's totals, and a whole store's contents (`Snapshot`, for `meterware copy`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meterware.keys import Account, ApiKey

__all__ = ["Claim", "Grant", "KeyTotals", "Rollup", "Snapshot", "UsageBatch", "UsageRow"]


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

    def add(self, other: Rollup) -> None:
        """Add another rollup of the same key, action and day to this one."""
        self.calls += other.calls
        self.credits += other.credits
        self.requests += other.requests
        if other.last_used_at is not None and (
            self.last_used_at is None or other.last_used_at > self.last_used_at
        ):
            self.last_used_at = other.last_used_at


@dataclass
class UsageBatch:
    """What one flush writes, in one transaction: rollups to add, labels to set."""

    rollups: Sequence[Rollup] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.rollups or self.labels)


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

    def empty(self) -> bool:
        return not (
            self.accounts
            or self.keys
            or self.secrets
            or self.counters
            or self.rollups
            or self.labels
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
