"""The records a store reads and writes: the ledger's rows and batches, a key's totals,
and a whole store's contents (`Snapshot`, for `meterware copy`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meterware.keys import ApiKey

__all__ = ["KeyActivity", "KeyTotals", "Rollup", "Snapshot", "UsageBatch", "UsageRow"]


@dataclass(slots=True)
class Rollup:
    """Calls and credits charged to one key for one action on one UTC day (`YYYY-MM-DD`).

    `key_id` is `""` when the caller was an account rather than a key.
    """

    account_id: str
    key_id: str
    action: str
    day: str
    calls: int
    credits: int


@dataclass(slots=True)
class KeyActivity:
    """Requests admitted for a key since the last flush, and the last one's time."""

    key_id: str
    requests: int
    last_used_at: float


@dataclass
class UsageBatch:
    """What one flush writes, in one transaction."""

    rollups: Sequence[Rollup] = ()
    activity: Sequence[KeyActivity] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    counters: Sequence[tuple[str, str, int]] = ()
    """`(subject, period, amount)` to add to counters that have no limit to enforce."""

    def __bool__(self) -> bool:
        return bool(self.rollups or self.activity or self.labels or self.counters)

    def key_totals(self) -> dict[str, KeyTotals]:
        """What this batch adds to each key's lifetime totals (last use: the latest)."""
        totals: dict[str, KeyTotals] = {}
        for r in self.rollups:
            if r.key_id:
                t = totals.get(r.key_id)
                if t is None:
                    totals[r.key_id] = KeyTotals(0, r.calls, r.credits, None)
                else:
                    t.calls += r.calls
                    t.credits += r.credits
        for a in self.activity:
            t = totals.get(a.key_id)
            if t is None:
                totals[a.key_id] = KeyTotals(a.requests, 0, 0, a.last_used_at)
            else:
                t.requests += a.requests
                if t.last_used_at is None or a.last_used_at > t.last_used_at:
                    t.last_used_at = a.last_used_at
        return totals


@dataclass(slots=True)
class UsageRow:
    """One line of a usage query: an action's calls and credits on a day."""

    day: str
    action: str
    calls: int
    credits: int


@dataclass(slots=True)
class KeyTotals:
    """A key's lifetime numbers."""

    requests: int = 0
    calls: int = 0
    credits: int = 0
    last_used_at: float | None = None


@dataclass
class Snapshot:
    """Everything a store holds, in plain dicts (what `Transferable.dump` returns).

    `keys` hold every stored field but `last_used_at` (None here): a key's last use is
    in `totals`, with its lifetime requests, calls and credits.
    """

    accounts: dict[str, float] = field(default_factory=dict)
    keys: dict[str, ApiKey] = field(default_factory=dict)
    totals: dict[str, KeyTotals] = field(default_factory=dict)
    secrets: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    """secret hash -> (key id, when it stops working: None for never)"""
    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    rollups: dict[tuple[str, str, str, str], tuple[int, int]] = field(default_factory=dict)
    """(account_id, key_id, action, day) -> (calls, credits)"""
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
