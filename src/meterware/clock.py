"""Time: the injectable clock and the calendar arithmetic of quota periods.

A clock is any zero-argument callable returning seconds since the epoch (UTC), like
`time.time`. Every component takes one, so tests move time instead of sleeping.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from datetime import date, datetime, timezone

__all__ = [
    "DAY",
    "LATEST",
    "MAX_DAYS",
    "Clock",
    "MonthPeriod",
    "day_of",
    "isoformat_ms",
    "midnight",
    "month_period",
    "system_clock",
]

Clock = Callable[[], float]
system_clock: Clock = time.time

_EPOCH_DAY = date(1970, 1, 1).toordinal()

DAY = 86_400
LATEST = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the latest time meterware stores or prints
MAX_DAYS = 100 * 366  # the furthest ahead an expiry or a grace period may reach, in days


def isoformat_ms(ts: float) -> str:
    """`2026-04-12T14:30:00.000Z`: ISO 8601 UTC with milliseconds and `Z`."""
    ms = int(ts * 1000)
    secs, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}Z"


def day_of(ts: float) -> date:
    """The UTC calendar day of a timestamp."""
    return date.fromordinal(_EPOCH_DAY + int(ts // 86400))


def midnight(day: date) -> float:
    """The timestamp of 00:00:00 UTC on `day`."""
    return float((day.toordinal() - _EPOCH_DAY) * 86400)


def _anchored(year: int, month: int, anchor_day: int) -> datetime:
    last = calendar.monthrange(year, month)[1]
    return datetime(year, month, min(anchor_day, last), tzinfo=timezone.utc)


def _shift(year: int, month: int, by: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + by
    return index // 12, index % 12 + 1


class MonthPeriod:
    """One billing month: `[start, end)` in UTC, named by its start date."""

    __slots__ = ("end", "id", "length", "start")

    def __init__(self, start: datetime, end: datetime) -> None:
        self.start = start.timestamp()
        self.end = end.timestamp()
        self.id = start.date().isoformat()
        self.length = int(self.end - self.start)  # whole seconds

    def __repr__(self) -> str:
        return f"MonthPeriod({isoformat_ms(self.start)} .. {isoformat_ms(self.end)})"


def month_period(ts: float, anchor_day: int = 1) -> MonthPeriod:
    """The billing month containing `ts`.

    With `anchor_day` 1 it is the calendar month in UTC. Another anchor is the month's
    anniversary, clamped to the month's last day: an anchor on the 31st starts the
    February period on the 28th (29th in leap years) and the March one on the 31st.
    """
    if not 1 <= anchor_day <= 31:
        raise ValueError(f"anchor_day must be 1..31, not {anchor_day}")
    now = datetime.fromtimestamp(ts, tz=timezone.utc)
    start = _anchored(now.year, now.month, anchor_day)
    if now < start:
        start = _anchored(*_shift(now.year, now.month, -1), anchor_day)
    end = _anchored(*_shift(start.year, start.month, 1), anchor_day)
    return MonthPeriod(start, end)
