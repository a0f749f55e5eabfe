"""What every part of `Admin` shares: its store, hasher, tiers and clock, the lookups of an
account or a key by id, and the notices of what was done.

Each part of `Admin` (accounts, keys, credits, usage, the usage page) is a mixin over
`AdminBase`; `Admin` itself (in `meterware.admin`) sets these attributes up. Imports no part
of `meterware.admin` but its checks.
"""

from __future__ import annotations

import logging
from typing import Any

from meterware.admin.checks import check_id
from meterware.clock import Clock
from meterware.errors import NotFound, StorageError
from meterware.keys import Account, ApiKey, SecretHasher
from meterware.storage import Storage
from meterware.storage.records import Notice
from meterware.tiers import TierTable

UNSET: Any = object()  # the default of an update's arguments: left as it is
log = logging.getLogger("meterware")


class AdminBase:
    """The state and lookups every part of `Admin` relies on."""

    store: Storage
    hasher: SecretHasher
    tiers: TierTable
    limit_by: str
    portal_secret: bytes | None
    clock: Clock

    async def get_account(self, account_id: str) -> Account:
        """The account with this id."""
        account = await self.store.get_account(check_id(account_id, "account"))
        if account is None:
            raise NotFound(f"no account {account_id!r}")
        return account

    async def get_key(self, key_id: str) -> ApiKey:
        """The key with this id (revoked and expired ones included)."""
        key = await self.store.get_key(check_id(key_id, "key"))
        if key is None:
            raise NotFound(f"no key {key_id!r}")
        return key

    async def _notice(self, notice: Notice) -> None:
        """Store a notice of what was done (the change itself is done: a store failing
        now is logged, not raised)."""
        try:
            await self.store.add_notice(notice)
        except StorageError as exc:
            log.warning("could not store notice %s: %s", notice.id, exc)
