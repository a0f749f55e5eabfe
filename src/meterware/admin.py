"""Operating meterware from code: accounts and keys.

`Admin` is the one implementation behind the `meterware` command and any host code that
manages keys (a signup flow, a dashboard):

```python
async with Admin("sqlite:///meterware.db") as admin:
    key, secret = await admin.create_key(name="Production Key", account_id="acct_42")
```

Every method checks its input and raises meterware's own errors: `InvalidValue` for a
value it cannot take, `NotFound` for an unknown id, `Conflict` for an operation the
key's state forbids. Secrets are returned only by `create_key` and `rotate_key`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from meterware import config
from meterware.clock import Clock, system_clock
from meterware.errors import Conflict, InvalidValue, NotFound
from meterware.keys import (
    PERMISSIONS,
    ApiKey,
    Caller,
    Permission,
    SecretHasher,
    new_account_id,
    new_key_id,
    valid_id,
)
from meterware.reported import QuotaStatus, Subject, quota_status
from meterware.storage import Storage, storage_from_url
from meterware.tiers import TierTable

__all__ = ["Admin"]

_UNSET: Any = object()


class Admin:
    """Accounts and keys of one store. Use as `async with Admin(url) as admin:`.

    - `storage` - a URL or an open `Storage`. Defaults to `METERWARE_STORAGE`, else
      `sqlite:///meterware.db`. A URL is opened and closed by the context manager.
    - `pepper`, `key_prefix` - as the middleware's: secrets are hashed the way it checks
      them. Default to `METERWARE_PEPPER` and `mw_`.
    - `tiers` - the tier table names are checked against. Defaults to `METERWARE_TIERS`.
    - `limit_by` - `"key"` or `"account"`, as the middleware's: whose numbers a key's
      status reports. Defaults to `METERWARE_LIMIT_BY`, else `"key"`.
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
        clock: Clock = system_clock,
    ) -> None:
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

    # -- keys ------------------------------------------------------------------------

    async def create_key(
        self,
        *,
        name: str,
        account_id: str | None = None,
        tier: str = "free",
        permission: Permission = "full_access",
        website_id: str | None = None,
        expires_at: float | None = None,
        per_minute: int | None = None,
        monthly_limit: int | None = None,
        monthly_credits: int | None = None,
        billing_anchor_day: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key (and its account if new); the key and its secret, shown once."""
        now = self.clock()
        key = ApiKey(
            id=new_key_id(), account_id=account_id or new_account_id(), name=name, tier=tier,
            permission=permission, website_id=website_id, created_at=now,
            expires_at=expires_at, per_minute=per_minute, monthly_limit=monthly_limit,
            monthly_credits=monthly_credits, billing_anchor_day=billing_anchor_day,
        )  # fmt: skip
        self._check(key)
        await self.store.ensure_account(key.account_id, now)
        secret = self.hasher.new_secret()
        await self.store.create_key(key, self.hasher.hash(secret))
        return key, secret

    async def get_key(self, key_id: str) -> ApiKey:
        """The key with this id (revoked and expired ones included)."""
        key = await self.store.get_key(_id(key_id, "key"))
        if key is None:
            raise NotFound(f"no key {key_id!r}")
        return key

    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        """Keys of one account, or all keys, in order of creation (never their secrets)."""
        return await self.store.list_keys(
            None if account_id is None else _id(account_id, "account")
        )

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
        tier: str = _UNSET,
        per_minute: int | None = _UNSET,
        monthly_limit: int | None = _UNSET,
        monthly_credits: int | None = _UNSET,
        expires_at: float | None = _UNSET,
    ) -> ApiKey:
        """Change a key's name, tier, limit overrides (None: the tier's) or expiry (None:
        never). Running processes see the change within their `key_refresh`."""
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
        return await self.store.update_key(key.id, revoked_at=now) or key

    async def rotate_key(self, key_id: str, *, grace: float = 0.0) -> tuple[ApiKey, str]:
        """Give a key a new secret; the old one keeps working for `grace` seconds."""
        if not grace >= 0:
            raise InvalidValue("grace must be >= 0 seconds")
        key = await self.get_key(key_id)
        now = self.clock()
        if not key.active(now):
            raise Conflict(f"key {key.id} is revoked or expired: create a new key instead")
        secret = self.hasher.new_secret()
        await self.store.add_secret(key.id, self.hasher.hash(secret), retire_old_at=now + grace)
        return key, secret

    def _check(self, key: ApiKey) -> None:
        if not key.name.strip() or len(key.name) > 200:
            raise InvalidValue("a key's name must be 1-200 characters")
        _id(key.account_id, "account")
        if not self.tiers.knows(key.tier):
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
