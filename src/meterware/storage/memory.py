"""An in-process store: for tests, benchmarks and single-process services that may
forget everything on restart."""

from __future__ import annotations

import dataclasses
from typing import Any

from meterware.errors import StorageError
from meterware.keys import ApiKey
from meterware.storage.base import SCHEMA_VERSION, Storage, Transferable, check_updatable, retiring
from meterware.storage.records import KeyTotals, Snapshot, UsageBatch, UsageRow

__all__ = ["MemoryStorage"]


class MemoryStorage(Storage, Transferable):
    """`memory://`: everything in dicts, lost when the process ends."""

    def __init__(self, url: str = "memory://", **options: Any) -> None:
        super().__init__(url)
        self._accounts: dict[str, float] = {}
        self._keys: dict[str, ApiKey] = {}
        self._versions: dict[str, int] = {}
        self._seq = 0
        self._secrets: dict[str, tuple[str, float | None]] = {}
        self._counters: dict[tuple[str, str], int] = {}
        self._daily: dict[tuple[str, str, str, str], list[int]] = {}
        self._totals: dict[str, KeyTotals] = {}
        self._labels: dict[str, str] = {}

    async def open(self) -> None:
        self._opened = True

    async def close(self) -> None:
        self._opened = False

    async def schema_version(self) -> int:
        return SCHEMA_VERSION

    async def ensure_account(self, account_id: str, now: float) -> bool:
        if account_id in self._accounts:
            return False
        self._accounts[account_id] = now
        return True

    async def list_accounts(self) -> list[str]:
        return sorted(self._accounts)

    def _bump(self, key_id: str) -> None:
        self._seq += 1
        self._versions[key_id] = self._seq

    async def create_key(self, key: ApiKey, secret_hash: str) -> None:
        # StorageError, as the SQL backends raise for the same constraint violations.
        if key.account_id not in self._accounts:
            raise StorageError(f"{self!r}: no account {key.account_id!r}")
        if key.id in self._keys or secret_hash in self._secrets:
            raise StorageError(f"{self!r}: key {key.id!r} or its secret exists")
        self._keys[key.id] = key
        self._secrets[secret_hash] = (key.id, None)
        self._bump(key.id)

    async def get_key(self, key_id: str) -> ApiKey | None:
        key = self._keys.get(key_id)
        if key is None:
            return None
        totals = self._totals.get(key_id)
        return key if totals is None else key.with_changes(last_used_at=totals.last_used_at)

    async def find_key(self, secret_hash: str, now: float) -> ApiKey | None:
        found = self._secrets.get(secret_hash)
        if found is None or (found[1] is not None and found[1] <= now):
            return None
        key = await self.get_key(found[0])
        return None if key is None else retiring(key, found[1])

    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        keys = [await self.get_key(k) for k in self._keys]
        return [k for k in keys if k and (account_id is None or k.account_id == account_id)]

    async def update_key(self, key_id: str, **changes: Any) -> ApiKey | None:
        check_updatable(changes)
        key = self._keys.get(key_id)
        if key is None:
            return None
        self._keys[key_id] = dataclasses.replace(key, **changes)
        self._bump(key_id)
        return await self.get_key(key_id)

    async def add_secret(self, key_id: str, secret_hash: str, *, retire_old_at: float) -> None:
        for hash_, (owner, expires) in list(self._secrets.items()):
            if owner == key_id:
                at = retire_old_at if expires is None else min(expires, retire_old_at)
                self._secrets[hash_] = (owner, at)
        self._secrets[secret_hash] = (key_id, None)
        self._bump(key_id)

    async def key_changes(self, since: int) -> tuple[int, list[str]]:
        if since <= 0:
            return self._seq, []
        return self._seq, [k for k, v in self._versions.items() if v > since]

    async def key_tiers(self) -> set[str]:
        return {key.tier for key in self._keys.values()}

    async def reserve(self, subject: str, period: str, want: int, limit: int) -> tuple[int, int]:
        count = self._counters.get((subject, period), 0)
        granted = min(want, max(0, limit - count))
        self._counters[(subject, period)] = count + granted
        return granted, count + granted

    async def release(self, subject: str, period: str, amount: int) -> None:
        count = self._counters.get((subject, period), 0)
        self._counters[(subject, period)] = max(0, count - amount)

    async def add(self, subject: str, period: str, amount: int) -> int:
        count = self._counters.get((subject, period), 0) + amount
        self._counters[(subject, period)] = count
        return count

    async def counter(self, subject: str, period: str) -> int:
        return self._counters.get((subject, period), 0)

    async def record(self, batch: UsageBatch) -> None:
        for r in batch.rollups:
            # Keyed by account too: account-level rollups (key_id "") of two accounts
            # must not share a row.
            row = self._daily.setdefault((r.account_id, r.key_id, r.action, r.day), [0, 0])
            row[0] += r.calls
            row[1] += r.credits
        for key_id, add in batch.key_totals().items():
            t = self._totals.get(key_id)
            if t is None:
                self._totals[key_id] = add
                continue
            t.requests += add.requests
            t.calls += add.calls
            t.credits += add.credits
            if t.last_used_at is None or (add.last_used_at or 0) > t.last_used_at:
                t.last_used_at = add.last_used_at
        for subject, period, amount in batch.counters:
            self._counters[(subject, period)] = self._counters.get((subject, period), 0) + amount
        self._labels.update(batch.labels)

    async def usage(
        self, *, account_id: str, key_id: str | None, first_day: str, last_day: str
    ) -> list[UsageRow]:
        sums: dict[tuple[str, str], list[int]] = {}
        for (aid, kid, action, day), row in self._daily.items():
            mine = aid == account_id and (key_id is None or kid == key_id)
            if mine and first_day <= day <= last_day:
                total = sums.setdefault((day, action), [0, 0])
                total[0] += row[0]
                total[1] += row[1]
        return [UsageRow(d, a, c, cr) for (d, a), (c, cr) in sorted(sums.items())]

    async def key_totals(self, key_id: str) -> KeyTotals:
        t = self._totals.get(key_id)
        return KeyTotals() if t is None else dataclasses.replace(t)  # a copy: callers may change it

    async def labels(self) -> dict[str, str]:
        return dict(self._labels)

    # -- Transferable ------------------------------------------------------------------

    async def dump(self) -> Snapshot:
        snap = Snapshot(accounts=dict(self._accounts), labels=dict(self._labels))
        for key_id, key in self._keys.items():
            snap.keys[key_id] = dataclasses.replace(key, last_used_at=None)
            totals = self._totals.get(key_id)
            if totals is None:  # never used: the key's own field is its last use, as get_key
                totals = KeyTotals(last_used_at=key.last_used_at)
            snap.totals[key_id] = dataclasses.replace(totals)  # a copy: updated in place
        snap.secrets = dict(self._secrets)
        snap.counters = dict(self._counters)
        snap.rollups = {k: (v[0], v[1]) for k, v in self._daily.items()}
        return snap

    def location(self) -> str:
        return f"memory:{id(self)}"

    async def exists(self) -> bool:
        return True
