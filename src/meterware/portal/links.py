"""Signed links to the usage page: the token's signing and verification, and the page's URL.

The token format and what it guarantees are described in `meterware.portal`. Pure
functions of the standard library; nothing else of meterware is imported here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["portal_url", "sign_token", "verify_token"]

MAX_TOKEN_LENGTH = 1024
MIN_SECRET_LENGTH = 16
_VERSION = "v1"
_DOMAIN = b"meterware.portal:"  # a mac for this page is never valid anywhere else
_TOKEN = re.compile(r"v1\.([A-Za-z0-9_-]{4,700})\.([A-Za-z0-9_-]{43})")
_PAYLOAD = re.compile(r"([0-9]{1,12}):(.+)", re.DOTALL)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(secret: bytes, signed: str) -> str:
    return _b64(hmac.new(secret, _DOMAIN + signed.encode("ascii"), hashlib.sha256).digest())


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"the portal secret must be at least {MIN_SECRET_LENGTH} bytes")


def sign_token(account_id: str, *, secret: bytes, expires_at: float) -> str:
    """A URL-safe token for `account_id`, valid until `expires_at` (epoch seconds)."""
    _check_secret(secret)
    account = account_id.encode()
    if not 0 < len(account) <= 512:
        raise ValueError("account_id must be 1 to 512 bytes in UTF-8")
    if not math.isfinite(expires_at) or not 0 <= expires_at < 10**12:
        raise ValueError(f"expires_at is not a usable timestamp: {expires_at!r}")
    payload = _b64(b"%d:%s" % (int(expires_at), account))
    signed = f"{_VERSION}.{payload}"
    return f"{signed}.{_mac(secret, signed)}"


def verify_token(token: str, *, secret: bytes, now: float) -> str | None:
    """The account id of a live token signed with `secret`, else None."""
    _check_secret(secret)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    payload, mac = match.groups()
    if not hmac.compare_digest(mac, _mac(secret, f"{_VERSION}.{payload}")):
        return None
    try:
        text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    fields = _PAYLOAD.fullmatch(text)
    if fields is None or not now < int(fields[1]):
        return None
    return fields[2]


def portal_url(base_url: str, token: str) -> str:
    """`base_url` with `token=<token>` in its query, replacing any token already there."""
    parts = urlsplit(base_url)
    kept = [p for p in parts.query.split("&") if p and p.partition("=")[0] != "token"]
    query = "&".join([*kept, "token=" + quote(token, safe="")])
    return urlunsplit(parts._replace(query=query))
