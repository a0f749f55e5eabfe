"""Accounts and their keys in PostgreSQL: each change of a key takes the next key version
in its transaction (see `queries.NEXT_VERSION`)."""

from __future__ import annotations

from typing import Any

from meterware.keys import Account, ApiKey
from meterware.storage.base import check_account_updatable, check_updatable, retiring
from meterware.storage.postgres.base import PostgresBase
from meterware.storage.sql import ACCOUNT_COLUMNS, key_values


class PostgresAccounts(PostgresBase):
    """Accounts, keys, their secrets and the key changes running processes poll."""

    # -- accounts and keys -----------------------------------------------------------

    async def ensure_account(self, account: Account) -> bool:
        values = (getattr(account, c) for c in ACCOUNT_COLUMNS)
        status = await self.pool.execute(self._q.ensure_account, *values)
        return bool(status == "INSERT 0 1")

    async def get_account(self, account_id: str) -> Account | None:
        row = await self.pool.fetchrow(self._q.get_account, account_id)
        return None if row is None else Account(*row)

    async def list_accounts(self) -> list[Account]:
        return [Account(*r) for r in await self.pool.fetch(self._q.list_accounts)]

    async def update_account(self, account_id: str, **changes: Any) -> Account | None:
        check_account_updatable(changes)
        if changes:
            sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
            async with self.pool.acquire() as conn, conn.transaction():
                status = await conn.execute(
                    self._q.update_account.format(sets=sets), account_id, *changes.values()
                )
                if status != "UPDATE 0" and "tier" in changes:
                    version = await conn.fetchval(self._q.next_version)
                    await conn.execute(self._q.account_keys_version, account_id, version)
        return await self.get_account(account_id)

    async def create_key(
        self, key: ApiKey, secret_hash: str, *, live_limit: int | None = None, now: float = 0.0
    ) -> bool:
        q = self._q
        async with self.pool.acquire() as conn, conn.transaction():
            if live_limit is not None:
                # The account's row lock queues creations of its keys: the count holds.
                await conn.execute(q.lock_account, key.account_id)
                if await conn.fetchval(q.live_keys, key.account_id, now) >= live_limit:
                    return False
            version = await conn.fetchval(q.next_version)
            await conn.execute(q.insert_key, *key_values(key), version)
            await conn.execute(q.insert_secret, secret_hash, key.id)
        return True

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self.pool.fetchrow(self._q.get_key, key_id)
        return None if row is None else ApiKey(*row)

    async def find_key(self, secret_hash: str, now: float) -> ApiKey | None:
        row = await self.pool.fetchrow(self._q.find_key, secret_hash, now)
        return None if row is None else retiring(ApiKey(*row[:-1]), row[-1])

    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        q = self._q
        if account_id is None:
            rows = await self.pool.fetch(q.list_keys)
        else:
            rows = await self.pool.fetch(q.list_account_keys, account_id)
        return [ApiKey(*r) for r in rows]

    async def update_key(self, key_id: str, **changes: Any) -> ApiKey | None:
        check_updatable(changes)
        sets = "".join(f"{name} = ${i}, " for i, name in enumerate(changes, start=3))
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                version = await conn.fetchval(self._q.next_version)
                status = await conn.execute(
                    self._q.update_key.format(sets=sets), key_id, version, *changes.values()
                )
                if status == "UPDATE 0":  # no such key: roll back, giving the version back
                    raise _NoSuchKey
        except _NoSuchKey:
            return None
        return await self.get_key(key_id)

    async def add_secret(self, key_id: str, secret_hash: str, *, retire_old_at: float) -> None:
        q = self._q
        async with self.pool.acquire() as conn, conn.transaction():
            version = await conn.fetchval(q.next_version)
            # LEAST ignores NULL: a secret with no end gets `retire_old_at`, one already
            # retiring keeps the earlier time.
            await conn.execute(q.retire_secrets, key_id, retire_old_at)
            await conn.execute(q.insert_secret, secret_hash, key_id)
            await conn.execute(q.set_version, key_id, version)

    async def key_changes(self, since: int) -> tuple[int, list[str]]:
        # One statement, one snapshot: the cursor and the keys agree (see NEXT_VERSION).
        row = await self.pool.fetchrow(self._q.key_changes, since)
        cursor = int(row[0])
        if since <= 0:
            return cursor, []
        return cursor, [str(key_id) for key_id in row[1]]

    async def keys_expired(self, after: float, until: float) -> list[ApiKey]:
        rows = await self.pool.fetch(self._q.keys_expired, after, until)
        return [ApiKey(*r) for r in rows]

    async def key_tiers(self) -> set[str]:
        return {str(r[0]) for r in await self.pool.fetch(self._q.key_tiers)}


class _NoSuchKey(Exception):
    """Rolls back an update of a key that does not exist."""
