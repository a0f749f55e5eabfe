"""Accounts and API keys: a key is stored by the hash of its secret, and numbered anew at
each change so that running processes see it (`key_changes`)."""

from __future__ import annotations

from typing import Any

from meterware.keys import Account, ApiKey
from meterware.storage.base import check_account_updatable, check_updatable, retiring
from meterware.storage.sql import (
    ACCOUNT_COLUMNS,
    LIVE_KEYS,
    STORED_KEY_COLUMNS,
    key_select,
    key_values,
)
from meterware.storage.sqlite.base import SQLiteBase

__all__ = ["SQLiteKeys"]


class SQLiteKeys(SQLiteBase):
    """Accounts, keys and their secrets."""

    async def ensure_account(self, account: Account) -> bool:
        async with self._write:
            cur = await self.db.execute(
                f"INSERT OR IGNORE INTO accounts ({', '.join(ACCOUNT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(ACCOUNT_COLUMNS))})",
                tuple(getattr(account, c) for c in ACCOUNT_COLUMNS),
            )
            return cur.rowcount == 1

    async def get_account(self, account_id: str) -> Account | None:
        row = await self._one(
            f"SELECT {', '.join(ACCOUNT_COLUMNS)} FROM accounts WHERE id = ?", (account_id,)
        )
        return None if row is None else Account(*row)

    async def list_accounts(self) -> list[Account]:
        rows = await self._all(f"SELECT {', '.join(ACCOUNT_COLUMNS)} FROM accounts ORDER BY id")
        return [Account(*r) for r in rows]

    async def update_account(self, account_id: str, **changes: Any) -> Account | None:
        check_account_updatable(changes)
        if changes:
            async with self._write, self._transaction():
                sets = ", ".join(f"{name} = ?" for name in changes)
                cur = await self.db.execute(
                    f"UPDATE accounts SET {sets} WHERE id = ?", (*changes.values(), account_id)
                )
                if cur.rowcount and "tier" in changes:
                    version = await self._next_version()
                    await self.db.execute(
                        "UPDATE keys SET version = ? WHERE account_id = ?", (version, account_id)
                    )
        return await self.get_account(account_id)

    async def create_key(
        self, key: ApiKey, secret_hash: str, *, live_limit: int | None = None, now: float = 0.0
    ) -> bool:
        async with self._write, self._transaction():
            if live_limit is not None:
                (live,) = await self._one(
                    LIVE_KEYS.format(p="", a="?1", n="?2"), (key.account_id, now)
                )
                if live >= live_limit:
                    return False
            version = await self._next_version()
            await self.db.execute(
                f"INSERT INTO keys ({', '.join(STORED_KEY_COLUMNS)}, version) "
                f"VALUES ({', '.join('?' * (len(STORED_KEY_COLUMNS) + 1))})",
                (*key_values(key), version),
            )
            await self.db.execute(
                "INSERT INTO key_secrets (hash, key_id, expires_at) VALUES (?, ?, NULL)",
                (secret_hash, key.id),
            )
        return True

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self._one(f"SELECT {key_select()} FROM keys k WHERE k.id = ?", (key_id,))
        return None if row is None else ApiKey(*row)

    async def find_key(self, secret_hash: str, now: float) -> ApiKey | None:
        row = await self._one(
            f"SELECT {key_select()}, s.expires_at FROM key_secrets s "
            "JOIN keys k ON k.id = s.key_id "
            "WHERE s.hash = ? AND (s.expires_at IS NULL OR s.expires_at > ?)",
            (secret_hash, now),
        )
        return None if row is None else retiring(ApiKey(*row[:-1]), row[-1])

    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        if account_id is None:
            rows = await self._all(f"SELECT {key_select()} FROM keys k ORDER BY created_at, id")
        else:
            rows = await self._all(
                f"SELECT {key_select()} FROM keys k WHERE account_id = ? ORDER BY created_at, id",
                (account_id,),
            )
        return [ApiKey(*r) for r in rows]

    async def update_key(self, key_id: str, **changes: Any) -> ApiKey | None:
        check_updatable(changes)
        async with self._write, self._transaction():
            version = await self._next_version()
            sets = "".join(f"{name} = ?, " for name in changes)
            cur = await self.db.execute(
                f"UPDATE keys SET {sets}version = ? WHERE id = ?",
                (*changes.values(), version, key_id),
            )
            if cur.rowcount == 0:
                return None
        return await self.get_key(key_id)

    async def add_secret(self, key_id: str, secret_hash: str, *, retire_old_at: float) -> None:
        async with self._write, self._transaction():
            version = await self._next_version()
            await self.db.execute(
                "UPDATE key_secrets SET expires_at = min(coalesce(expires_at, ?), ?) "
                "WHERE key_id = ?",
                (retire_old_at, retire_old_at, key_id),
            )
            await self.db.execute(
                "INSERT INTO key_secrets (hash, key_id, expires_at) VALUES (?, ?, NULL)",
                (secret_hash, key_id),
            )
            await self.db.execute("UPDATE keys SET version = ? WHERE id = ?", (version, key_id))

    async def key_changes(self, since: int) -> tuple[int, list[str]]:
        row = await self._one("SELECT value FROM meta WHERE name = 'key_seq'")
        cursor = int(row[0])
        if since <= 0 or cursor <= since:
            return cursor, []
        rows = await self._all("SELECT id FROM keys WHERE version > ?", (since,))
        return cursor, [r[0] for r in rows]

    async def keys_expired(self, after: float, until: float) -> list[ApiKey]:
        rows = await self._all(
            f"SELECT {key_select()} FROM keys k WHERE k.expires_at > ? AND k.expires_at <= ? "
            "ORDER BY k.expires_at, k.id",
            (after, until),
        )
        return [ApiKey(*r) for r in rows]

    async def key_tiers(self) -> set[str]:
        rows = await self._all(
            "SELECT tier FROM keys WHERE tier IS NOT NULL UNION SELECT tier FROM accounts"
        )
        return {r[0] for r in rows}
