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

`Admin` is put together from one part per concern, each a mixin over `AdminBase`
(`meterware.admin.base`: the store, hasher, tiers and clock, lookups by id, notices):
`accounts`, `keys`, `credits` (prepaid grants and balances), `usage` (owner-side reports)
and `usagepage` (signed links to the usage page, and what it shows); `checks` holds what
they accept. The parts import `base`, `checks` and (the usage page) `credits`, never this
package.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from meterware import config
from meterware.admin.accounts import AccountsMixin
from meterware.admin.credits import Balance, CreditsMixin, GrantBalance, Movement
from meterware.admin.keys import KeysMixin
from meterware.admin.usage import GROUPINGS, UsageGrouping, UsageLine, UsageMixin, UsageReport
from meterware.admin.usagepage import UsagePageMixin
from meterware.clock import Clock, system_clock
from meterware.keys import SecretHasher
from meterware.storage import Storage, storage_from_url
from meterware.tiers import TierTable

__all__ = [
    "GROUPINGS",
    "Admin",
    "Balance",
    "GrantBalance",
    "Movement",
    "UsageGrouping",
    "UsageLine",
    "UsageReport",
]


class Admin(AccountsMixin, KeysMixin, UsageMixin, UsagePageMixin, CreditsMixin):
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
