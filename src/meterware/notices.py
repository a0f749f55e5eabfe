"""Notices: what meterware tells the host, stored once and then delivered.

- `quota.threshold`, `credits.threshold`: requests (credits) this period reach 50, 80
  and 100% of the monthly quota (allowance); id `quota.<pct>:<subject>:<period>`;
- `balance.low`, `balance.exhausted`: a prepaid balance under 20% of what its live
  grants gave, or at or under 0; id `balance.<what>:<account>:<live grants>`;
- `key.created`, `key.rotated`, `key.revoked` (from `Admin`: the CLI, the admin and
  self-serve apps) and `key.expired` (seen within a minute); id `key.<what>:<key>[:...]`;
- `concern.failing_open`, `concern.recovered`: a check fails open, and is back (per
  process); id `concern.<what>:<concern>:<process>:<time>`.

A notice is stored before anything is told of it (`Storage.add_notice` stores an id once:
thresholds crossed in several processes at once, or again after a restart, are one
notice). Stored notices then go, in order, to the host's `hook` (an async callable given
to the middleware as `on_notice`), in one process at a time (a store lease), each once:
the reader's cursor moves past a notice when the hook returned (a hook given to a store
for the first time gets the notices stored before, oldest first). A hook that raises gets
the notice again after a backoff, up to 5 times, then the notice is given up on (logged,
and recorded with the reader). Webhook endpoints read the same notices
(`meterware.webhooks`). Notices of a concern failing open cannot wait for the store that
failed: they are stored when it answers again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from meterware.clock import MonthPeriod, isoformat_ms
from meterware.errors import StorageError
from meterware.guard import bounded
from meterware.keys import ApiKey
from meterware.storage import Storage
from meterware.storage.records import CreditGrant, Notice

__all__ = [
    "Hook",
    "Notifier",
    "balance_notice",
    "key_notice",
    "outage_notice",
    "threshold_notice",
]

log = logging.getLogger("meterware")

Hook = Callable[[Notice], Awaitable[None]]
HOOK_READER = "hook"
TRIES = 5  # a hook that raises gets a notice this many times
LOW = 0.2  # a balance under this share of what live grants gave is low


def threshold_notice(
    kind: str, percent: int, used: int, limit: int, subject: Any, period: MonthPeriod, now: float
) -> Notice:
    """`kind` (`quota` or `credits`) reached `percent` of `limit` this period."""
    return Notice(
        id=f"{kind}.{percent}:{subject.name}:{period.id}",
        type=f"{kind}.threshold",
        account_id=subject.account_id,
        key_id=subject.key_id,
        data={
            "percent": percent,
            "used": used,
            "limit": limit,
            "period_start": isoformat_ms(period.start),
            "period_end": isoformat_ms(period.end),
        },
        created_at=now,
    )


def key_notice(what: str, key: ApiKey, now: float, **data: Any) -> Notice:
    """A key was created, rotated, revoked or has expired."""
    suffix = {"created": "", "revoked": "", "expired": f":{key.expires_at!r}"}.get(
        what, f":{now!r}"
    )
    return Notice(
        id=f"key.{what}:{key.id}{suffix}",
        type=f"key.{what}",
        account_id=key.account_id,
        key_id=key.id,
        data={"name": key.name, **data},
        created_at=now,
    )


def outage_notice(concern: str, failing: bool, reason: str, now: float) -> Notice:
    """A concern (`rate_limit`, `quota`, `credits`, `storage`) failing open, or back."""
    what = "failing_open" if failing else "recovered"
    process = f"{socket.gethostname()}:{os.getpid()}"
    return Notice(
        id=f"concern.{what}:{concern}:{process}:{now!r}",
        type=f"concern.{what}",
        account_id=None,
        key_id=None,
        data={"concern": concern, "process": process, "reason": reason},
        created_at=now,
    )


def balance_notice(
    account_id: str, balance: int, grants: Sequence[CreditGrant], now: float
) -> Notice | None:
    """`balance.exhausted` or `balance.low` for this balance of the account's live
    grants, or None; once per set of live grants (a new grant arms them again)."""
    live = [g for g in grants if g.expires_at is None or g.expires_at > now]
    granted = sum(g.amount for g in live)
    if not live:
        return None
    if balance <= 0:
        what = "exhausted"
    elif balance < granted * LOW:
        what = "low"
    else:
        return None
    signature = hashlib.sha256(",".join(sorted(g.grant_id for g in live)).encode()).hexdigest()
    return Notice(
        id=f"balance.{what}:{account_id}:{signature[:16]}",
        type=f"balance.{what}",
        account_id=account_id,
        key_id=None,
        data={"balance": balance, "granted": granted},
        created_at=now,
    )


class Notifier:
    """Stores notices (once per id) and hands the stored ones to the host's hook."""

    def __init__(
        self,
        store: Storage,
        *,
        hook: Hook | None,
        timeout: float,
        clock: Callable[[], float],
        max_queue: int = 10_000,
    ) -> None:
        self.store = store
        self.hook = hook
        self.timeout = timeout
        self.clock = clock
        self.max_queue = max_queue
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._queue: list[Notice] = []
        self._tries: dict[str, int] = {}
        self._retry_at = 0.0

    def emit(self, notice: Notice) -> None:
        """Queue a notice to be stored by the next `run` (never blocks a request)."""
        if len(self._queue) >= self.max_queue:
            dropped = self._queue.pop(0)
            log.error("notice queue full: dropping %s", dropped.id)
        self._queue.append(notice)

    async def run(self) -> None:
        """Store what was emitted, then hand new stored notices to the hook."""
        await self._store_queued()
        if self.hook is not None:
            await self._deliver()

    async def _store_queued(self) -> None:
        while self._queue:
            notice = self._queue[0]
            try:
                await bounded(self.store.add_notice(notice), self.timeout, "storing a notice")
            except StorageError as exc:
                log.debug("could not store notice %s yet: %s", notice.id, exc)
                return
            self._queue.pop(0)

    async def _deliver(self) -> None:
        assert self.hook is not None
        now = self.clock()
        if now < self._retry_at:
            return
        lease = self.store.take_lease(HOOK_READER, self.owner, now=now, ttl=30 * self.timeout)
        if not await bounded(lease, self.timeout, "the notice lease"):
            return  # another process delivers
        position = await bounded(self.store.cursor(HOOK_READER), self.timeout, "a cursor") or 0
        found = await bounded(self.store.notices_after(position, 100), self.timeout, "notices")
        for notice in found:
            try:
                await asyncio.wait_for(self.hook(notice), timeout=self.timeout)
            except Exception as exc:  # the host's hook: its failure is logged, then retried
                tries = self._tries[notice.id] = self._tries.get(notice.id, 0) + 1
                if tries < TRIES:
                    log.warning("on_notice failed for %s (try %d): %r", notice.id, tries, exc)
                    self._retry_at = now + 2.0**tries
                    return
                log.error("on_notice failed %d times for %s: giving it up", tries, notice.id)
                rejected = [(notice.seq, notice.id, f"on_notice raised {exc!r}")]
                await bounded(
                    self.store.advance_cursor(HOOK_READER, notice.seq, rejected=rejected, now=now),
                    self.timeout, "a cursor",
                )  # fmt: skip
                continue
            self._tries.pop(notice.id, None)
            await bounded(
                self.store.advance_cursor(HOOK_READER, notice.seq), self.timeout, "a cursor"
            )

    async def close(self) -> None:
        """Store what is queued (once more) and give the lease up."""
        try:
            await self._store_queued()
            await bounded(self.store.release_lease(HOOK_READER, self.owner), self.timeout, "")
        except StorageError as exc:
            log.warning("notices not stored at shutdown (%d): %s", len(self._queue), exc)
