"""What meterware writes on the wire: error envelopes, refusals and rate-limit headers.

Two envelopes, matching the two reference APIs; the one configured governs every error
meterware writes (the middleware's refusals and the usage endpoint's own errors):

- `flat` (reference A): `{"error": "<message>"}`
- `wrapped` (reference B): `{"success": false, "error": {"message", "code", "timestamp"}}`

Two header families, on every response to an authenticated request:

- `x-ratelimit`: `X-RateLimit-Limit`, `-Remaining`, `-Reset` (the minute window);
- `ietf`: `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers -10),
  one item per window in force: `"minute"` and `"month"`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from starlette.types import Send

from meterware.clock import isoformat_ms

__all__ = ["Denial", "Envelope", "RateLimitHeaders", "Refusal", "render_json"]

Envelope = Literal["flat", "wrapped"]
ENVELOPES: tuple[Envelope, ...] = ("flat", "wrapped")
HEADER_FAMILIES = ("x-ratelimit", "ietf")
Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Refusal:
    """A refusal meterware answers itself: status, stable code, message."""

    status: int
    code: str
    message: str


UNAUTHORIZED = Refusal(401, "UNAUTHORIZED", "Invalid or missing API key")
FORBIDDEN_SITE = Refusal(403, "FORBIDDEN", "This API key cannot access this website")
FORBIDDEN_TIER = Refusal(403, "FORBIDDEN", "This API key's tier is not configured")
RATE_LIMITED = Refusal(429, "RATE_LIMITED", "Rate limit exceeded")
QUOTA_EXCEEDED = Refusal(429, "QUOTA_EXCEEDED", "Monthly request quota exceeded")
INSUFFICIENT_CREDITS = Refusal(402, "INSUFFICIENT_CREDITS", "Monthly credit allowance exceeded")
STORAGE_UNAVAILABLE = Refusal(503, "STORAGE_UNAVAILABLE", "Usage storage is unavailable")
BAD_DAYS = Refusal(400, "BAD_REQUEST", "days must be an integer from 1 to 90")
BAD_KEY_ID = Refusal(400, "BAD_REQUEST", "keyId is not a valid key id")
KEY_NOT_FOUND = Refusal(404, "NOT_FOUND", "API key not found")
NOT_ALLOWED = Refusal(405, "METHOD_NOT_ALLOWED", "Method not allowed")

RETRY_STORAGE = (b"retry-after", b"5")


@dataclass(slots=True)
class Denial:
    """A refusal about to be sent, with the headers that go with it."""

    refusal: Refusal
    headers: Headers


def render_json(content: Any) -> bytes:
    """Compact UTF-8 JSON, the way Starlette's JSONResponse renders it."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def error_body(envelope: Envelope, refusal: Refusal, now: float) -> bytes:
    """The JSON body of a refusal in the given envelope."""
    if envelope == "flat":
        return render_json({"error": refusal.message})
    error = {"message": refusal.message, "code": refusal.code, "timestamp": isoformat_ms(now)}
    return render_json({"success": False, "error": error})


async def send_json(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Send a complete JSON response through a raw ASGI `send`."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_refusal(
    send: Send,
    envelope: Envelope,
    refusal: Refusal,
    now: float,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a refusal in the configured envelope."""
    await send_json(send, refusal.status, error_body(envelope, refusal, now), headers)


def retry_after(seconds: float) -> tuple[bytes, bytes]:
    """A `Retry-After` header: whole seconds, rounded up, at least 1."""
    return (b"retry-after", b"%d" % max(1, math.ceil(seconds)))


class RateLimitHeaders:
    """Builds the rate-limit headers of one response from the caller's current numbers.

    The `RateLimit-Policy` value depends only on the limits and the month's length, so
    it is built once per distinct policy and reused.
    """

    def __init__(self, families: Iterable[str] = HEADER_FAMILIES, window: int = 60) -> None:
        families = frozenset(families)
        self.x_ratelimit = "x-ratelimit" in families
        self.ietf = "ietf" in families
        self.window = window
        self._policies: dict[tuple[int | None, int | None, int], tuple[bytes, bytes]] = {}

    def build(
        self,
        *,
        per_minute: int | None,
        minute_left: int,
        minute_reset: float,
        month_limit: int | None,
        month_left: int,
        month_end: float,
        month_length: int,
        now: float,
    ) -> Headers:
        """The headers for a caller with these limits and numbers (`per_minute` or
        `month_limit` None: no such window)."""
        headers: Headers = []
        if per_minute is not None and self.x_ratelimit:
            headers += (
                (b"x-ratelimit-limit", b"%d" % per_minute),
                (b"x-ratelimit-remaining", b"%d" % minute_left),
                (b"x-ratelimit-reset", b"%d" % math.ceil(minute_reset)),
            )
        if not self.ietf or (per_minute is None and month_limit is None):
            return headers
        items = []
        if per_minute is not None:
            items.append(
                b'"minute";r=%d;t=%d' % (minute_left, max(0, math.ceil(minute_reset - now)))
            )
        if month_limit is not None:
            items.append(b'"month";r=%d;t=%d' % (max(0, month_left), math.ceil(month_end - now)))
        headers += (
            self._policy(per_minute, month_limit, month_length),
            (b"ratelimit", b", ".join(items)),
        )
        return headers

    def _policy(
        self, per_minute: int | None, month_limit: int | None, month_length: int
    ) -> tuple[bytes, bytes]:
        key = (per_minute, month_limit, month_length)
        policy = self._policies.get(key)
        if policy is None:
            parts = []
            if per_minute is not None:
                parts.append(f'"minute";q={per_minute};w={self.window}')
            if month_limit is not None:
                parts.append(f'"month";q={month_limit};w={month_length}')
            policy = (b"ratelimit-policy", ", ".join(parts).encode())
            if len(self._policies) >= 1024:  # keys with their own limits: stay bounded
                self._policies.clear()
            self._policies[key] = policy
        return policy


def merge_headers(headers: Iterable[tuple[bytes, bytes]], extra: Headers) -> Headers:
    """A response's headers plus ours, leaving out any family the app already set.
    The app's headers may be any iterable (read once); its own list is never changed."""
    merged = list(headers)
    for name, _ in merged:
        if b"atelimit" in name:  # rare: the app set rate-limit headers of its own
            names = [name.lower() for name, _ in merged]
            if any(name.startswith(b"x-ratelimit-") for name in names):
                extra = [h for h in extra if not h[0].startswith(b"x-ratelimit")]
            if any(name in (b"ratelimit", b"ratelimit-policy") for name in names):
                extra = [h for h in extra if h[0] not in (b"ratelimit", b"ratelimit-policy")]
            break
    merged += extra
    return merged
