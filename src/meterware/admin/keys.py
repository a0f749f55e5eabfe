"""API keys: creating, listing, changing, revoking and rotating them, and a key's monthly
status (`Admin`'s keys). Secrets are returned only by `create_key` and `rotate_key`."""

from __future__ import annotations

from meterware.admin.base import UNSET, AdminBase
from meterware.admin.checks import check_account, check_key
from meterware.clock import DAY
from meterware.errors import Conflict, InvalidValue, NotFound
from meterware.keys import Account, ApiKey, Caller, Permission, new_account_id, new_key_id
from meterware.notices import key_notice
from meterware.reported import QuotaStatus, Subject, quota_status

MAX_GRACE = 366 * DAY  # the longest a rotated secret keeps working, in seconds


class KeysMixin(AdminBase):
    """Create, list, change, revoke and rotate keys (a creation, revocation or rotation
    leaves a notice)."""

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
        check_key(key, self.tiers)
        account = Account(key.account_id, now, tier=tier or self.tiers.default)
        check_account(account, self.tiers)
        if await self.store.ensure_account(account):
            key = key.with_changes(tier=None)  # the new account's plan is the key's
        secret = self.hasher.new_secret()
        hashed = self.hasher.hash(secret)
        if not await self.store.create_key(key, hashed, live_limit=live_limit, now=now):
            raise Conflict(f"account {key.account_id} has {live_limit} live keys already")
        key = await self.get_key(key.id)
        await self._notice(key_notice("created", key, now))
        return key, secret

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
        name: str = UNSET,
        tier: str | None = UNSET,
        per_minute: int | None = UNSET,
        monthly_limit: int | None = UNSET,
        monthly_credits: int | None = UNSET,
        expires_at: float | None = UNSET,
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
        changes = {k: v for k, v in given.items() if v is not UNSET}
        key = await self.get_key(key_id)
        check_key(key.with_changes(**changes), self.tiers)
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
        if (
            isinstance(grace, bool)
            or not isinstance(grace, (int, float))
            or not 0 <= grace <= MAX_GRACE
        ):
            raise InvalidValue(f"grace must be a number of seconds from 0 to {MAX_GRACE}")
        key = await self.get_key(key_id)
        now = self.clock()
        if not key.active(now):
            raise Conflict(f"key {key.id} is revoked or expired: create a new key instead")
        secret = self.hasher.new_secret()
        await self.store.add_secret(key.id, self.hasher.hash(secret), retire_old_at=now + grace)
        await self._notice(key_notice("rotated", key, now, grace_seconds=grace))
        return key, secret
