"""What admission works from and hands out: a caller's `Plan`, and a request's `Hold`.

A `Plan` is worked out once per caller (its limits, the names of its counters, its billing
period). `Admission.admit` (`meterware.admission`) answers a request with a `Hold`: what
was taken for it, the credits among them as `Draw`s; `hold.settle(status, credits)` after
the handler gives back what the call does not use and records the charge.

`Settling` is what a hold needs of the admission that made it, so that this module never
imports `meterware.admission` (which imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meterware.clock import MonthPeriod, month_period
from meterware.config import ChargeRule
from meterware.keys import Caller
from meterware.leases import Leases, Want
from meterware.ledger import Meter
from meterware.metering import Cost
from meterware.reported import MonthView, Subject
from meterware.responses import HeaderParts, Headers
from meterware.storage.records import CreditGrant
from meterware.tiers import Limits

__all__ = ["Draw", "Hold", "Needs", "Plan", "Settling"]


class Plan:
    """What admission needs to know of a caller, worked out once per caller: its limits,
    the names of its counters, its current billing period and month view."""

    __slots__ = (
        "caller", "credits", "grants", "header_parts", "limits", "minute", "month", "needs",
        "period", "subject", "view",
    )  # fmt: skip

    def __init__(self, caller: Caller, limits: Limits, *, limit_by: str, minute_by: str) -> None:
        key = Subject(caller.account_id, caller.key_id)
        account = Subject(caller.account_id, None)
        self.caller = caller
        self.limits = limits
        self.subject = account if limit_by == "account" else key
        self.minute = f"minute:{(account if minute_by == 'account' else key).name}"
        self.month = f"month:{self.subject.name}"
        self.credits = f"credits:{self.subject.name}"
        self.period = month_period(0.0, limits.anchor_day)
        self.view: MonthView | None = None
        self.needs: dict[int, Needs] = {}  # by the route's credits, for this period
        self.header_parts: HeaderParts | None = None  # for this period
        # The account's prepaid grants, read with its first call that costs credits (a
        # new grant changes the account's keys, so a new plan reads them again).
        self.grants: list[CreditGrant] | None = None

    def period_at(self, now: float) -> MonthPeriod:
        """The billing period containing `now` (recomputed only when the last one ends:
        then what depends on it is worked out again)."""
        period = self.period
        if not period.start <= now < period.end:
            period = self.period = month_period(now, self.limits.anchor_day)
            self.view, self.needs, self.header_parts = None, {}, None
        return period


Needs = tuple[tuple[str, Leases, Want, tuple[Want, ...]], ...]
"""What a request needs: for each concern, where its units are leased, what units, and
the wants of the later concerns leased in the same place (topped up in one trip)."""


class Settling(Protocol):
    """What a `Hold` uses of the `Admission` that made it."""

    charge_rule: ChargeRule
    leases: Leases
    meter: Meter
    on_charge: Callable[[Caller, str, int], None]

    def crossed(self, view: MonthView, now: float) -> None: ...

    def _credit_wants(
        self, plan: Plan, credits: int, now: float
    ) -> list[tuple[Want, str | None]]: ...


@dataclass(slots=True)
class Draw:
    """Credits one counter paid for a call: the month's allowance (`grant_id` None) or
    a prepaid grant."""

    want: Want
    grant_id: str | None
    units: int


@dataclass(slots=True)
class Hold:
    """What was taken to admit one request; `settle` once the handler is done."""

    admission: Settling
    plan: Plan
    cost: Cost
    draws: tuple[Draw, ...]  # the credits taken, and where from
    headers: Headers  # the rate-limit headers of the response
    now: float
    failed_open: bool = False  # a check failed open: the request passed uncounted there

    def settle(self, status: int | None, credits: int) -> None:
        """Settle the call: `status` is the response's (None when the handler raised or the
        client left first), `credits` what the call costs by now (`set_cost`). Charged
        only if the charge rule accepts the status. Credits held and not charged go back
        (the last taken first); credits beyond those held are counted in the background
        (the response is already on its way)."""
        admission, plan, now = self.admission, self.plan, self.now
        charged = credits if status is not None and admission.charge_rule(status) else 0
        kept = list(self.draws)
        surplus = sum(d.units for d in kept) - charged
        while surplus > 0 and kept:  # give back, the last taken first
            draw = kept[-1]
            back = min(draw.units, surplus)
            admission.leases.give_back(draw.want.counter, back, now)
            surplus -= back
            kept[-1] = Draw(draw.want, draw.grant_id, draw.units - back)
            if not kept[-1].units:
                kept.pop()
        caller = plan.caller
        if surplus < 0 and (plan.grants or plan.limits.monthly_credits is not None):
            admission.leases.spawn(self._draw_more(-surplus), "extra credits")
        for draw in kept:
            if draw.grant_id is not None:
                admission.meter.drew(
                    caller.account_id, draw.grant_id, self.cost.action, draw.units, now
                )
        if charged:
            admission.meter.charge(caller.account_id, caller.key_id, self.cost, charged, now)
            admission.on_charge(caller, self.cost.action, charged)
            view = plan.view
            if view is not None:
                view.credits_local += charged
                if view.credits >= view.next_credits:
                    admission.crossed(view, now)

    async def _draw_more(self, credits: int) -> None:
        """A cost raised at run time: take the difference as a call's credits are taken
        (allowance, then grants); what none of them has left is counted anyway, on the
        last of them (the balance, or the allowance, may go below zero by that much)."""
        admission, plan, now = self.admission, self.plan, self.now
        wants = admission._credit_wants(plan, credits, now)
        if not wants:
            return
        rest = credits
        for want, grant_id in wants:
            want.amount = rest
            got = await admission.leases.take_upto(want, now)
            self._record(grant_id, got)
            rest -= got
            if not rest:
                return
        want, grant_id = wants[-1]
        want.amount = rest
        await admission.leases.force(want, now)
        self._record(grant_id, rest)

    def _record(self, grant_id: str | None, credits: int) -> None:
        if grant_id is not None and credits:
            caller = self.plan.caller
            self.admission.meter.drew(
                caller.account_id, grant_id, self.cost.action, credits, self.now
            )
