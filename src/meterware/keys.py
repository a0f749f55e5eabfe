"""API keys: the stored record, the caller a request resolves to, secrets and their hashes.

A secret looks like `mw_` + 32 URL-safe characters (192 bits from `secrets`). It is shown
once, when created; storage keeps only `hash_secret(secret)`, an HMAC-SHA-256 keyed with
an optional pepper, so a leaked database yields no usable key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from meterware.errors import ConfigurationError

__all__ = [
    "ApiKey",
    "Caller",
    "KeyCache",
    "KeyExtractor",
    "KeyResolver",
    "Permission",
    "SecretHasher",
    "new_account_id",
    "new_key_id",
    "new_secret",
    "valid_id",
]

Permission = Literal["full_access", "site_access"]
PERMISSIONS: tuple[Permission, ...] = ("full_access", "site_access")

_SECRET_BYTES = 24  # 192 bits; token_urlsafe gives 32 characters (_SECRET_BODY)
_SECRET_BODY = re.compile(r"[A-Za-z0-9_-]{32}")
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def new_secret(prefix: str = "mw_") -> str:
    """A new secret: `prefix` + 192 random bits, URL-safe."""
    return prefix + secrets.token_urlsafe(_SECRET_BYTES)


def new_key_id() -> str:
    """A new public key id, such as `key_5f0c3a9e1b7d42a8`."""
    return "key_" + secrets.token_hex(8)


def new_account_id() -> str:
    """A new account id, such as `acct_0b1d2e3f4a5b6c7d`."""
    return "acct_" + secrets.token_hex(8)


def valid_id(value: str) -> bool:
    """Whether `value` can be a key or account id (1-128 of `A-Za-z0-9_.:-`)."""
    return _ID.fullmatch(value) is not None


class SecretHasher:
    """Hashes secrets for storage and checks their shape before any lookup."""

    __slots__ = ("_hmac", "_pepper", "prefix")

    def __init__(self, *, prefix: str = "mw_", pepper: str | bytes | None = None) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{0,16}", prefix):
            raise ConfigurationError("key_prefix must be 0-16 characters of A-Za-z0-9_-")
        self.prefix = prefix
        self._pepper = pepper.encode() if isinstance(pepper, str) else (pepper or b"")
        self._hmac = hmac.new(self._pepper, digestmod=hashlib.sha256)  # keyed once, copied

    def __repr__(self) -> str:
        return f"SecretHasher(prefix={self.prefix!r}, pepper={'set' if self._pepper else 'none'})"

    def new_secret(self) -> str:
        """A new secret with this hasher's prefix."""
        return new_secret(self.prefix)

    def well_formed(self, secret: str) -> bool:
        """Whether `secret` has the shape of a secret this hasher issues."""
        return secret.startswith(self.prefix) and (
            _SECRET_BODY.fullmatch(secret, len(self.prefix)) is not None
        )

    def hash(self, secret: str) -> str:
        """The keyed hash that storage keeps in place of the secret (64 hex digits)."""
        mac = self._hmac.copy()
        mac.update(secret.encode())
        return mac.hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A key as storage keeps it. Times are epoch seconds (UTC); `None` means never/unset.

    `per_minute`, `monthly_limit` and `monthly_credits` override the tier's limits for
    this key; `billing_anchor_day` moves its monthly reset from the 1st to that day.
    """

    id: str
    account_id: str
    name: str
    tier: str = "free"
    permission: Permission = "full_access"
    website_id: str | None = None
    created_at: float = 0.0
    last_used_at: float | None = None
    expires_at: float | None = None
    revoked_at: float | None = None
    per_minute: int | None = None
    monthly_limit: int | None = None
    monthly_credits: int | None = None
    billing_anchor_day: int | None = None

    def active(self, now: float) -> bool:
        """Whether the key may be used at `now` (neither revoked nor expired)."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or now < self.expires_at

    def with_changes(self, **changes: object) -> ApiKey:
        """A copy with some fields replaced."""
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: what handlers read from `request.state.meterware`.

    `key_id` is `None` when a host resolver authenticates an account rather than a key;
    the usage report then covers every key of the account.
    """

    account_id: str
    key_id: str | None
    name: str
    tier: str = "free"
    permission: Permission = "full_access"
    website_id: str | None = None
    per_minute: int | None = None
    monthly_limit: int | None = None
    monthly_credits: int | None = None
    billing_anchor_day: int | None = None
    expires_at: float | None = field(default=None, compare=False)

    @classmethod
    def from_key(cls, key: ApiKey) -> Caller:
        """The caller a stored key stands for."""
        return cls(
            account_id=key.account_id,
            key_id=key.id,
            name=key.name,
            tier=key.tier,
            permission=key.permission,
            website_id=key.website_id,
            per_minute=key.per_minute,
            monthly_limit=key.monthly_limit,
            monthly_credits=key.monthly_credits,
            billing_anchor_day=key.billing_anchor_day,
            expires_at=key.expires_at,
        )

    @property
    def subject(self) -> str:
        """The id that counters are kept under: the key's, else the account's."""
        return self.key_id if self.key_id is not None else self.account_id


KeyResolver = Callable[[str], Awaitable["Caller | None"]]
"""A host's own key lookup: given the presented secret, the caller, or `None` for 401."""


class KeyExtractor:
    """Finds the presented secret in a request's headers (never in the query string)."""

    __slots__ = ("_names", "_wanted")

    def __init__(self, header_names: Iterable[str] = ("x-api-key",), *, bearer: bool = True):
        self._names = frozenset(name.lower().encode("latin-1") for name in header_names)
        self._wanted = self._names | {b"authorization"} if bearer else self._names
        if not self._wanted:
            raise ConfigurationError("no way to present a key: give key_headers or bearer=True")

    def __call__(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The secret from raw ASGI headers, `None` when there is none."""
        wanted = self._wanted
        for name, value in headers:
            if name not in wanted:  # one set lookup per header: most are not ours
                continue
            if name in self._names:
                return value.decode("latin-1").strip() or None
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        return None


class KeyStore(Protocol):
    """What the key cache needs of a store (every `Storage` is one)."""

    async def find_key(self, secret_hash: str, now: float) -> ApiKey | None: ...

    async def key_changes(self, since: int) -> tuple[int, list[str]]: ...


class KeyCache:
    """The built-in resolver: secrets looked up by hash in the store, cached in process.

    A cached key costs no I/O. `poll()`, which the runtime calls every `key_refresh`
    seconds, asks the store for keys changed since the last poll (revoked, rotated,
    re-tiered) and drops them from the cache: that interval bounds how long a revoked
    key keeps working. Expiry (of a key, or of a rotated secret's grace period) is checked
    on every request, so it takes effect at once. Entries are also refetched after
    `max_age` seconds, and the cache holds at most `max_entries` secrets.

    The cache is keyed by SHA-256 of a random per-process salt and the secret, not by the
    secret: the cache holds no plaintext secret, and the key costs a third of the store's
    HMAC, which is computed only on a miss.
    """

    def __init__(
        self,
        store: KeyStore,
        hasher: SecretHasher,
        *,
        max_age: float = 300.0,
        max_entries: int = 200_000,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.max_age = max_age
        self.max_entries = max_entries
        self._cache: dict[bytes, _Entry] = {}
        self._salted = hashlib.sha256(secrets.token_bytes(32))
        self._cursor = 0
        self._length = len(hasher.prefix) + 32

    def __len__(self) -> int:
        return len(self._cache)

    async def resolve(self, secret: str, now: float) -> Caller | None:
        """The caller a secret stands for at `now`, or None (a 401). A cached, fresh
        entry costs one salted hash and a dict lookup; a miss one store read."""
        if len(secret) != self._length or not secret.startswith(self.hasher.prefix):
            return None
        mac = self._salted.copy()
        mac.update(secret.encode())
        digest = mac.digest()
        entry = self._cache.get(digest)
        if entry is None or now - entry.fetched_at >= self.max_age:
            if not self.hasher.well_formed(secret):  # the full check, before any I/O
                return None
            key = await self.store.find_key(self.hasher.hash(secret), now)
            caller = Caller.from_key(key) if key is not None and key.active(now) else None
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            entry = _Entry(caller, None if key is None else key.id, now)
            self._cache[digest] = entry
        caller = entry.caller
        if caller is not None and caller.expires_at is not None and now >= caller.expires_at:
            return None
        return caller

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
        if previous <= 0:  # the store had no changes at start: no ids to go by, drop all
            self._cache.clear()
            return None
        ids = set(changed)
        stale = [d for d, e in self._cache.items() if e.key_id is None or e.key_id in ids]
        for digest in stale:
            del self._cache[digest]
        return ids


@dataclass(slots=True)
class _Entry:
    caller: Caller | None  # None: no such key, or not active when fetched
    key_id: str | None
    fetched_at: float
