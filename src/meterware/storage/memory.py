"""An in-process store: for tests, benchmarks and single-process services that may
forget everything on restart."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence
from typing import Any

from meterware.errors import StorageError
from meterware.keys import DEFAULT_TIER, Account, ApiKey
from meterware.storage.base import (
    FIRST_DAY,
    LAST_DAY,
    SCHEMA_VERSION,
    Storage,
    Transferable,
    check_account_updatable,
    check_updatable,
    outbox_id,
    retiring,
    spending_order,
)
from meterware.storage.local import LocalCounters
from meterware.storage.records import (
    BalanceDraw,
    Claim,
    CreditGrant,
    Grant,
    KeyTotals,
    Notice,
    OutboxEvent,
    Rollup,
    Snapshot,
    UsageBatch,
    UsageRow,
)

__all__ = ["MemoryStorage"]


class MemoryStorage(Storage, Transferable):
    """`memory://`: everything in dicts, lost when the process ends."""

    def __init__(self, url: str = "memory://", **options: Any) -> None:
        super().__init__(url)
        self._accounts: dict[str, Account] = {}
        self._keys: dict[str, ApiKey] = {}
        self._versions: dict[str, int] = {}
        self._seq = 0
        self._secrets: dict[str, tuple[str, float | None]] = {}
        self._counters = LocalCounters()
        self._daily: dict[tuple[str, str, str, str], Rollup] = {}
        # The same rows by account: a key's totals and month must not scan every account's.
        self._by_account: dict[str, list[Rollup]] = {}
        self._labels: dict[str, str] = {}
        self._grants: dict[tuple[str, str], CreditGrant] = {}
        self._draws: dict[tuple[str, str, str, str], BalanceDraw] = {}
        self._store_id = secrets.token_hex(4)
        self._outbox: list[OutboxEvent] = []
        self._cursors: dict[str, int] = {}
        self._rejections: dict[str, list[tuple[int, str, str, float]]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._notices: dict[str, Notice] = {}

    async def open(self) -> None:
        self._opened = True

    async def close(self) -> None:
        self._opened = False

    async def schema_version(self) -> int:
        return SCHEMA_VERSION

    async def ensure_account(self, account: Account) -> bool:
        if account.id in self._accounts:
            return False
        self._accounts[account.id] = account
        return True

    async def get_account(self, account_id: str) -> Account | None:
        return self._accounts.get(account_id)

    async def list_accounts(self) -> list[Account]:
        return [self._accounts[a] for a in sorted(self._accounts)]

    async def update_account(self, account_id: str, **changes: Any) -> Account | None:
        check_account_updatable(changes)
        account = self._accounts.get(account_id)
        if account is None:
            return None
        account = self._accounts[account_id] = account.with_changes(**changes)
        if "tier" in changes:
            for key in self._keys.values():
                if key.account_id == account_id:
                    self._bump(key.id)
        return account

    def _bump(self, key_id: str) -> None:
        self._seq += 1
        self._versions[key_id] = self._seq

    async def create_key(
        self, key: ApiKey, secret_hash: str, *, live_limit: int | None = None, now: float = 0.0
    ) -> bool:
        # StorageError, as the SQL backends raise for the same constraint violations.
        if key.account_id not in self._accounts:
            raise StorageError(f"{self!r}: no account {key.account_id!r}")
        if key.id in self._keys or secret_hash in self._secrets:
            raise StorageError(f"{self!r}: key {key.id!r} or its secret exists")
        if live_limit is not None:
            mine = [k for k in self._keys.values() if k.account_id == key.account_id]
            if sum(1 for k in mine if k.active(now)) >= live_limit:
                return False
        self._keys[key.id] = key.with_changes(last_used_at=None, account_tier=DEFAULT_TIER)
        self._secrets[secret_hash] = (key.id, None)
        self._bump(key.id)
        return True

    async def get_key(self, key_id: str) -> ApiKey | None:
        key = self._keys.get(key_id)
        if key is None:
            return None
        last = (await self.totals(account_id=key.account_id, key_id=key_id)).last_used_at
        return key.with_changes(last_used_at=last, account_tier=self._accounts[key.account_id].tier)

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

    async def keys_expired(self, after: float, until: float) -> list[ApiKey]:
        found = [k for k in self._keys.values() if k.expires_at and after < k.expires_at <= until]
        return [
            await self.get_key(k.id) or k for k in sorted(found, key=lambda k: k.expires_at or 0)
        ]

    async def key_tiers(self) -> set[str]:
        own = {key.tier for key in self._keys.values() if key.tier is not None}
        return own | {account.tier for account in self._accounts.values()}

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[Grant]:
        return await self._counters.reserve(claims, now)

    async def release(self, counter: str, window_end: float, amount: int) -> None:
        await self._counters.release(counter, window_end, amount)

    async def counter(self, counter: str, now: float) -> int:
        return self._counters.count(counter, now)

    async def record(self, batch: UsageBatch) -> None:
        for r in batch.rollups:
            # Keyed by account too: account-level rollups (key_id "") of two accounts
            # must not share a row.
            where = (r.account_id, r.key_id, r.action, r.day)
            row = self._daily.get(where)
            if row is None:
                row = self._daily[where] = dataclasses.replace(r)
                self._by_account.setdefault(r.account_id, []).append(row)
            else:
                row.add(r)
        self._labels.update(batch.labels)
        for d in batch.draws:
            found = self._draws.get((d.account_id, d.grant_id, d.day, d.action))
            if found is None:
                self._draws[(d.account_id, d.grant_id, d.day, d.action)] = dataclasses.replace(d)
            else:
                found.credits += d.credits
        if batch.outbox:
            for r in batch.rollups:
                if r.requests or r.calls or r.credits:
                    seq = len(self._outbox) + 1
                    self._outbox.append(OutboxEvent(
                        seq, outbox_id(self._store_id, seq), r.account_id, r.key_id, r.action,
                        r.day, r.requests, r.calls, r.credits, batch.time,
                    ))  # fmt: skip

    def _rows(self, account_id: str, key_id: str | None, first: str, last: str) -> list[Rollup]:
        return [
            r
            for r in self._by_account.get(account_id, ())
            if (key_id is None or r.key_id == key_id) and first <= r.day <= last
        ]

    async def usage(
        self, *, account_id: str, key_id: str | None, first_day: str, last_day: str
    ) -> list[UsageRow]:
        sums: dict[tuple[str, str], UsageRow] = {}
        for r in self._rows(account_id, key_id, first_day, last_day):
            row = sums.setdefault((r.day, r.action), UsageRow(r.day, r.action, 0, 0))
            row.calls += r.calls
            row.credits += r.credits
            row.requests += r.requests
        return [sums[k] for k in sorted(sums)]

    async def totals(
        self,
        *,
        account_id: str,
        key_id: str | None,
        first_day: str = FIRST_DAY,
        last_day: str = LAST_DAY,
    ) -> KeyTotals:
        total = Rollup(account_id, key_id or "", "", "", 0, 0)
        for r in self._rows(account_id, key_id, first_day, last_day):
            total.add(r)
        return KeyTotals(total.requests, total.calls, total.credits, total.last_used_at)

    async def month_usage(
        self, subjects: Sequence[tuple[str, str | None, str]]
    ) -> list[tuple[int, int]]:
        found = []
        for account_id, key_id, first_day in subjects:
            rows = self._rows(account_id, key_id, first_day, LAST_DAY)
            found.append((sum(r.requests for r in rows), sum(r.credits for r in rows)))
        return found

    async def rollups(
        self,
        *,
        account_id: str | None = None,
        key_id: str | None = None,
        first_day: str = FIRST_DAY,
        last_day: str = LAST_DAY,
    ) -> list[Rollup]:
        rows = [
            dataclasses.replace(r)
            for (aid, kid, _, day), r in self._daily.items()
            if (account_id is None or aid == account_id)
            and (key_id is None or kid == key_id)
            and first_day <= day <= last_day
        ]
        return sorted(rows, key=lambda r: (r.day, r.account_id, r.key_id, r.action))

    async def labels(self) -> dict[str, str]:
        return dict(self._labels)

    # -- prepaid credits ---------------------------------------------------------------

    async def add_grant(self, grant: CreditGrant) -> bool:
        if grant.account_id not in self._accounts:
            raise StorageError(f"{self!r}: no account {grant.account_id!r}")
        if (grant.account_id, grant.grant_id) in self._grants:
            return False
        self._grants[(grant.account_id, grant.grant_id)] = grant
        for key in self._keys.values():
            if key.account_id == grant.account_id:
                self._bump(key.id)
        return True

    async def grants(self, account_id: str) -> list[CreditGrant]:
        mine = [g for (a, _), g in self._grants.items() if a == account_id]
        return sorted(mine, key=spending_order)

    async def balance_draws(
        self, account_id: str, *, first_day: str = FIRST_DAY, last_day: str = LAST_DAY
    ) -> list[BalanceDraw]:
        rows = [
            dataclasses.replace(d)
            for (a, _, day, _), d in self._draws.items()
            if a == account_id and first_day <= day <= last_day
        ]
        return sorted(rows, key=lambda d: (d.day, d.action, d.grant_id))

    # -- export and notices ------------------------------------------------------------

    async def outbox_after(self, seq: int, limit: int) -> list[OutboxEvent]:
        return self._outbox[max(0, seq) : max(0, seq) + limit]

    async def outbox_seq_before(self, time: float) -> int:
        return max((e.seq for e in self._outbox if e.time < time), default=0)

    async def cursor(self, name: str) -> int | None:
        return self._cursors.get(name)

    async def advance_cursor(
        self,
        name: str,
        position: int,
        *,
        rejected: Sequence[tuple[int, str, str]] = (),
        now: float = 0.0,
    ) -> None:
        self._cursors[name] = max(position, self._cursors.get(name, position))
        noted = self._rejections.setdefault(name, [])
        known = {seq for seq, *_ in noted}
        noted += [(seq, id_, why, now) for seq, id_, why in rejected if seq not in known]
        noted.sort()

    async def rejections(self, name: str) -> list[tuple[int, str, str, float]]:
        return list(self._rejections.get(name, []))

    async def take_lease(self, name: str, owner: str, *, now: float, ttl: float) -> bool:
        held = self._leases.get(name)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._leases[name] = (owner, now + ttl)
        return True

    async def release_lease(self, name: str, owner: str) -> None:
        if self._leases.get(name, ("", 0.0))[0] == owner:
            del self._leases[name]

    async def add_notice(self, notice: Notice) -> bool:
        if notice.id in self._notices:
            return False
        seq = len(self._notices) + 1
        self._notices[notice.id] = dataclasses.replace(notice, seq=seq)
        return True

    async def notices_after(self, seq: int, limit: int) -> list[Notice]:
        return list(self._notices.values())[max(0, seq) : max(0, seq) + limit]

    # -- Transferable ------------------------------------------------------------------

    async def dump(self) -> Snapshot:
        return Snapshot(
            accounts=dict(self._accounts),
            keys={k: dataclasses.replace(key, last_used_at=None) for k, key in self._keys.items()},
            secrets=dict(self._secrets),
            counters={name: (end, int(count)) for name, (end, count) in self._counters},
            rollups={k: dataclasses.replace(r) for k, r in self._daily.items()},
            labels=dict(self._labels),
            grants=dict(self._grants),
            draws={k: dataclasses.replace(d) for k, d in self._draws.items()},
        )

    def location(self) -> str:
        return f"memory:{id(self)}"

    async def exists(self) -> bool:
        return True
