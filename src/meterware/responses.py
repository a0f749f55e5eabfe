"""Error envelopes and rate-limit headers.

Two envelopes, matching the two reference APIs:

- `flat` (reference A): `{"error": "<message>"}`
- `wrapped` (reference B): `{"success": false, "error": {"message", "code", "timestamp"}}`
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from starlette.types import Send

from meterware.clock import isoformat_ms
from meterware.errors import ConfigurationError

__all__ = ["Envelope", "Refusal", "render_json"]

Envelope = Literal["flat", "wrapped"]
ENVELOPES: tuple[Envelope, ...] = ("flat", "wrapped")
HEADER_FAMILIES = ("x-ratelimit", "ietf")


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


def render_json(content: Any) -> bytes:
    """Compact UTF-8 JSON, the way Starlette's JSONResponse renders it."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def error_body(envelope: Envelope, refusal: Refusal, now: float) -> bytes:
    """The JSON body of a refusal in the given envelope."""
    if envelope == "flat":
        return render_json({"error": refusal.message})
    return render_json(
        {
            "success": False,
            "error": {
                "message": refusal.message,
                "code": refusal.code,
                "timestamp": isoformat_ms(now),
            },
        }
    )


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
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def check_envelope(value: str) -> Envelope:
    if value not in ENVELOPES:
        raise ConfigurationError(f"envelope must be one of {ENVELOPES}, not {value!r}")
    return value  # type: ignore[return-value,unused-ignore]


def check_header_families(values: Iterable[str]) -> frozenset[str]:
    families = frozenset(v.lower() for v in values)
    unknown = families - set(HEADER_FAMILIES)
    if unknown:
        raise ConfigurationError(
            f"rate_limit_headers: unknown {sorted(unknown)}; choose from {HEADER_FAMILIES}"
        )
    return families


def retry_after(seconds: float) -> bytes:
    """A `Retry-After` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds))).encode()
