"""Prepaid credits: granting them to an account, and its balance explained by its grants
and their movements (`Admin`'s credits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meterware.admin.base import AdminBase
from meterware.admin.checks import check_id
from meterware.clock import LATEST, day_of
from meterware.errors import Conflict, InvalidValue
from meterware.keys import new_grant_id
from meterware.storage.records import CreditGrant
from meterware.tiers import MAX_COUNT
from meterware.views import iso


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


class CreditsMixin(AdminBase):
    """Grant an account prepaid credits and report its balance."""

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
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_COUNT:
            raise InvalidValue(f"amount must be an integer from 1 to {MAX_COUNT}")
        now = self.clock()
        if expires_at is not None and not now < expires_at <= LATEST:
            raise InvalidValue("expires_at must be in the future, before the year 10000")
        account = await self.get_account(account_id)
        grant = CreditGrant(
            account.id, check_id(grant_id, "grant") if grant_id is not None else new_grant_id(),
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
