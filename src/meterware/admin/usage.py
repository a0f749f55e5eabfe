"""Owner-side usage: reports of what accounts and keys used over any range of UTC days,
grouped by day, action, key or account (`Admin.usage`), and the sum that builds them from
the ledger's rollups."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

from meterware.admin.base import AdminBase
from meterware.admin.checks import check_id
from meterware.clock import day_of, month_period
from meterware.errors import InvalidValue, NotFound
from meterware.storage.records import OUTCOME_FIELDS, Rollup

UsageGrouping = Literal["day", "action", "key", "account"]
GROUPINGS: tuple[UsageGrouping, ...] = ("day", "action", "key", "account")
MAX_SERIES_DAYS = 3660  # a report's per-day series covers at most ten years


@dataclass(frozen=True)
class UsageLine:
    """One line of an owner-side usage report: what its group used in the range. The
    grouping's own field is set (`day`, `action`, `key_id` with its `account_id`, or
    `account_id`); the others are None. `outcomes` counts refused requests by outcome
    (and `failed_open`: admitted while a check failed open)."""

    requests: int
    calls: int
    credits: int
    day: str | None = None
    action: str | None = None
    account_id: str | None = None
    key_id: str | None = None
    outcomes: Mapping[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "action": self.action,
            "account_id": self.account_id,
            "key_id": self.key_id,
            "requests": self.requests,
            "calls": self.calls,
            "credits": self.credits,
            "outcomes": dict(self.outcomes),
        }


@dataclass(frozen=True)
class UsageReport:
    """Usage over a range of UTC days, grouped one way, with its totals and the calls of
    every day of the range (for a chart)."""

    first_day: str
    last_day: str
    by: UsageGrouping
    lines: list[UsageLine]
    total: UsageLine
    daily_calls: list[tuple[str, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.first_day,
            "to": self.last_day,
            "by": self.by,
            "lines": [line.as_dict() for line in self.lines],
            "total": {
                "requests": self.total.requests,
                "calls": self.total.calls,
                "credits": self.total.credits,
                "outcomes": dict(self.total.outcomes),
            },
            "daily_calls": [{"day": d, "calls": c} for d, c in self.daily_calls],
        }


class UsageMixin(AdminBase):
    """Usage reports over a range of days, of one key, one account or every account."""

    async def usage(
        self,
        *,
        account_id: str | None = None,
        key_id: str | None = None,
        first_day: str | date | None = None,
        last_day: str | date | None = None,
        by: UsageGrouping = "day",
    ) -> UsageReport:
        """Usage by day, action, key or account over any range of UTC days (inclusive),
        of one key, one account or every account. The range defaults to this calendar
        month so far."""
        if by not in GROUPINGS:
            raise InvalidValue(f"by must be one of {', '.join(GROUPINGS)}")
        today = day_of(self.clock())
        last = _day(last_day, "to") if last_day is not None else today
        if first_day is not None:
            first = _day(first_day, "from")
        else:
            first = day_of(month_period(self.clock(), 1).start) if last_day is None else last
        if first > last:
            raise InvalidValue(f"the range starts ({first}) after it ends ({last})")
        if key_id is not None:
            key = await self.get_key(key_id)
            if account_id is not None and check_id(account_id, "account") != key.account_id:
                raise NotFound(f"no key {key_id!r} in account {account_id!r}")
            account_id = key.account_id
        elif account_id is not None:
            account_id = (await self.get_account(account_id)).id
        rollups = await self.store.rollups(
            account_id=account_id,
            key_id=key_id,
            first_day=first.isoformat(),
            last_day=last.isoformat(),
        )
        return _report(rollups, first, last, by)


def _outcomes(counts: list[int]) -> dict[str, int]:
    """Outcome counts by name, those that happened only."""
    return {name: n for name, n in zip(OUTCOME_FIELDS, counts, strict=True) if n}


def _day(value: str | date, what: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidValue(f"{what}: {value!r} is not a day (YYYY-MM-DD)") from None


def _report(rollups: list[Rollup], first: date, last: date, by: UsageGrouping) -> UsageReport:
    """Sum rollups into a report's lines (in the grouping's order) and daily calls."""
    groups: dict[tuple[str, ...], list[int]] = {}
    daily: dict[str, int] = {}
    for r in rollups:
        group = {
            "day": (r.day,),
            "action": (r.action,),
            "key": (r.account_id, r.key_id),
            "account": (r.account_id,),
        }[by]
        sums = groups.setdefault(group, [0] * (3 + len(OUTCOME_FIELDS)))
        for i, value in enumerate((r.requests, r.calls, r.credits,
                                   *(getattr(r, o) for o in OUTCOME_FIELDS))):  # fmt: skip
            sums[i] += value
        daily[r.day] = daily.get(r.day, 0) + r.calls
    lines = []
    totals = [0] * (3 + len(OUTCOME_FIELDS))
    for group, sums in sorted(groups.items()):
        fields: dict[str, str] = {
            "day": {"day": group[0]},
            "action": {"action": group[0]},
            "key": {"account_id": group[0], "key_id": group[-1]},
            "account": {"account_id": group[0]},
        }[by]
        requests, calls, credits = sums[:3]
        lines.append(UsageLine(requests, calls, credits, **fields, outcomes=_outcomes(sums[3:])))
        totals = [a + b for a, b in zip(totals, sums, strict=True)]
    total = UsageLine(totals[0], totals[1], totals[2], outcomes=_outcomes(totals[3:]))
    start, end = first, last
    if (end - start).days >= MAX_SERIES_DAYS:  # a long range: from its first day with data
        start = date.fromisoformat(min(daily)) if daily else end
        start = max(start, end - timedelta(days=MAX_SERIES_DAYS - 1))
    days = ((start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1))
    series = [(day, daily.get(day, 0)) for day in days]
    return UsageReport(first.isoformat(), last.isoformat(), by, lines, total, series)
