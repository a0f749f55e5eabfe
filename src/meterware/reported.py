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

__all__ = ["THRESHOLDS", "MonthView", "MonthViews", "QuotaStatus", "Subject", "quota_status"]


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


THRESHOLDS = (50, 80, 100)  # percent of a monthly limit: a notice when crossed
NEVER = 2**62  # a mark no count reaches


class MonthView:
    """A subject's requests and credits this period: the ledger's as last read, and this
    process's since (see module doc). A request adds 1 to `local`, a charged call its
    credits to `credits_local`; one comparison each tells whether a threshold of the
    monthly limits (`THRESHOLDS`) may have been crossed (`next_requests`,
    `next_credits`)."""

    __slots__ = (
        "credits_local", "credits_marked", "credits_stored", "first_day", "fresh", "idle",
        "limits", "local", "marked", "next_credits", "next_requests", "period", "stored",
        "subject",
    )  # fmt: skip

    def __init__(self, subject: Subject, period: MonthPeriod) -> None:
        self.subject = subject
        self.period = period
        self.first_day = day_of(period.start).isoformat()
        self.stored = 0  # the ledger's count, as last read
        self.local = 0  # admitted here and not in `stored`
        self.marked = 0  # of `local`, what the flush under way carries
        self.credits_stored = self.credits_local = self.credits_marked = 0  # the same
        self.fresh = True  # never read yet
        self.idle = 0  # reads in a row with nothing new here
        self.limits: tuple[int | None, int | None] = (None, None)
        self.next_requests = self.next_credits = NEVER

    @property
    def used(self) -> int:
        return self.stored + self.local

    @property
    def credits(self) -> int:
        return self.credits_stored + self.credits_local

    def set_limits(self, requests: int | None, credits: int | None) -> None:
        """The monthly limits the thresholds are of (from the caller's plan)."""
        if (requests, credits) != self.limits:
            self.limits = (requests, credits)
            self.next_requests = _next_mark(requests, -1)
            self.next_credits = _next_mark(credits, -1)

    def crossed(self) -> list[tuple[str, int, int, int]]:
        """The thresholds crossed since last asked: `(kind, percent, used, limit)` with
        kind `quota` or `credits`."""
        found = []
        for kind, used, limit in (("quota", self.used, self.limits[0]),
                                  ("credits", self.credits, self.limits[1])):  # fmt: skip
            if limit is None or not limit:
                continue
            mark = self.next_requests if kind == "quota" else self.next_credits
            if used < mark:
                continue
            found += [(kind, p, used, limit) for p in THRESHOLDS if _at(limit, p) <= used]
            if kind == "quota":
                self.next_requests = _next_mark(limit, used)
            else:
                self.next_credits = _next_mark(limit, used)
        return found


def _at(limit: int, percent: int) -> int:
    """The count at which `percent` of `limit` is reached (at least 1)."""
    return max(1, -(-limit * percent // 100))


def _next_mark(limit: int | None, used: int) -> int:
    """The first threshold count above `used` (`NEVER` when none is left)."""
    if not limit:
        return NEVER
    return next((_at(limit, p) for p in THRESHOLDS if _at(limit, p) > used), NEVER)


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
            view = self._views[(subject, first_day)] = MonthView(subject, period)
        return view

    def mark(self) -> None:
        """A flush is taking what is pending: what the views counted so far goes with it."""
        for view in self._views.values():
            view.marked = view.local
            view.credits_marked = view.credits_local

    async def read(self, store: Storage, now: float) -> list[MonthView]:
        """After a flush: read the ledger's counts of the subjects that had requests here
        (due at most every `refresh` seconds); forget views unused for two reads. The
        views read."""
        if now < self._next and now >= self._next - self.refresh_every:
            return []
        self._next = now + self.refresh_every
        views = []
        for key, view in list(self._views.items()):
            if view.local or view.credits_local or view.fresh:
                views.append(view)
            else:
                view.idle += 1
                if view.idle >= 2:
                    del self._views[key]
        for start in range(0, len(views), self.chunk):
            part = views[start : start + self.chunk]
            subjects = [(v.subject.account_id, v.subject.key_id, v.first_day) for v in part]
            for view, (stored, credits) in zip(
                part, await store.month_usage(subjects), strict=True
            ):
                view.stored, view.local, view.marked = stored, view.local - view.marked, 0
                view.credits_stored = credits
                view.credits_local -= view.credits_marked
                view.credits_marked = 0
                view.fresh, view.idle = False, 0
        return views
