"""Admission: one object decides whether a request may run, and settles it afterwards.

`Admission.admit(plan, cost, now)` takes, in order, a unit of the per-minute window (429
RATE_LIMITED), a unit of the month's request quota (429 QUOTA_EXCEEDED) and the route's
credits from the month's allowance (402 INSUFFICIENT_CREDITS), each from the lease
engine (`meterware.leases`), and returns either a `Denial` to send at once or a `Hold`
(`meterware.holds`): what was taken for the request. A request refused for its month or
credits has still used its unit of the minute, as every attempt does. After the handler,
`hold.settle(status, credits)` does in one place whatever the outcome asks for: credits
given back when the call is not charged (or costs less than was held), more taken when
it costs more, and the charge recorded in the ledger.

The fail-open policy lives here too: when the store behind a concern (`rate_limit`,
`quota`, `credits`) fails, that concern lets the request through uncounted if it fails
open, and the request gets 503 STORAGE_UNAVAILABLE if it fails closed. Either way a
warning is logged once per outage.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import ClassVar

from meterware import responses
from meterware.config import ChargeRule
from meterware.errors import StorageError
from meterware.holds import Draw, Hold, Needs, Plan
from meterware.keys import Caller
from meterware.leases import Leases, Want
from meterware.ledger import Meter
from meterware.metering import Cost
from meterware.notices import threshold_notice
from meterware.reported import MonthView, MonthViews
from meterware.responses import Denial, Headers, RateLimitHeaders, retry_after
from meterware.storage.records import CreditGrant, Notice
from meterware.windows import WINDOW

__all__ = ["Admission", "Draw", "Hold", "Outages", "Plan"]

log = logging.getLogger("meterware")

MINUTE_SHARE = 1 / 40  # of a per-minute limit, the most one block may be
MONTH_SHARE = 1 / 100  # of a monthly limit (what a crash may cost)
MINUTE_IDLE = 5.0  # seconds an idle process keeps units of a minute window
GRANT_SHARE = 1 / 100  # of a prepaid grant (what a crash may strand)
FOREVER = 253_402_300_800.0  # 10000-01-01: the window of a grant that never expires


class Outages:
    """Which concerns are failing right now, so that each outage is logged once, and its
    end once."""

    NAMES: ClassVar[dict[str, str]] = {
        "rate_limit": "rate limit",
        "quota": "quota",
        "credits": "credits",
        "storage": "usage",
    }

    def __init__(self) -> None:
        self._down: set[str] = set()
        self.listener: Callable[[str, bool, str], None] = lambda concern, failing, why: None

    def failed(self, concern: str, exc: Exception, *, admitting: bool) -> None:
        if concern not in self._down:
            self._down.add(concern)
            if admitting:
                self.listener(concern, True, str(exc))
            name = self.NAMES.get(concern, concern)
            if admitting:
                log.warning(
                    "%s storage failed, admitting requests without %s checks: %s",
                    name, concern, exc,
                )  # fmt: skip
            else:
                log.warning("storage unavailable, answering 503: %s", exc)

    def recovered(self, concern: str) -> None:
        if concern in self._down:
            self._down.discard(concern)
            self.listener(concern, False, "")
            log.warning("%s storage is back", self.NAMES.get(concern, concern))


UNAVAILABLE = Denial(responses.STORAGE_UNAVAILABLE, [responses.RETRY_STORAGE])


class Admission:
    """Admits requests against a caller's windows, quota and credits (see module doc).

    `minutes` holds the per-minute windows' leases, `leases` the month's; they are one
    object when the windows live in the main store, so that one round trip serves both.
    """

    def __init__(
        self,
        minutes: Leases,
        leases: Leases,
        meter: Meter,
        views: MonthViews,
        headers: RateLimitHeaders,
        *,
        fail_open: Collection[str],
        charge: ChargeRule,
        lease_idle: float = 60.0,
        grants: Callable[[str], Awaitable[list[CreditGrant]]] | None = None,
        on_store_error: Callable[[str], None] = lambda concern: None,
        on_charge: Callable[[Caller, str, int], None] = lambda caller, action, credits: None,
        notify: Callable[[Notice], None] = lambda notice: None,
    ) -> None:
        self.notify = notify
        self.load_grants = grants
        self.on_store_error = on_store_error
        self.on_charge = on_charge
        self.minutes = minutes
        self.leases = leases
        self.meter = meter
        self.views = views
        self.rate_headers = headers
        self.fail_open = frozenset(fail_open)
        self.charge_rule = charge
        self.lease_idle = lease_idle
        self.minute_idle = min(lease_idle, MINUTE_IDLE)
        self.outages = Outages()

    def _needs(self, plan: Plan, credits: int, now: float) -> Needs:
        """The units a request to a route that costs `credits` needs (worked out once per
        caller, route cost and period)."""
        end = plan.period_at(now).end
        needs = plan.needs.get(credits)
        if needs is not None:
            return needs
        limits, wants = plan.limits, []
        if limits.per_minute is not None:
            minute = Want(plan.minute, 1, limits.per_minute, MINUTE_SHARE, self.minute_idle, WINDOW)
            wants.append(("rate_limit", self.minutes, minute))
        if limits.monthly_requests is not None:
            month = Want(
                plan.month, 1, limits.monthly_requests, MONTH_SHARE, self.lease_idle, 0, end
            )
            wants.append(("quota", self.leases, month))
        if credits and limits.monthly_credits is not None:
            allowance = limits.monthly_credits
            credit = Want(plan.credits, credits, allowance, MONTH_SHARE, self.lease_idle, 0, end)
            wants.append(("credits", self.leases, credit))
        needs = plan.needs[credits] = tuple(
            (concern, leases, want, tuple(w for _, at, w in wants[i + 1 :] if at is leases))
            for i, (concern, leases, want) in enumerate(wants)
        )
        return needs

    async def rate_limit(self, plan: Plan, now: float) -> Denial | None:
        """Count a request against the per-minute window only (the usage endpoint)."""
        needs = self._needs(plan, 0, now)
        if not needs or needs[0][0] != "rate_limit":
            return None
        _, leases, want, _ = needs[0]
        taken = await self._take("rate_limit", leases, want, now, ())
        if isinstance(taken, Denial):
            return taken
        return None if taken is not False else self._refused(plan, now, "rate_limit")

    async def admit(self, plan: Plan, cost: Cost, now: float) -> Hold | Denial:
        """Admit a request to a route that costs `cost`: a `Hold`, or a `Denial`."""
        credits = cost.credits
        if credits and plan.grants is None and self.load_grants is not None:
            failed = await self._read_grants(plan)
            if failed is not None:
                return failed
        prepaid = bool(credits and plan.grants)
        taken: list[tuple[Leases, Want]] = []
        draws: tuple[Draw, ...] = ()
        opened = False  # a check failed open for this request
        for concern, leases, want, also in self._needs(plan, 0 if prepaid else credits, now):
            # (units at hand are taken without a coroutine: most requests need no other)
            got = leases.hand_out(want, now, also) or await self._take(
                concern, leases, want, now, also
            )
            if got is True:
                if concern == "credits":
                    draws = (Draw(want, None, want.amount),)
                if concern != "rate_limit":  # an attempt always uses its minute
                    taken.append((leases, want))
                continue
            if got is None:  # failed open: this concern lets the request through
                opened = True
                continue
            for where, back in taken:  # refused, or failed closed: nothing else counts
                where.give_back(back.counter, back.amount, now)
            return got if isinstance(got, Denial) else self._refused(plan, now, concern)
        if prepaid:
            drawn = await self._draw_credits(plan, credits, now)
            if drawn is None or isinstance(drawn, Denial):
                for where, back in taken:
                    where.give_back(back.counter, back.amount, now)
                return drawn if isinstance(drawn, Denial) else self._refused(plan, now, "credits")
            draws = drawn
            opened = opened or not drawn  # (nothing drawn: the credits check failed open)
        caller = plan.caller
        self.meter.admitted(caller.account_id, caller.key_id, cost, now)
        view = plan.view or self._view(plan, now)
        view.local += 1
        if view.stored + view.local >= view.next_requests:
            self.crossed(view, now)
        return Hold(self, plan, cost, draws, self.headers(plan, now), now, opened)

    async def _read_grants(self, plan: Plan) -> Denial | None:
        """Read the account's grants into the plan; the 503 when the store fails and
        credits fail closed (failing open, the call is admitted as if it had none)."""
        assert self.load_grants is not None
        try:
            plan.grants = await self.load_grants(plan.caller.account_id)
        except StorageError as exc:
            self.on_store_error("credits")
            if "credits" not in self.fail_open:
                return self.unavailable(exc)
            self.outages.failed("credits", exc, admitting=True)
        return None

    def _credit_wants(self, plan: Plan, credits: int, now: float) -> list[tuple[Want, str | None]]:
        """Where a call's credits come from, in order: the month's allowance (if the
        caller has one), then each live prepaid grant, soonest expiry first."""
        wants: list[tuple[Want, str | None]] = []
        if plan.limits.monthly_credits is not None:
            end = plan.period_at(now).end
            allowance = Want(plan.credits, credits, plan.limits.monthly_credits, MONTH_SHARE,
                             self.lease_idle, 0, end)  # fmt: skip
            wants.append((allowance, None))
        for grant in plan.grants or ():
            end = FOREVER if grant.expires_at is None else grant.expires_at
            if end > now:
                want = Want(grant.counter, credits, grant.amount, GRANT_SHARE, self.lease_idle,
                            0, end)  # fmt: skip
                wants.append((want, grant.grant_id))
        return wants

    async def _draw_credits(
        self, plan: Plan, credits: int, now: float
    ) -> tuple[Draw, ...] | Denial | None:
        """Take a call's credits from the allowance, then the grants: what each paid, or
        None when together they cannot (nothing taken), or the 503."""
        draws: list[Draw] = []
        rest = credits
        try:
            for want, grant_id in self._credit_wants(plan, credits, now):
                want.amount = rest
                got = await self.leases.take_upto(want, now)
                if got:
                    draws.append(Draw(want, grant_id, got))
                    rest -= got
                if not rest:
                    return tuple(draws)
        except StorageError as exc:
            self.on_store_error("credits")
            for draw in draws:
                self.leases.give_back(draw.want.counter, draw.units, now)
            if "credits" not in self.fail_open:
                return self.unavailable(exc)
            self.outages.failed("credits", exc, admitting=True)
            return ()
        for draw in draws:
            self.leases.give_back(draw.want.counter, draw.units, now)
        return None

    async def _take(
        self, concern: str, leases: Leases, want: Want, now: float, also: Sequence[Want]
    ) -> bool | Denial | None:
        """True or False as the store says; None when the store failed and this concern
        fails open (the request passes uncounted); the 503 when it fails closed."""
        trips = leases.round_trips
        try:
            taken = await leases.take(want, now, also)
        except StorageError as exc:
            self.on_store_error(concern)
            if concern not in self.fail_open:
                return self.unavailable(exc)
            self.outages.failed(concern, exc, admitting=True)
            return None
        if leases.round_trips != trips:  # the store answered
            self.outages.recovered(concern)
        return taken

    def _refused(self, plan: Plan, now: float, concern: str) -> Denial:
        headers = self.headers(plan, now)
        if concern == "rate_limit":
            lease = self.minutes.get(plan.minute)
            headers.append(retry_after((lease.end if lease else now + WINDOW) - now))
            return Denial(responses.RATE_LIMITED, headers)
        if concern == "quota":
            headers.append(retry_after(plan.period_at(now).end - now))
            return Denial(responses.QUOTA_EXCEEDED, headers)
        return Denial(responses.INSUFFICIENT_CREDITS, headers)

    def unavailable(self, exc: Exception) -> Denial:
        """The 503 for a store that failed where the check fails closed."""
        self.outages.failed("storage", exc, admitting=False)
        return UNAVAILABLE

    def _view(self, plan: Plan, now: float) -> MonthView:
        plan.view = self.views.view(plan.subject, plan.period_at(now))
        plan.view.set_limits(plan.limits.monthly_requests, plan.limits.monthly_credits)
        return plan.view

    def crossed(self, view: MonthView, now: float) -> None:
        """Notices for the thresholds of the month's limits that `view` has crossed."""
        for kind, percent, used, limit in view.crossed():
            self.notify(
                threshold_notice(kind, percent, used, limit, view.subject, view.period, now)
            )

    def headers(self, plan: Plan, now: float) -> Headers:
        """The rate-limit headers of a response to this caller: the minute's units left
        (those other processes hold count as used) and when its window ends; the month's
        requests left (requests made, from the ledger and this process)."""
        limits, period = plan.limits, plan.period_at(now)
        per_minute, month_limit = limits.per_minute, limits.monthly_requests
        parts = plan.header_parts
        if parts is None:
            parts = self.rate_headers.parts(per_minute, month_limit, period.length)
            plan.header_parts = parts
        minute_left, minute_reset = per_minute or 0, now + WINDOW
        if per_minute is not None:
            lease = self.minutes.get(plan.minute)
            if lease is not None and lease.end > now:
                minute_left, minute_reset = lease.left(now), lease.end
        month_left = 0
        if month_limit is not None:
            view = plan.view or self._view(plan, now)
            month_left = month_limit - view.stored - view.local
        build = self.rate_headers.build
        return build(parts, minute_left, minute_reset, month_left, period.end, now)
