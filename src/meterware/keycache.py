"""The built-in key resolver: secrets looked up by hash in the store, cached in process.

A cached key costs no I/O: one salted hash and a dict lookup. `poll()`, which the
runtime calls every `key_refresh` seconds, asks the store for keys changed since the last
poll (revoked, rotated, re-tiered) and drops them from the cache: that interval bounds
how long a revoked key keeps working. Expiry (of a key, or of a rotated secret's grace
period) is checked on every request, so it takes effect at once.

Unknown secrets cost as little as possible: a secret whose shape or checksum is wrong
is refused without any lookup; one of the right shape that the store does not know is
remembered for `unknown_ttl` seconds among at most `max_unknown` others, so repeating it
costs no lookup either, and it never pushes a known key out of the cache. Known keys are
kept for `max_age` seconds, at most `max_entries` of them, the least recently used going
first.

The cache is keyed by SHA-256 of a random per-process salt and the secret, not by the
secret: the cache holds no plaintext secret, and the key costs a third of the store's
HMAC, which is computed only on a miss.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from meterware.keys import ApiKey, Caller, SecretHasher

__all__ = ["KeyCache", "KeyStore"]


class KeyStore(Protocol):
    """What the key cache needs of a store (every `Storage` is one)."""

    async def find_key(self, secret_hash: str, now: float) -> ApiKey | None: ...

    async def key_changes(self, since: int) -> tuple[int, list[str]]: ...


@dataclass(slots=True)
class _Entry:
    caller: Caller | None  # None: the key is not active (revoked or expired) when fetched
    key_id: str
    fetched_at: float


class KeyCache:
    """Resolves secrets to callers, with the caches described in the module doc."""

    def __init__(
        self,
        store: KeyStore,
        hasher: SecretHasher,
        *,
        max_age: float = 300.0,
        max_entries: int = 200_000,
        unknown_ttl: float = 60.0,
        max_unknown: int = 10_000,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.max_age = max_age
        self.max_entries = max_entries
        self.unknown_ttl = unknown_ttl
        self.max_unknown = max_unknown
        self._known: OrderedDict[bytes, _Entry] = OrderedDict()
        self._unknown: OrderedDict[bytes, float] = OrderedDict()  # digest -> when looked up
        self._salted = hashlib.sha256(secrets.token_bytes(32))
        self._cursor = 0
        self.lookups = 0  # store reads for secrets not in the cache

    def __len__(self) -> int:
        return len(self._known)

    async def resolve(self, secret: str, now: float) -> Caller | None:
        """The caller a secret stands for at `now`, or None (a 401)."""
        mac = self._salted.copy()
        mac.update(secret.encode())
        digest = mac.digest()
        entry = self._known.get(digest)
        if entry is not None and now - entry.fetched_at < self.max_age:
            self._known.move_to_end(digest)
        else:
            looked = self._unknown.get(digest)
            if looked is not None and now - looked < self.unknown_ttl:
                return None
            if not self.hasher.well_formed(secret):  # the full check, before any I/O
                return None
            entry = await self._fetch(secret, digest, now)
            if entry is None:
                return None
        caller = entry.caller
        if caller is not None and caller.expires_at is not None and now >= caller.expires_at:
            return None
        return caller

    async def _fetch(self, secret: str, digest: bytes, now: float) -> _Entry | None:
        self.lookups += 1
        key = await self.store.find_key(self.hasher.hash(secret), now)
        if key is None:
            self._unknown[digest] = now
            self._unknown.move_to_end(digest)
            if len(self._unknown) > self.max_unknown:
                self._unknown.popitem(last=False)
            return None
        entry = _Entry(Caller.from_key(key) if key.active(now) else None, key.id, now)
        self._known[digest] = entry
        self._known.move_to_end(digest)
        if len(self._known) > self.max_entries:
            self._known.popitem(last=False)
        return entry

    def forget(self) -> None:
        """Drop every cached entry (the store was replaced)."""
        self._known.clear()
        self._unknown.clear()
        self._cursor = 0

    async def start(self) -> None:
        """Take the store's change cursor, so later polls see only later changes."""
        self._cursor, _ = await self.store.key_changes(0)

    async def poll(self) -> set[str] | None:
        """Drop cached entries of keys changed since the last poll: the ids of those keys,
        or None when every entry was dropped (the store had no cursor to go by)."""
        previous = self._cursor
        cursor, changed = await self.store.key_changes(previous)
        if cursor == previous:
            return set()
        self._cursor = cursor
        self._unknown.clear()  # a secret added meanwhile is not unknown any more
        if previous <= 0:  # the store had no changes at start: no ids to go by, drop all
            self._known.clear()
            return None
        ids = set(changed)
        for digest in [d for d, e in self._known.items() if e.key_id in ids]:
            del self._known[digest]
        return ids
