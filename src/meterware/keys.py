"""API keys: the stored record, the caller a request resolves to, secrets and their hashes.

A secret looks like `mw_` + 32 base62 characters (190 bits from `secrets`) + a 6-character
base62 CRC-32 of what precedes it, the prefix-and-checksum shape that secret scanners
verify: a mistyped or made-up secret is refused without any lookup. Secrets issued before
the checksum (`mw_` + 32 URL-safe characters) keep working. A secret is shown once, when
created; storage keeps only its HMAC-SHA-256, keyed with an optional pepper, so a leaked
database yields no usable key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from meterware.errors import ConfigurationError

__all__ = [
    "DEFAULT_TIER",
    "Account",
    "ApiKey",
    "Caller",
    "KeyExtractor",
    "KeyResolver",
    "Permission",
    "SecretHasher",
    "new_account_id",
    "new_grant_id",
    "new_key_id",
    "new_secret",
    "valid_id",
]

Permission = Literal["full_access", "site_access"]
PERMISSIONS: tuple[Permission, ...] = ("full_access", "site_access")

_BASE62 = string.digits + string.ascii_letters
_BODY, _CHECK = 32, 6  # base62 characters: 190 random bits, then a CRC-32
_SECRET_BODY = re.compile(r"[0-9A-Za-z]{38}")
_LEGACY_BODY = re.compile(r"[A-Za-z0-9_-]{32}")  # issued before the checksum
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def new_secret(prefix: str = "mw_") -> str:
    """A new secret: `prefix`, 190 random bits in base62, and their checksum."""
    head = prefix + "".join(secrets.choice(_BASE62) for _ in range(_BODY))
    return head + _checksum(head)


def _checksum(text: str) -> str:
    """CRC-32 of `text` in 6 base62 characters."""
    n, out = zlib.crc32(text.encode()), []
    for _ in range(_CHECK):
        n, digit = divmod(n, 62)
        out.append(_BASE62[digit])
    return "".join(reversed(out))


def new_key_id() -> str:
    """A new public key id, such as `key_5f0c3a9e1b7d42a8`."""
    return "key_" + secrets.token_hex(8)


def new_account_id() -> str:
    """A new account id, such as `acct_0b1d2e3f4a5b6c7d`."""
    return "acct_" + secrets.token_hex(8)


def new_grant_id() -> str:
    """A new prepaid grant id, such as `grant_9c1d2e3f4a5b6c7d`."""
    return "grant_" + secrets.token_hex(8)


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
        """Whether `secret` has the shape of a secret this hasher issues, its checksum
        included (or the shape of one issued before checksums)."""
        if not secret.startswith(self.prefix):
            return False
        size = len(self.prefix)
        if len(secret) == size + _BODY + _CHECK:
            return (
                _SECRET_BODY.fullmatch(secret, size) is not None
                and _checksum(secret[:-_CHECK]) == secret[-_CHECK:]
            )
        return len(secret) == size + 32 and _LEGACY_BODY.fullmatch(secret, size) is not None

    def hash(self, secret: str) -> str:
        """The keyed hash that storage keeps in place of the secret (64 hex digits)."""
        mac = self._hmac.copy()
        mac.update(secret.encode())
        return mac.hexdigest()


DEFAULT_TIER = "free"


@dataclass(frozen=True)
class Account:
    """A customer: the keys it owns share its plan (`tier`) unless a key names its own.

    `name` is for people; `external_id` is the account's id in the host's own systems
    (a billing system's subscription, say); `stripe_customer_id` maps it to a Stripe
    customer for usage export.
    """

    id: str
    created_at: float = 0.0
    tier: str = DEFAULT_TIER
    name: str | None = None
    external_id: str | None = None
    stripe_customer_id: str | None = None

    def with_changes(self, **changes: object) -> Account:
        """A copy with some fields replaced."""
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ApiKey:
    """A key as storage keeps it. Times are epoch seconds (UTC); `None` means never/unset.

    `tier` is the key's own tier, `None` when it follows its account's plan
    (`account_tier`, read with the key): `effective_tier` is the one it is limited by.
    `per_minute`, `monthly_limit` and `monthly_credits` override the tier's limits for
    this key; `billing_anchor_day` moves its monthly reset from the 1st to that day.
    """

    id: str
    account_id: str
    name: str
    tier: str | None = None
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
    account_tier: str = DEFAULT_TIER

    @property
    def effective_tier(self) -> str:
        """The tier the key is limited by: its own, else its account's."""
        return self.tier if self.tier is not None else self.account_tier

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
    tier: str = DEFAULT_TIER
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
            tier=key.effective_tier,
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
        """The secret from raw ASGI headers; `None` when there is none, or when the
        request carries two different ones (a header repeated, or `X-API-Key` and a bearer
        token that disagree): which to believe is not for meterware to guess."""
        wanted, found = self._wanted, None
        for name, value in headers:
            if name not in wanted:  # one set lookup per header: most are not ours
                continue
            if name in self._names:
                secret = value.decode("latin-1").strip()
            else:
                scheme, _, token = value.decode("latin-1").partition(" ")
                secret = token.strip() if scheme.lower() == "bearer" else ""
            if not secret:
                continue
            if found is not None and secret != found:
                return None
            found = secret
        return found
