"""What `Admin` does for the usage page (`meterware.portal`, served by `PortalApp`): the
signed links to an account's page and the data the page shows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from meterware import portal
from meterware.admin.checks import check_id
from meterware.admin.credits import CreditsMixin
from meterware.clock import day_of, month_period
from meterware.errors import ConfigurationError, InvalidValue
from meterware.keys import Account, ApiKey, Caller
from meterware.reported import QuotaStatus, Subject, quota_status
from meterware.storage.records import OUTCOME_FIELDS
from meterware.views import key_status


class UsagePageMixin(CreditsMixin):
    """Signed links to an account's usage page, and what the page shows (its prepaid
    balance among it, hence a part over `CreditsMixin`)."""

    def portal_link(
        self, account_id: str, base_url: str, *, expires_in: float = 900.0
    ) -> tuple[str, float]:
        """A signed link to the account's usage page at `base_url` (where `PortalApp` is
        mounted: `/portal` means `/portal/`), valid for `expires_in` seconds (at most a
        day); the link and its expiry.
        The link is the access: hand it to the customer's browser, not to a log."""
        if not self.portal_secret:
            raise ConfigurationError("no portal secret: set METERWARE_PORTAL_SECRET")
        if not 0 < expires_in <= 86_400:
            raise InvalidValue("expires_in must be more than 0 and at most a day (86400 s)")
        if not base_url.startswith(("http://", "https://")):
            raise InvalidValue("base_url must be an http:// or https:// URL")
        parts = urlsplit(base_url)
        if not parts.path.endswith("/"):  # the mount's root: /portal -> /portal/
            base_url = urlunsplit(parts._replace(path=parts.path + "/"))
        expires_at = self.clock() + expires_in
        token = portal.sign_token(
            check_id(account_id, "account"), secret=self.portal_secret, expires_at=expires_at
        )
        return portal.portal_url(base_url, token), expires_at

    async def portal_data(self, account_id: str, *, days: int = 90) -> portal.PortalData:
        """What the account's usage page shows: calls and credits by day over the last
        `days` days (as the credits report counts them) and by action this period, the
        month's numbers against its plan (the account's with `limit_by="account"`, else
        its keys' together), refusals by outcome, its prepaid balance and its keys."""
        account = await self.get_account(account_id)
        now = self.clock()
        keys = await self.store.list_keys(account.id)
        period = month_period(now, 1)
        today = day_of(now)
        first = today - timedelta(days=days)
        span = {"first_day": first.isoformat(), "last_day": today.isoformat()}
        rows = await self.store.usage(account_id=account.id, key_id=None, **span)
        by_day: dict[str, list[int]] = {}
        for row in rows:
            sums = by_day.setdefault(row.day, [0, 0, 0])
            sums[0] += row.calls
            sums[1] += row.credits
            sums[2] += row.requests
        series = []
        for offset in range(days + 1):
            day = (first + timedelta(days=offset)).isoformat()
            calls, credits, requests = by_day.get(day, (0, 0, 0))
            series.append(portal.DayUsage(day, calls, credits, requests))
        month_rollups = await self.store.rollups(
            account_id=account.id, first_day=day_of(period.start).isoformat()
        )
        labels = await self.store.labels()
        endpoints: dict[str, list[int]] = {}
        refused: dict[str, int] = {}
        for r in month_rollups:
            sums = endpoints.setdefault(r.action, [0, 0, 0])
            sums[0] += r.calls
            sums[1] += r.credits
            sums[2] += r.requests
            for outcome in OUTCOME_FIELDS:
                if outcome != "failed_open" and getattr(r, outcome):
                    refused[outcome] = refused.get(outcome, 0) + getattr(r, outcome)
        month = await self._month(account, keys, now)
        balance = await self.credits(account.id) if await self.store.grants(account.id) else None
        tier = self.tiers.get(account.tier)
        return portal.PortalData(
            account_id=account.id,
            account_name=account.name,
            tier=account.tier,
            generated_at=now,
            period_start=month.period_start,
            period_end=month.period_end,
            monthly_requests=month.requests,
            monthly_limit=month.requests_limit,
            monthly_credits=month.credits,
            monthly_credits_limit=month.credits_limit,
            per_minute=tier.per_minute,
            days=series,
            endpoints=sorted(
                (
                    portal.EndpointUsage(a, labels.get(a, a), c, cr, rq)
                    for a, (c, cr, rq) in endpoints.items()
                    if c or rq
                ),
                key=lambda e: (-e.credits, -e.calls, e.action),
            ),
            refused=refused,
            balance=None if balance is None else balance.balance,
            keys=[
                portal.KeyLine(k.id, k.name, k.created_at, k.last_used_at, key_status(k, now))
                for k in keys
            ],
        )

    async def _month(self, account: Account, keys: list[ApiKey], now: float) -> _Month:
        """The month's numbers of the page's gauges: the account's own with
        `limit_by="account"`, else its live keys' added up (limits and usage alike)."""
        live = [k for k in keys if k.active(now)]
        if self.limit_by == "account" or not live:
            limits = self.tiers.limits_for(
                Caller(account.id, None, account.name or account.id, tier=account.tier)
            )
            subject = Subject(account.id, None)
            status = await quota_status(
                self.store, subject=subject, key_id=None, limits=limits, now=now
            )
            return _Month(0, 0, 0, 0, 0.0, 0.0).add(status, limits, now)
        month = _Month(0, 0, 0, 0, 0.0, 0.0)
        for key in live:
            limits = self.tiers.limits_for(Caller.from_key(key))
            status = await quota_status(self.store, subject=Subject(key.account_id, key.id),
                                        key_id=key.id, limits=limits, now=now)  # fmt: skip
            month = month.add(status, limits, now)
        return month


@dataclass(frozen=True)
class _Month:
    """A month's numbers for the usage page (None as a limit: unlimited)."""

    requests: int
    requests_limit: int | None
    credits: int
    credits_limit: int | None
    period_start: float
    period_end: float

    def add(self, status: QuotaStatus, limits: Any, now: float) -> _Month:
        start, end = _span(status.monthly_reset_at, now, limits)
        return _Month(
            self.requests + status.monthly_requests,
            _plus(self.requests_limit, status.monthly_limit),
            self.credits + status.monthly_credits,
            _plus(self.credits_limit, status.monthly_credits_limit),
            start if not self.period_start else min(self.period_start, start),
            max(self.period_end, end),
        )


def _plus(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _span(reset_at: float, now: float, limits: Any) -> tuple[float, float]:
    period = month_period(now, limits.anchor_day)
    return period.start, reset_at
