"""Admission: one object decides whether a request may run, and settles it afterwards.

`Admission.admit(plan, cost, now)` checks, in order, the per-minute window (429
RATE_LIMITED), the monthly request quota (429 QUOTA_EXCEEDED) and the monthly credit
allowance (402 INSUFFICIENT_CREDITS), and returns either a `Denial` to send at once or a
`Hold`: what was taken for the request. After the handler, `hold.settle(status,
credits)` does in one place whatever the outcome asks for: credits given back when the
call is not charged (or costs less than was held), more taken when it costs more, and
the charge recorded in the ledger.

The fail-open policy lives here too: when the store behind a concern (`rate_limit`,
`quota`, `credits`) fails, that concern lets the request through uncounted if it fails
open, and the request gets 503 STORAGE_UNAVAILABLE if it fails closed. Either way a
warning is logged once per outage.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from meterware import responses
from meterware.clock import MonthPeriod, month_period
from meterware.config import ChargeRule
from meterware.errors import StorageError
from meterware.keys import Caller
from meterware.ledger import Meter
from meterware.metering import Cost
from meterware.quota import QuotaCounter, credits_counter, requests_counter
from meterware.responses import Denial, Headers, RateLimitHeaders, retry_after
from meterware.tiers import Limits
from meterware.windows import MinuteResult, Windows

__all__ = ["Admission", "Hold", "Outages", "Plan"]

log = logging.getLogger("meterware")


class Plan:
    """What admission needs to know of a caller: its limits and the names of its
    counters, worked out once per caller; and its current billing period."""

    __slots__ = ("caller", "credits", "limits", "minute_subject", "period", "requests")

    def __init__(self, caller: Caller, limits: Limits, *, by_account: bool) -> None:
        self.caller = caller
        self.limits = limits
        self.minute_subject = caller.account_id if by_account else caller.subject
        self.requests = requests_counter(caller.subject)
        self.credits = credits_counter(caller.subject)
        self.period = month_period(0.0, limits.anchor_day)

    def period_at(self, now: float) -> MonthPeriod:
        """The billing period containing `now` (recomputed only when the last one ends)."""
        period = self.period
        if not period.start <= now < period.end:
            period = self.period = month_period(now, self.limits.anchor_day)
        return period


class Outages:
    """Which concerns are failing right now, so that each outage is logged once."""

    def __init__(self) -> None:
        self._down: set[str] = set()

    def failed(self, concern: str, message: str, exc: Exception) -> None:
        if concern not in self._down:
            self._down.add(concern)
            log.warning("%s: %s", message, exc)

    def recovered(self, concern: str) -> None:
        self._down.discard(concern)


UNAVAILABLE = Denial(responses.STORAGE_UNAVAILABLE, [responses.RETRY_STORAGE])


class Admission:
    """Admits requests against a caller's windows, quota and credits (see module doc)."""

    def __init__(
        self,
        windows: Windows,
        quota: QuotaCounter,
        meter: Meter,
        headers: RateLimitHeaders,
        *,
        fail_open: Collection[str],
        charge: ChargeRule,
    ) -> None:
        self.windows = windows
        self.quota = quota
        self.meter = meter
        self.rate_headers = headers
        self.fail_open = frozenset(fail_open)
        self.charge_rule = charge
        self.outages = Outages()

    async def rate_limit(self, plan: Plan, now: float) -> MinuteResult | Denial | None:
        """Count a request against the per-minute window only (the usage endpoint): the
        window's state, None when there is no per-minute limit, or a `Denial`."""
        per_minute = plan.limits.per_minute
        if per_minute is None:
            return None
        try:
            minute = await self.windows.hit(plan.minute_subject, per_minute, now)
        except StorageError as exc:  # the shared windows failed, and fail closed
            return self.unavailable(exc)
        if not minute.allowed:
            headers = self.headers(plan, minute, now)
            headers.append(retry_after(minute.reset_at - now))
            return Denial(responses.RATE_LIMITED, headers)
        return minute

    async def admit(self, plan: Plan, cost: Cost, now: float) -> Hold | Denial:
        """Admit a request to a route that costs `cost`: a `Hold`, or a `Denial`."""
        minute = await self.rate_limit(plan, now)
        if isinstance(minute, Denial):
            return minute
        limits, period = plan.limits, plan.period_at(now)
        try:
            took = await self._take("quota", plan.requests, period, 1, limits.monthly_requests, now)
        except StorageError as exc:
            return self.unavailable(exc)
        if took is False:
            headers = self.headers(plan, minute, now)
            headers.append(retry_after(period.end - now))
            return Denial(responses.QUOTA_EXCEEDED, headers)
        held = 0
        if cost.credits:
            got: bool | StorageError | None
            try:
                got = await self._take(
                    "credits", plan.credits, period, cost.credits, limits.monthly_credits, now
                )
            except StorageError as exc:
                got = exc
            if got is not True and got is not None:  # refused, or failed closed
                if took:  # the request does not count
                    self.quota.give_back(plan.requests, period.id, 1, limits.monthly_requests)
                if isinstance(got, StorageError):
                    return self.unavailable(got)
                return Denial(responses.INSUFFICIENT_CREDITS, self.headers(plan, minute, now))
            held = cost.credits if got else 0
        self.meter.admitted(plan.caller.key_id, now)
        return Hold(self, plan, period, cost, held, self.headers(plan, minute, now), now)

    async def _take(
        self,
        concern: str,
        counter: str,
        period: MonthPeriod,
        amount: int,
        limit: int | None,
        now: float,
    ) -> bool | None:
        """Take quota units: True or False as the store says; None when the store failed
        and this concern fails open (the request passes uncounted)."""
        if self.quota.at_hand(counter, period.id, amount, limit):  # no store to hear from
            return await self.quota.take(counter, period.id, amount, limit, now)
        try:
            taken = await self.quota.take(counter, period.id, amount, limit, now)
        except StorageError as exc:
            if concern not in self.fail_open:
                raise
            self.outages.failed(
                concern, f"storage failed: admitting requests without {concern} checks", exc
            )
            return None
        self.outages.recovered(concern)
        return taken

    def unavailable(self, exc: Exception) -> Denial:
        """The 503 for a store that failed where the check fails closed."""
        self.outages.failed("storage", "storage unavailable, answering 503", exc)
        return UNAVAILABLE

    def headers(self, plan: Plan, minute: MinuteResult | None, now: float) -> Headers:
        """The rate-limit headers of a response to this caller."""
        limits, period = plan.limits, plan.period_at(now)
        if minute is None and limits.per_minute is not None:
            minute = self.windows.peek(plan.minute_subject, limits.per_minute, now)
        month_left = 0
        if limits.monthly_requests is not None:
            month_left = limits.monthly_requests - self.quota.estimate(plan.requests, period.id)
        return self.rate_headers.build(
            per_minute=limits.per_minute,
            minute_left=minute.remaining if minute is not None else 0,
            minute_reset=minute.reset_at if minute is not None else now,
            month_limit=limits.monthly_requests,
            month_left=month_left,
            month_end=period.end,
            month_length=period.length,
            now=now,
        )


@dataclass(slots=True)
class Hold:
    """What was taken to admit one request; `settle` once the handler is done."""

    admission: Admission
    plan: Plan
    period: MonthPeriod
    cost: Cost
    held: int  # credits taken from the monthly allowance
    headers: Headers  # the rate-limit headers of the response
    now: float

    async def settle(self, status: int | None, credits: int) -> None:
        """Settle the call: `status` is the response's (None when the handler raised or the
        client left first), `credits` what the call costs by now (`set_cost`). Charged
        only if the charge rule accepts the status."""
        admission, limits = self.admission, self.plan.limits
        charged = credits if status is not None and admission.charge_rule(status) else 0
        counter, period = self.plan.credits, self.period.id
        if self.held > charged:
            admission.quota.give_back(counter, period, self.held - charged, limits.monthly_credits)
        elif charged > self.held:
            try:
                await admission.quota.force(
                    counter, period, charged - self.held, limits.monthly_credits
                )
            except StorageError as exc:
                log.warning("could not count %d extra credits: %s", charged - self.held, exc)
        if charged:
            caller = self.plan.caller
            admission.meter.charge(caller.account_id, caller.key_id, self.cost, charged, self.now)
