"""Operating meterware from code: accounts, their plans, keys, and owner-side usage.

`Admin` is the one implementation behind the `meterware` command, the HTTP admin app
(`meterware.AdminApp`), the end users' self-serve keys (`meterware.KeysApp`) and any
host code that manages keys (a signup flow, a billing webhook, a dashboard):

```python
async with Admin("sqlite:///meterware.db") as admin:
    account = await admin.create_account(name="Acme", tier="pro")
    key, secret = await admin.create_key(name="Production Key", account_id=account.id)
    await admin.set_tier(account.id, "scale")  # the plan changed: every key follows
```

Plans belong to accounts: a key is limited by its account's tier unless it names its
own (`ApiKey.tier`; `effective_tier` is the one in force). A change of plan, limits,
expiry or name reaches every running process within its `key_refresh`, through the
change feed revocations use; what was consumed this month stays consumed.

Every method checks its input and raises meterware's own errors: `InvalidValue` for a
value it cannot take, `NotFound` for an unknown id, `Conflict` for an operation the
stored state forbids. Secrets are returned only by `create_key` and `rotate_key`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from meterware import config, portal
from meterware.clock import Clock, day_of, month_period, system_clock
from meterware.errors import ConfigurationError, Conflict, InvalidValue, NotFound, StorageError
from meterware.keys import (
    PERMISSIONS,
    Account,
    ApiKey,
    Caller,
    Permission,
    SecretHasher,
    new_account_id,
    new_grant_id,
    new_key_id,
    valid_id,
)
from meterware.notices import key_notice
from meterware.reported import QuotaStatus, Subject, quota_status
from meterware.storage import Storage, storage_from_url
from meterware.storage.records import OUTCOME_FIELDS, CreditGrant, Notice, Rollup
from meterware.tiers import TierTable
from meterware.views import iso, key_status

__all__ = [
    "Admin",
    "Balance",
    "GrantBalance",
    "Movement",
    "UsageGrouping",
    "UsageLine",
    "UsageReport",
]

_UNSET: Any = object()
log = logging.getLogger("meterware")

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


@dataclass(frozen=True)
class GrantBalance:
    """A grant and what is left of it: `used` is what it paid for (the ledger's, as of
    the last flush of every process); `state` is `active`, `expired` or `spent`."""

    grant: CreditGrant
    used: int
    remaining: int
    state: str

    def as_dict(self) -> dict[str, Any]:
        g = self.grant
        return {
            "grant_id": g.grant_id, "amount": g.amount, "granted_at": iso(g.granted_at),
            "expires_at": iso(g.expires_at), "used": self.used, "remaining": self.remaining,
            "state": self.state,
        }  # fmt: skip


@dataclass(frozen=True)
class Movement:
    """One line of a balance's history: a grant (+), what it paid for on a day under an
    action (-), or what was left of it when it expired (-)."""

    kind: str  # grant, use, expiry
    grant_id: str
    credits: int
    day: str
    action: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "grant_id": self.grant_id, "credits": self.credits,
                "day": self.day, "action": self.action}  # fmt: skip


@dataclass(frozen=True)
class Balance:
    """An account's prepaid credits: the balance (what its live grants have left), each
    grant, and every movement, oldest first, so that the balance can be explained line
    by line (grants - uses - expiries = balance)."""

    account_id: str
    balance: int
    grants: list[GrantBalance]
    movements: list[Movement]

    def as_dict(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "balance": self.balance,
            "grants": [g.as_dict() for g in self.grants],
            "movements": [m.as_dict() for m in self.movements],
        }


class Admin:
    """Accounts and keys of one store. Use as `async with Admin(url) as admin:`.

    - `storage` - a URL or an open `Storage`. Defaults to `METERWARE_STORAGE`, else
      `sqlite:///meterware.db`. A URL is opened and closed by the context manager.
    - `pepper`, `key_prefix` - as the middleware's: secrets are hashed the way it checks
      them. Default to `METERWARE_PEPPER` and `mw_`.
    - `tiers` - the tier table names are checked against. Defaults to `METERWARE_TIERS`.
    - `limit_by` - `"key"` or `"account"`, as the middleware's: whose numbers a key's
      status reports. Defaults to `METERWARE_LIMIT_BY`, else `"key"`.
    - `portal_secret` - what usage-page links are signed with (at least 16 bytes).
      Defaults to `METERWARE_PORTAL_SECRET`.
    - `clock` - returns Unix time. Defaults to `time.time`.
    """

    def __init__(
        self,
        storage: str | Storage | None = None,
        *,
        pepper: str | bytes | None = None,
        key_prefix: str = "mw_",
        tiers: TierTable | Mapping[str, Mapping[str, int | None]] | None = None,
        limit_by: str | None = None,
        portal_secret: str | bytes | None = None,
        clock: Clock = system_clock,
    ) -> None:
        secret = portal_secret if portal_secret is not None else config.env("PORTAL_SECRET")
        self.portal_secret = secret.encode() if isinstance(secret, str) else secret
        self._owns_store = not isinstance(storage, Storage)
        self.store = (
            storage
            if isinstance(storage, Storage)
            else storage_from_url(config.storage_url(storage))
        )
        self.hasher = SecretHasher(prefix=key_prefix, pepper=config.key_pepper(pepper))
        self.tiers = TierTable.coerce(tiers)
        self.limit_by = config.limit_by(limit_by)
        self.clock = clock

    async def __aenter__(self) -> Admin:
        if not self.store.opened:
            await self.store.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owns_store:
            await self.store.close()

    # -- accounts ----------------------------------------------------------------------

    async def create_account(
        self,
        *,
        account_id: str | None = None,
        tier: str | None = None,
        name: str | None = None,
        external_id: str | None = None,
        stripe_customer_id: str | None = None,
    ) -> Account:
        """Create an account (a new id unless `account_id` is given) on plan `tier` (the
        tier table's default: `free`); `Conflict` if the id or the external id is taken."""
        account = Account(
            id=_id(account_id, "account") if account_id is not None else new_account_id(),
            created_at=self.clock(), tier=tier or self.tiers.default, name=name,
            external_id=external_id,
            stripe_customer_id=stripe_customer_id,
        )  # fmt: skip
        self._check_account(account)
        await self._external_id_free(external_id, account.id)
        if not await self.store.ensure_account(account):
            raise Conflict(f"account {account.id} exists")
        return account

    async def get_account(self, account_id: str) -> Account:
        """The account with this id."""
        account = await self.store.get_account(_id(account_id, "account"))
        if account is None:
            raise NotFound(f"no account {account_id!r}")
        return account

    async def list_accounts(self) -> list[Account]:
        """Every account, by id."""
        return await self.store.list_accounts()

    async def update_account(
        self,
        account_id: str,
        *,
        tier: str = _UNSET,
        name: str | None = _UNSET,
        external_id: str | None = _UNSET,
        stripe_customer_id: str | None = _UNSET,
    ) -> Account:
        """Change an account's plan, name, external id or Stripe customer (None clears
        the last three). A new plan reaches running processes within `key_refresh`."""
        given = {
            "tier": tier,
            "name": name,
            "external_id": external_id,
            "stripe_customer_id": stripe_customer_id,
        }
        changes = {k: v for k, v in given.items() if v is not _UNSET}
        account = await self.get_account(account_id)
        self._check_account(account.with_changes(**changes))
        if changes.get("external_id") is not None:
            await self._external_id_free(changes["external_id"], account.id)
        if not changes:
            return account
        updated = await self.store.update_account(account.id, **changes)
        if updated is None:
            raise NotFound(f"no account {account_id!r}")
        return updated

    async def set_tier(self, account_id: str, tier: str) -> Account:
        """Move an account to another plan (its keys that name no tier of their own
        follow)."""
        return await self.update_account(account_id, tier=tier)

    async def _external_id_free(self, external_id: str | None, account_id: str) -> None:
        if external_id is None:
            return
        for other in await self.store.list_accounts():
            if other.external_id == external_id and other.id != account_id:
                raise Conflict(f"external id {external_id!r} belongs to account {other.id}")

    # -- keys ------------------------------------------------------------------------

    async def create_key(
        self,
        *,
        name: str,
        account_id: str | None = None,
        tier: str | None = None,
        permission: Permission = "full_access",
        website_id: str | None = None,
        expires_at: float | None = None,
        per_minute: int | None = None,
        monthly_limit: int | None = None,
        monthly_credits: int | None = None,
        billing_anchor_day: int | None = None,
        live_limit: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key; the key and its secret, shown once.

        Without `account_id`, or with an id no account has yet, the account is created
        too, on plan `tier` (default: the tier table's, `free`), and the key follows its
        plan. For an
        existing account, `tier` is the key's own (None: follow the account's).
        `live_limit` refuses (`Conflict`) when the account already has that many live
        keys.
        """
        now = self.clock()
        key = ApiKey(
            id=new_key_id(), account_id=account_id or new_account_id(), name=name, tier=tier,
            permission=permission, website_id=website_id, created_at=now,
            expires_at=expires_at, per_minute=per_minute, monthly_limit=monthly_limit,
            monthly_credits=monthly_credits, billing_anchor_day=billing_anchor_day,
        )  # fmt: skip
        self._check(key)
        account = Account(key.account_id, now, tier=tier or self.tiers.default)
        self._check_account(account)
        if await self.store.ensure_account(account):
            key = key.with_changes(tier=None)  # the new account's plan is the key's
        secret = self.hasher.new_secret()
        hashed = self.hasher.hash(secret)
        if not await self.store.create_key(key, hashed, live_limit=live_limit, now=now):
            raise Conflict(f"account {key.account_id} has {live_limit} live keys already")
        key = await self.get_key(key.id)
        await self._notice(key_notice("created", key, now))
        return key, secret

    async def get_key(self, key_id: str) -> ApiKey:
        """The key with this id (revoked and expired ones included)."""
        key = await self.store.get_key(_id(key_id, "key"))
        if key is None:
            raise NotFound(f"no key {key_id!r}")
        return key

    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        """Keys of one account, or all keys, in order of creation (never their secrets)."""
        if account_id is None:
            return await self.store.list_keys()
        return await self.store.list_keys((await self.get_account(account_id)).id)

    async def key_status(self, key_id: str) -> QuotaStatus:
        """A key's monthly numbers as the usage endpoint reports them: requests and credits
        this period (its account's, with `limit_by="account"`), limits, reset, lifetime
        requests."""
        key = await self.get_key(key_id)
        caller = Caller.from_key(key)
        subject = Subject(key.account_id, None if self.limit_by == "account" else key.id)
        limits = self.tiers.limits_for(caller)
        return await quota_status(
            self.store, subject=subject, key_id=key.id, limits=limits, now=self.clock()
        )

    async def update_key(
        self,
        key_id: str,
        *,
        name: str = _UNSET,
        tier: str | None = _UNSET,
        per_minute: int | None = _UNSET,
        monthly_limit: int | None = _UNSET,
        monthly_credits: int | None = _UNSET,
        expires_at: float | None = _UNSET,
    ) -> ApiKey:
        """Change a key's name, own tier (None: follow its account's), limit overrides
        (None: the tier's) or expiry (None: never). Running processes see the change
        within their `key_refresh`."""
        given = {
            "name": name,
            "tier": tier,
            "per_minute": per_minute,
            "monthly_limit": monthly_limit,
            "monthly_credits": monthly_credits,
            "expires_at": expires_at,
        }
        changes = {k: v for k, v in given.items() if v is not _UNSET}
        key = await self.get_key(key_id)
        self._check(key.with_changes(**changes))
        if not changes:
            return key
        updated = await self.store.update_key(key.id, **changes)
        if updated is None:
            raise NotFound(f"no key {key_id!r}")
        return updated

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key now (revoking a revoked key changes nothing)."""
        key = await self.get_key(key_id)
        now = self.clock()
        if key.revoked_at is not None and key.revoked_at <= now:
            return key
        revoked = await self.store.update_key(key.id, revoked_at=now) or key
        await self._notice(key_notice("revoked", revoked, now))
        return revoked

    async def rotate_key(self, key_id: str, *, grace: float = 0.0) -> tuple[ApiKey, str]:
        """Give a key a new secret; the old one keeps working for `grace` seconds."""
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace >= 0:
            raise InvalidValue("grace must be a number of seconds >= 0")
        key = await self.get_key(key_id)
        now = self.clock()
        if not key.active(now):
            raise Conflict(f"key {key.id} is revoked or expired: create a new key instead")
        secret = self.hasher.new_secret()
        await self.store.add_secret(key.id, self.hasher.hash(secret), retire_old_at=now + grace)
        await self._notice(key_notice("rotated", key, now, grace_seconds=grace))
        return key, secret

    async def _notice(self, notice: Notice) -> None:
        """Store a notice of what was done (the change itself is done: a store failing
        now is logged, not raised)."""
        try:
            await self.store.add_notice(notice)
        except StorageError as exc:
            log.warning("could not store notice %s: %s", notice.id, exc)

    # -- prepaid credits ---------------------------------------------------------------

    async def grant_credits(
        self,
        account_id: str,
        amount: int,
        *,
        expires_at: float | None = None,
        grant_id: str | None = None,
    ) -> tuple[CreditGrant, bool]:
        """Give an account prepaid credits; the grant, and whether it was new. Granting
        an id the account has already changes nothing (a retried purchase webhook adds
        once); `Conflict` if that grant has another amount. Running processes
        see a new grant within their `key_refresh`."""
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise InvalidValue("amount must be an integer > 0")
        now = self.clock()
        if expires_at is not None and not expires_at > now:
            raise InvalidValue("expires_at must be in the future")
        account = await self.get_account(account_id)
        grant = CreditGrant(
            account.id, _id(grant_id, "grant") if grant_id is not None else new_grant_id(),
            amount, now, expires_at,
        )  # fmt: skip
        if await self.store.add_grant(grant):
            return grant, True
        stored = next(
            g for g in await self.store.grants(account.id) if g.grant_id == grant.grant_id
        )
        if stored.amount != amount:  # (an expiry given again in days moves: not compared)
            raise Conflict(
                f"grant {grant.grant_id} of account {account.id} exists with "
                f"{stored.amount} credits"
            )
        return stored, False

    async def credits(self, account_id: str) -> Balance:
        """An account's prepaid balance, its grants and their movements."""
        account = await self.get_account(account_id)
        now = self.clock()
        grants = await self.store.grants(account.id)
        draws = await self.store.balance_draws(account.id)
        used: dict[str, int] = {}
        movements = [Movement("grant", g.grant_id, g.amount, day_of(g.granted_at).isoformat())
                     for g in grants]  # fmt: skip
        for d in draws:
            used[d.grant_id] = used.get(d.grant_id, 0) + d.credits
            movements.append(Movement("use", d.grant_id, -d.credits, d.day, d.action))
        lines, balance = [], 0
        for g in grants:
            spent = used.get(g.grant_id, 0)
            left = g.amount - spent
            expired = g.expires_at is not None and g.expires_at <= now
            if expired:
                if left > 0:
                    when = day_of(g.expires_at or now).isoformat()
                    movements.append(Movement("expiry", g.grant_id, -left, when))
                lines.append(GrantBalance(g, spent, 0, "expired"))
                continue
            balance += left
            lines.append(GrantBalance(g, spent, left, "active" if left > 0 else "spent"))
        order = {"grant": 0, "use": 1, "expiry": 2}
        movements.sort(key=lambda m: (m.day, order[m.kind], m.grant_id, m.action or ""))
        return Balance(account.id, balance, lines, movements)

    # -- owner-side usage --------------------------------------------------------------

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
            if account_id is not None and _id(account_id, "account") != key.account_id:
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

    # -- the usage page ----------------------------------------------------------------

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
            _id(account_id, "account"), secret=self.portal_secret, expires_at=expires_at
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

    def _check_account(self, account: Account) -> None:
        _id(account.id, "account")
        if not self.tiers.knows(account.tier):
            raise InvalidValue(
                f"unknown tier {account.tier!r} (known: {', '.join(self.tiers.names())})"
            )
        if account.name is not None and not 1 <= len(account.name.strip()) <= 200:
            raise InvalidValue("an account's name must be 1-200 characters")
        for what in ("external_id", "stripe_customer_id"):
            value = getattr(account, what)
            if value is not None:
                _id(value, what.replace("_", " "))

    def _check(self, key: ApiKey) -> None:
        if not key.name.strip() or len(key.name) > 200:
            raise InvalidValue("a key's name must be 1-200 characters")
        _id(key.account_id, "account")
        if key.tier is not None and not self.tiers.knows(key.tier):
            raise InvalidValue(
                f"unknown tier {key.tier!r} (known: {', '.join(self.tiers.names())})"
            )
        if key.permission not in PERMISSIONS:
            raise InvalidValue(f"permission must be one of {', '.join(PERMISSIONS)}")
        if key.website_id is not None:
            _id(key.website_id, "website")
        if key.permission == "site_access" and not key.website_id:
            raise InvalidValue("a site_access key needs a website id")
        if key.permission == "full_access" and key.website_id:
            raise InvalidValue("a website id is only for site_access keys")
        for what in ("per_minute", "monthly_limit", "monthly_credits"):
            value = getattr(key, what)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise InvalidValue(f"{what} must be an integer >= 0 or None")
        anchor = key.billing_anchor_day
        if anchor is not None and not 1 <= anchor <= 31:
            raise InvalidValue("billing_anchor_day must be 1-31")


def _id(value: str, what: str) -> str:
    if not isinstance(value, str) or not valid_id(value):
        raise InvalidValue(
            f"{value!r} is not a valid {what} id (1-128 characters of A-Za-z0-9_.:-)"
        )
    return value


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
