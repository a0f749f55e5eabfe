"""What meterware reports of a caller's month: requests made, never units reserved.

Enforcement reserves blocks of units ahead (`meterware.leases`); a reserved unit is not
a request made. Every number meterware shows is summed from the ledger instead:

- `quota_status` (the usage endpoint, `meterware keys show`, the admin API) reads the
  ledger's rollups: exact as of the last flush of every process (`flush_interval`);
- `MonthViews` gives the `RateLimit` header's month remaining without I/O per request:
  the ledger's count for the subject as last read, plus what this process admitted
  since. It is read again after each flush of this process, at most every `refresh`
  seconds, for the subjects that had requests: it lags other processes by at most
  `flush_interval` + `refresh`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meterware.clock import MonthPeriod, day_of, month_period
from meterware.storage import Storage
from meterware.tiers import Limits

__all__ = ["MonthView", "MonthViews", "QuotaStatus", "Subject", "quota_status"]


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose counters: one key's, or (`key_id` None) a whole account's."""

    account_id: str
    key_id: str | None

    @property
    def name(self) -> str:
        """The subject in counter names: the key's id, or `@` and the account's."""
        return self.key_id if self.key_id is not None else f"@{self.account_id}"


def period_days(period: MonthPeriod) -> tuple[str, str]:
    """The first and last UTC day of a billing period."""
    return day_of(period.start).isoformat(), day_of(period.end - 1).isoformat()


@dataclass(frozen=True)
class QuotaStatus:
    """One source of truth for what a caller has used and has left."""

    tier: str
    per_minute: int | None
    monthly_limit: int | None
    monthly_requests: int
    monthly_reset_at: float
    monthly_credits_limit: int | None
    monthly_credits: int
    total_requests: int

    @property
    def monthly_remaining(self) -> int | None:
        if self.monthly_limit is None:
            return None
        return max(0, self.monthly_limit - self.monthly_requests)

    def as_dict(self, iso: Callable[[float], str]) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "requests_per_minute": self.per_minute,
            "monthly_requests": self.monthly_requests,
            "monthly_limit": self.monthly_limit,
            "monthly_remaining": self.monthly_remaining,
            "monthly_reset_at": iso(self.monthly_reset_at),
            "monthly_credits": self.monthly_credits,
            "monthly_credits_limit": self.monthly_credits_limit,
            "total_requests": self.total_requests,
        }


async def quota_status(
    store: Storage, *, subject: Subject, key_id: str | None, limits: Limits, now: float
) -> QuotaStatus:
    """A caller's monthly numbers (of `subject`: its key, or its account when limits are
    kept per account) and its key's lifetime requests, from the ledger."""
    period = month_period(now, limits.anchor_day)
    first, last = period_days(period)
    month = await store.totals(
        account_id=subject.account_id, key_id=subject.key_id, first_day=first, last_day=last
    )
    lifetime = await store.totals(account_id=subject.account_id, key_id=key_id)
    return QuotaStatus(
        tier=limits.tier,
        per_minute=limits.per_minute,
        monthly_limit=limits.monthly_requests,
        monthly_requests=month.requests,
        monthly_reset_at=period.end,
        monthly_credits_limit=limits.monthly_credits,
        monthly_credits=month.credits,
        total_requests=lifetime.requests,
    )


class MonthView:
    """A subject's requests this period: the ledger's as last read, and this process's
    since (see module doc). A request adds 1 to `local`; nothing else runs per request."""

    __slots__ = ("first_day", "fresh", "idle", "local", "marked", "stored", "subject")

    def __init__(self, subject: Subject, first_day: str) -> None:
        self.subject = subject
        self.first_day = first_day
        self.stored = 0  # the ledger's count, as last read
        self.local = 0  # admitted here and not in `stored`
        self.marked = 0  # of `local`, what the flush under way carries
        self.fresh = True  # never read yet
        self.idle = 0  # reads in a row with nothing new here

    @property
    def used(self) -> int:
        return self.stored + self.local


class MonthViews:
    """Every subject's `MonthView`, read again after flushes (see module doc)."""

    def __init__(self, *, refresh: float = 1.0, chunk: int = 500) -> None:
        self.refresh_every = refresh
        self.chunk = chunk
        self._views: dict[tuple[Subject, str], MonthView] = {}
        self._next = 0.0

    def __len__(self) -> int:
        return len(self._views)

    def view(self, subject: Subject, period: MonthPeriod) -> MonthView:
        """The subject's view of `period` (new views start from 0 until the next read)."""
        first_day = day_of(period.start).isoformat()
        view = self._views.get((subject, first_day))
        if view is None:
            view = self._views[(subject, first_day)] = MonthView(subject, first_day)
        return view

    def mark(self) -> None:
        """A flush is taking what is pending: what the views counted so far goes with it."""
        for view in self._views.values():
            view.marked = view.local

    async def read(self, store: Storage, now: float) -> None:
        """After a flush: read the ledger's counts of the subjects that had requests here
        (due at most every `refresh` seconds); forget views unused for two reads."""
        if now < self._next and now >= self._next - self.refresh_every:
            return
        self._next = now + self.refresh_every
        views = []
        for key, view in list(self._views.items()):
            if view.local or view.fresh:
                views.append(view)
            else:
                view.idle += 1
                if view.idle >= 2:
                    del self._views[key]
        for start in range(0, len(views), self.chunk):
            part = views[start : start + self.chunk]
            subjects = [(v.subject.account_id, v.subject.key_id, v.first_day) for v in part]
            for view, stored in zip(part, await store.requests_since(subjects), strict=True):
                view.stored, view.local, view.marked = stored, view.local - view.marked, 0
                view.fresh, view.idle = False, 0
