"""Every wait on a store has a bound, and a store that fails is not waited on again at once.

`Breaker` guards one store (the main store, or where per-minute windows live):

- each call gets `timeout` seconds; past them the caller gets `StorageUnavailable` at once
  (the call itself is cancelled in the background, never waited for);
- after a failure (an error or a timeout) the breaker **opens**: for `probe_every`
  seconds, calls fail at once without touching the store. Then one call goes through as
  a probe; if it succeeds the breaker closes, else it stays open for another interval;
- a warning is logged when it opens and when it closes, once per outage.

`Guarded` wraps a store so that the calls of the request path (key lookups, counter
reservations) go through the breaker. A key poll gets the bound but not the breaker:
revocations keep arriving when writes fail and reads work.

What the long-running senders (the billing exporter, the webhook sender) share is here
too: how long to wait after failures (`backoff_delay`), and who they are when they take a
store lease (`lease_owner`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from meterware.errors import StorageError, StorageUnavailable
from meterware.keys import ApiKey
from meterware.storage.records import Claim, CreditGrant, Grant

__all__ = ["Breaker", "Guarded", "backoff_delay", "bounded", "lease_owner"]

log = logging.getLogger("meterware")

T = TypeVar("T")


def backoff_delay(failures: int, first: float, most: float, draw: float) -> float:
    """The wait after `failures` consecutive failures: `first` doubling up to `most`,
    `draw` (from 0 to 1) placing it between half and all of that (jitter)."""
    return min(first * 2.0 ** min(failures - 1, 30), most) * (0.5 + 0.5 * draw)


def lease_owner() -> str:
    """Who this process is when it holds a store lease: `host:pid:random`."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


async def bounded(work: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
    """`await work`, at most `timeout` seconds: then `StorageUnavailable`, and the work is
    cancelled without waiting for it to end (a hung driver cannot hold the caller)."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except BaseException:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_consume)
        raise StorageUnavailable(f"{what}: no answer within {timeout:g} s")
    return task.result()


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a late failure is not reported as unhandled


class Breaker:
    """Bounds and fails fast the calls to one store (see module doc)."""

    def __init__(
        self,
        what: str,
        *,
        timeout: float,
        probe_every: float,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.timeout = timeout
        self.probe_every = probe_every
        self.timer = timer
        self.open = False
        self._next_probe = 0.0
        self._probing = False

    async def call(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """The result of `work()`, or `StorageUnavailable` within the bound."""
        if self.open:
            now = self.timer()
            if self._probing or now < self._next_probe:
                raise StorageUnavailable(f"{self.what} is failing: next try in at most "
                                         f"{max(0.0, self._next_probe - now):.1f} s")  # fmt: skip
            self._probing = True
        try:
            result = await bounded(work(), self.timeout, self.what)
        except StorageError as exc:
            self._failed(exc)
            raise
        finally:
            self._probing = False
        self.answered()
        return result

    def answered(self) -> None:
        """The store answered another call (a flush wrote): close the breaker now."""
        if self.open:
            self.open = False
            log.warning("%s: answering again, calls go through", self.what)

    def _failed(self, exc: StorageError) -> None:
        self._next_probe = self.timer() + self.probe_every
        if not self.open:
            self.open = True
            log.warning(
                "%s: calls fail fast after an error (%s); trying again every %g s",
                self.what, exc, self.probe_every,
            )  # fmt: skip


class _Store(Protocol):
    async def find_key(self, secret_hash: str, now: float) -> ApiKey | None: ...

    async def key_changes(self, since: int) -> tuple[int, list[str]]: ...

    async def grants(self, account_id: str) -> list[CreditGrant]: ...

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[Grant]: ...

    async def release(self, counter: str, window_end: float, amount: int) -> None: ...

    async def close(self) -> None: ...


class Guarded:
    """A store whose request-path calls go through a `Breaker` (see module doc)."""

    def __init__(self, store: Any, breaker: Breaker, *, poll_timeout: float) -> None:
        self.store: _Store = store
        self.breaker = breaker
        self.poll_timeout = poll_timeout

    async def find_key(self, secret_hash: str, now: float) -> ApiKey | None:
        return await self.breaker.call(lambda: self.store.find_key(secret_hash, now))

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[Grant]:
        return await self.breaker.call(lambda: self.store.reserve(claims, now))

    async def release(self, counter: str, window_end: float, amount: int) -> None:
        await self.breaker.call(lambda: self.store.release(counter, window_end, amount))

    async def grants(self, account_id: str) -> list[CreditGrant]:
        return await self.breaker.call(lambda: self.store.grants(account_id))

    async def key_changes(self, since: int) -> tuple[int, list[str]]:
        return await bounded(self.store.key_changes(since), self.poll_timeout, "key poll")

    async def close(self) -> None:
        await self.store.close()
