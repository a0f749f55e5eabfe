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
from typing import TYPE_CHECKING, Any, Literal

from meterware.errors import ConfigurationError

if TYPE_CHECKING:
    from meterware.storage.base import Storage

__all__ = [
    "ApiKey",
    "Caller",
    "KeyExtractor",
    "KeyResolver",
    "Permission",
    "SecretHasher",
    "StoreResolver",
    "create_key",
    "new_account_id",
    "new_key_id",
    "new_secret",
    "rotate_key",
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


class StoreResolver:
    """The built-in resolver: secrets looked up by hash in the store, cached in process.

    A cached key costs no I/O. Every `refresh` seconds the middleware calls `poll()`, which
    asks the store for keys changed since the last poll (revoked, rotated, re-tiered) and
    drops them from the cache: that interval bounds how long a revoked key keeps working.
    Expiry (of a key, or of a rotated secret's grace period) is checked on every request
    against the clock, so it takes effect at once. Entries are also refetched after
    `max_age` seconds, and the cache holds at most `max_entries` secrets.

    The cache is keyed by SHA-256 of a random per-process salt and the secret, not by the
    secret: the process keeps no plaintext secret, and the key costs a third of the
    store's HMAC, which is computed only on a miss.
    """

    def __init__(
        self,
        store: Any,
        hasher: SecretHasher,
        clock: Callable[[], float],
        *,
        max_age: float = 300.0,
        max_entries: int = 200_000,
    ) -> None:
        self.store = store
        self.hasher = hasher
        self.clock = clock
        self.max_age = max_age
        self.max_entries = max_entries
        # salted digest -> (caller or None, key id or None, fetched at)
        self._cache: dict[bytes, tuple[Caller | None, str | None, float]] = {}
        self._salted = hashlib.sha256(secrets.token_bytes(32))
        self._cursor = 0
        self._length = len(hasher.prefix) + 32

    def __len__(self) -> int:
        return len(self._cache)

    def cached(self, secret: str, now: float) -> Caller | None:
        """The caller of a secret cached, fresh and active at `now`; `None` otherwise
        (then `await resolver(secret)` decides). No I/O, no coroutine."""
        entry = self._cache.get(self._digest(secret))
        if entry is None or now - entry[2] >= self.max_age:
            return None
        return _unexpired(entry[0], now)

    def _digest(self, secret: str) -> bytes:
        mac = self._salted.copy()
        mac.update(secret.encode())
        return mac.digest()

    async def __call__(self, secret: str) -> Caller | None:
        if len(secret) != self._length or not secret.startswith(self.hasher.prefix):
            return None
        cache_key = self._digest(secret)
        now = self.clock()
        entry = self._cache.get(cache_key)
        if entry is None or now - entry[2] >= self.max_age:
            if not self.hasher.well_formed(secret):  # the full check, before any I/O
                return None
            key = await self.store.find_key(self.hasher.hash(secret), now)
            caller = Caller.from_key(key) if key is not None and key.active(now) else None
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            entry = (caller, None if key is None else key.id, now)
            self._cache[cache_key] = entry
        return _unexpired(entry[0], now)

    async def start(self) -> None:
        """Take the store's change cursor, so later polls see only later changes."""
        self._cursor, _ = await self.store.key_changes(0)

    async def poll(self) -> int:
        """Drop cached entries of keys changed since the last poll; how many were dropped."""
        previous = self._cursor
        cursor, changed = await self.store.key_changes(previous)
        if cursor == previous:
            return 0
        self._cursor = cursor
        if previous <= 0:  # the store had no changes at start: no ids to go by, drop all
            dropped = len(self._cache)
            self._cache.clear()
            return dropped
        ids = set(changed)
        stale = [h for h, (_, key_id, _) in self._cache.items() if key_id is None or key_id in ids]
        for digest in stale:
            del self._cache[digest]
        return len(stale)


def _unexpired(caller: Caller | None, now: float) -> Caller | None:
    if caller is not None and caller.expires_at is not None and now >= caller.expires_at:
        return None
    return caller


async def create_key(
    store: Storage,
    hasher: SecretHasher,
    *,
    name: str,
    now: float,
    account_id: str | None = None,
    tier: str = "free",
    permission: Permission = "full_access",
    website_id: str | None = None,
    expires_at: float | None = None,
    per_minute: int | None = None,
    monthly_limit: int | None = None,
    monthly_credits: int | None = None,
    billing_anchor_day: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key (and its account if new); returns the key and its secret, shown once."""
    account_id = account_id or new_account_id()
    _check_key_fields(
        name=name, account_id=account_id, permission=permission, website_id=website_id,
        per_minute=per_minute, monthly_limit=monthly_limit, monthly_credits=monthly_credits,
        billing_anchor_day=billing_anchor_day,
    )  # fmt: skip
    await store.ensure_account(account_id, now)
    secret = hasher.new_secret()
    key = ApiKey(
        id=new_key_id(), account_id=account_id, name=name, tier=tier, permission=permission,
        website_id=website_id, created_at=now, expires_at=expires_at, per_minute=per_minute,
        monthly_limit=monthly_limit, monthly_credits=monthly_credits,
        billing_anchor_day=billing_anchor_day,
    )  # fmt: skip
    await store.create_key(key, hasher.hash(secret))
    return key, secret


async def rotate_key(
    store: Storage, hasher: SecretHasher, key_id: str, *, now: float, grace: float = 0.0
) -> str | None:
    """Give a key a new secret; the old one keeps working for `grace` seconds."""
    if grace < 0:
        raise ValueError("grace must be >= 0 seconds")
    key = await store.get_key(key_id)
    if key is None:
        return None
    if not key.active(now):
        raise ValueError(f"key {key_id} is revoked or expired: create a new key instead")
    secret = hasher.new_secret()
    await store.add_secret(key_id, hasher.hash(secret), retire_old_at=now + grace)
    return secret


def _check_key_fields(
    *,
    name: str,
    account_id: str,
    permission: str,
    website_id: str | None,
    per_minute: int | None,
    monthly_limit: int | None,
    monthly_credits: int | None,
    billing_anchor_day: int | None,
) -> None:
    if not name.strip() or len(name) > 200:
        raise ValueError("a key's name must be 1-200 characters")
    if not valid_id(account_id):
        raise ValueError("an account id must be 1-128 characters of A-Za-z0-9_.:-")
    if permission not in PERMISSIONS:
        raise ValueError(f"permission must be one of {', '.join(PERMISSIONS)}")
    if website_id is not None and not valid_id(website_id):
        raise ValueError("a website id must be 1-128 characters of A-Za-z0-9_.:-")
    if permission == "site_access" and not website_id:
        raise ValueError("a site_access key needs a website id")
    if permission == "full_access" and website_id:
        raise ValueError("a website id is only for site_access keys")
    for what, value in (
        ("per_minute", per_minute),
        ("monthly_limit", monthly_limit),
        ("monthly_credits", monthly_credits),
    ):
        if value is not None and value < 0:
            raise ValueError(f"{what} must be >= 0")
    if billing_anchor_day is not None and not 1 <= billing_anchor_day <= 31:
        raise ValueError("billing_anchor_day must be 1-31")
