"""Accounts and their plans: creating, listing and changing them (`Admin`'s accounts)."""

from __future__ import annotations

from meterware.admin.base import UNSET, AdminBase
from meterware.admin.checks import check_account, check_id
from meterware.errors import Conflict, NotFound
from meterware.keys import Account, new_account_id


class AccountsMixin(AdminBase):
    """Create, list and change accounts; a new plan reaches every key that follows it."""

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
            id=check_id(account_id, "account") if account_id is not None else new_account_id(),
            created_at=self.clock(), tier=tier or self.tiers.default, name=name,
            external_id=external_id,
            stripe_customer_id=stripe_customer_id,
        )  # fmt: skip
        check_account(account, self.tiers)
        await self._external_id_free(external_id, account.id)
        if not await self.store.ensure_account(account):
            raise Conflict(f"account {account.id} exists")
        return account

    async def list_accounts(self) -> list[Account]:
        """Every account, by id."""
        return await self.store.list_accounts()

    async def update_account(
        self,
        account_id: str,
        *,
        tier: str = UNSET,
        name: str | None = UNSET,
        external_id: str | None = UNSET,
        stripe_customer_id: str | None = UNSET,
    ) -> Account:
        """Change an account's plan, name, external id or Stripe customer (None clears
        the last three). A new plan reaches running processes within `key_refresh`."""
        given = {
            "tier": tier,
            "name": name,
            "external_id": external_id,
            "stripe_customer_id": stripe_customer_id,
        }
        changes = {k: v for k, v in given.items() if v is not UNSET}
        account = await self.get_account(account_id)
        check_account(account.with_changes(**changes), self.tiers)
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
