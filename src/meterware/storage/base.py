"""The storage contract that every backend implements.

A store keeps accounts, keys (by the hash of their secret, never the secret), counters,
and the usage ledger: rollups per key, action and UTC day (requests admitted, calls
charged, credits, last use), from which every total is summed.

Counters are what makes limits exact. `reserve` is the one atomic operation they need:
take up to `want` units of a counter's current window without ever passing `limit`, for
several counters in one round trip, and say how many were granted. The admission engine
(`meterware.leases`) reserves small blocks ahead and hands them out without I/O.

Optional capabilities are mixins a backend adds (in the spirit of `limits`' storage
capabilities): `Transferable` reads a whole store at once, for `meterware copy`.
The helpers backends share are in `meterware.storage.helpers` (its functions re-exported
here); the handling of drivers' errors that `Storage` inherits is `meterware.storage.drivers`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from meterware.keys import Account, ApiKey
from meterware.storage.drivers import DriverSupport
from meterware.storage.helpers import (
    check_account_updatable,
    check_updatable,
    outbox_id,
    redact,
    retiring,
    spending_order,
)
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

__all__ = [
    "Storage",
    "Transferable",
    "check_account_updatable",
    "check_updatable",
    "outbox_id",
    "redact",
    "retiring",
    "spending_order",
]

SCHEMA_VERSION = 4

FIRST_DAY, LAST_DAY = "0000-01-01", "9999-12-31"  # bounds of every UTC day


class Storage(DriverSupport, abc.ABC):
    """Base class of every backend. Use it as `async with store:` or `open()`/`close()`."""

    def __init__(self, url: str = "", **options: Any) -> None:
        self.url = url
        self._opened = False

    @property
    def opened(self) -> bool:
        return self._opened

    async def check(self) -> bool:
        """Look for trouble a store cannot see from its own operations (the runtime calls
        this every second or so); say so in the log, and heal what can be healed. True
        when the store now holds other data than before (what was cached is stale)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.url)!r})"

    async def __aenter__(self) -> Storage:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- lifecycle -------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create or migrate the schema; calling it again does nothing."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; calling it again does nothing."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The schema version recorded in the store."""

    # -- accounts and keys -----------------------------------------------------------

    @abc.abstractmethod
    async def ensure_account(self, account: Account) -> bool:
        """Create the account unless it exists (an existing one is left as it is);
        whether it was created."""

    @abc.abstractmethod
    async def get_account(self, account_id: str) -> Account | None:
        """The account with this id."""

    @abc.abstractmethod
    async def list_accounts(self) -> list[Account]:
        """Every account, sorted by id."""

    @abc.abstractmethod
    async def update_account(self, account_id: str, **changes: Any) -> Account | None:
        """Change an account's stored fields; the new account, `None` if there is none.

        A change of tier is a change of every key of the account: they appear in
        `key_changes`, so running processes pick up the new plan with the next poll.
        `InvalidValue` for a field outside `UPDATABLE_ACCOUNT_FIELDS`.
        """

    @abc.abstractmethod
    async def create_key(
        self, key: ApiKey, secret_hash: str, *, live_limit: int | None = None, now: float = 0.0
    ) -> bool:
        """Store a new key (its account must exist) under the hash of its secret.

        With `live_limit`, only if its account has fewer live keys (neither revoked nor
        expired at `now`), checked in the same transaction: False when it has that many.
        """

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> ApiKey | None:
        """The key with this id, revoked and expired ones included."""

    @abc.abstractmethod
    async def find_key(self, secret_hash: str, now: float) -> ApiKey | None:
        """The key whose current (or still-in-grace) secret has this hash.

        When that secret is being retired (rotation with a grace period), the key comes
        back with `expires_at` lowered to the secret's retirement time (`retiring`), so
        a cache of resolved secrets knows when this one stops working.
        """

    @abc.abstractmethod
    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        """Keys, of one account or all, ordered by creation."""

    @abc.abstractmethod
    async def update_key(self, key_id: str, **changes: Any) -> ApiKey | None:
        """Change a key's stored fields (tier, overrides, revoked_at, ...); the new key.

        `None` if there is no such key; `InvalidValue` for a field outside
        `UPDATABLE_KEY_FIELDS`.
        """

    @abc.abstractmethod
    async def add_secret(self, key_id: str, secret_hash: str, *, retire_old_at: float) -> None:
        """Add a secret to a key; its other secrets stop working at `retire_old_at`."""

    @abc.abstractmethod
    async def key_changes(self, since: int) -> tuple[int, list[str]]:
        """Ids of keys changed (created, revoked, rotated, updated) after cursor `since`,
        and the cursor to ask with next time. `since=0` returns no ids, only the cursor."""

    @abc.abstractmethod
    async def keys_expired(self, after: float, until: float) -> list[ApiKey]:
        """Keys whose expiry falls in `(after, until]`, by expiry."""

    @abc.abstractmethod
    async def key_tiers(self) -> set[str]:
        """The distinct tier names stored, of keys (their own) and accounts."""

    # -- counters --------------------------------------------------------------------

    @abc.abstractmethod
    async def reserve(self, claims: Sequence[Claim], now: float) -> list[Grant]:
        """Take units of several counters atomically, in one round trip: one grant per
        claim, in order (the claims name distinct counters).

        For each claim: when the counter has no window live at `now` (none yet, or it
        ended at or before `now`), a new one starts with count 0, ending at
        `claim.window_end`; then `min(want, limit - count)` units (at least 0) are
        added. A claim whose `window_end` is not after `now` gets nothing. Two callers
        racing for the last units never get more than `limit` between them.
        """

    @abc.abstractmethod
    async def release(self, counter: str, window_end: float, amount: int) -> None:
        """Give back units reserved and not used, if the counter is still in the window
        that ends at `window_end` (the count never goes below 0)."""

    @abc.abstractmethod
    async def counter(self, counter: str, now: float) -> int:
        """The count of the counter's window live at `now` (0 if none)."""

    # -- usage ledger ----------------------------------------------------------------

    @abc.abstractmethod
    async def record(self, batch: UsageBatch) -> None:
        """Write a flush in one transaction: add its rollups to the stored ones (a
        rollup's last use is the later of the two), set its labels, add its balance
        draws, and, with `batch.outbox`, append one `OutboxEvent` per rollup that counts
        requests, calls or credits (its deltas, at `batch.time`). Nothing counted is
        ever missing from the outbox, and nothing is in it twice."""

    @abc.abstractmethod
    async def usage(
        self, *, account_id: str, key_id: str | None, first_day: str, last_day: str
    ) -> list[UsageRow]:
        """Rollups between two days inclusive, summed by day and action (ordered so), of
        one key or (`key_id` None) of every key of an account."""

    @abc.abstractmethod
    async def totals(
        self,
        *,
        account_id: str,
        key_id: str | None,
        first_day: str = FIRST_DAY,
        last_day: str = LAST_DAY,
    ) -> KeyTotals:
        """Rollups between two days inclusive summed up, of one key or (`key_id` None) of
        every key of an account."""

    @abc.abstractmethod
    async def month_usage(
        self, subjects: Sequence[tuple[str, str | None, str]]
    ) -> list[tuple[int, int]]:
        """For each `(account_id, key_id, first_day)`, the requests admitted and the
        credits charged from that day on (`key_id` None: every key of the account), in
        one round trip."""

    @abc.abstractmethod
    async def rollups(
        self,
        *,
        account_id: str | None = None,
        key_id: str | None = None,
        first_day: str = FIRST_DAY,
        last_day: str = LAST_DAY,
    ) -> list[Rollup]:
        """The stored rollups between two days inclusive, of one key, one account, or
        every account (`None` for both), ordered by day, account, key and action."""

    @abc.abstractmethod
    async def labels(self) -> dict[str, str]:
        """The display label last recorded for each action."""

    # -- prepaid credits ---------------------------------------------------------------

    @abc.abstractmethod
    async def add_grant(self, grant: CreditGrant) -> bool:
        """Store a grant unless the account has one with its id; whether it was added
        (granting the same id twice adds once). A new grant is a change of every key of
        the account: they appear in `key_changes`, so running processes see it."""

    @abc.abstractmethod
    async def grants(self, account_id: str) -> list[CreditGrant]:
        """The account's grants, in the order they are spent: soonest expiry first,
        grants that never expire last, then by time granted and id."""

    @abc.abstractmethod
    async def balance_draws(
        self, account_id: str, *, first_day: str = FIRST_DAY, last_day: str = LAST_DAY
    ) -> list[BalanceDraw]:
        """What each grant of the account paid for, by day and action (ordered so, then
        by grant), between two days inclusive."""

    # -- export and notices ------------------------------------------------------------

    @abc.abstractmethod
    async def outbox_after(self, seq: int, limit: int) -> list[OutboxEvent]:
        """Up to `limit` outbox events numbered after `seq`, in order."""

    @abc.abstractmethod
    async def outbox_seq_before(self, time: float) -> int:
        """The number of the last outbox event written before `time` (0 if none): where a
        reader that starts at `time` begins."""

    @abc.abstractmethod
    async def cursor(self, name: str) -> int | None:
        """Where the reader `name` (an exporter's sink, a webhook endpoint) is: the last
        position it finished with, None if it never started."""

    @abc.abstractmethod
    async def advance_cursor(
        self,
        name: str,
        position: int,
        *,
        rejected: Sequence[tuple[int, str, str]] = (),
        now: float = 0.0,
    ) -> None:
        """Move the reader `name` forward to `position` (never back), noting in the same
        transaction the items it gave up on: `(seq, id, reason)`."""

    @abc.abstractmethod
    async def rejections(self, name: str) -> list[tuple[int, str, str, float]]:
        """What reader `name` gave up on: `(seq, id, reason, when)`, in order."""

    @abc.abstractmethod
    async def take_lease(self, name: str, owner: str, *, now: float, ttl: float) -> bool:
        """Hold the lease `name` for `ttl` seconds from `now`, if it is free, expired or
        already `owner`'s (then it is renewed); whether `owner` holds it."""

    @abc.abstractmethod
    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up, if `owner` holds it."""

    @abc.abstractmethod
    async def add_notice(self, notice: Notice) -> bool:
        """Store a notice unless one with its id is stored; whether it was added (a
        threshold crossed in several processes at once is stored once)."""

    @abc.abstractmethod
    async def notices_after(self, seq: int, limit: int) -> list[Notice]:
        """Up to `limit` stored notices numbered after `seq`, in order."""

    async def key_totals(self, key_id: str) -> KeyTotals:
        """A key's lifetime requests, calls, credits and last use."""
        key = await self.get_key(key_id)
        if key is None:
            return KeyTotals()
        return await self.totals(account_id=key.account_id, key_id=key.id)


class Transferable(abc.ABC):
    """A store that can be read whole, and tell where it lives (for `meterware copy`)."""

    @abc.abstractmethod
    async def dump(self) -> Snapshot:
        """Everything the store holds, read in one consistent snapshot."""

    @abc.abstractmethod
    def location(self) -> str:
        """Where the data lives (a file, a server's database and schema): two stores with
        the same location are the same store."""

    @abc.abstractmethod
    async def exists(self) -> bool:
        """Whether a store exists there already (`open` would create one)."""
