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
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from starlette.types import Receive, Send

from meterware.clock import isoformat_ms

__all__ = [
    "Denial",
    "Envelope",
    "HeaderParts",
    "RateLimitHeaders",
    "Refusal",
    "error_handlers",
    "render_json",
    "route_path",
]

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
INSUFFICIENT_CREDITS = Refusal(
    402,
    "INSUFFICIENT_CREDITS",
    "Not enough credits: the monthly allowance and prepaid balance cannot cover this call",
)
STORAGE_UNAVAILABLE = Refusal(503, "STORAGE_UNAVAILABLE", "Usage storage is unavailable")
BAD_DAYS = Refusal(400, "BAD_REQUEST", "days must be an integer from 1 to 90")
BAD_KEY_ID = Refusal(400, "BAD_REQUEST", "keyId is not a valid key id")
KEY_NOT_FOUND = Refusal(404, "NOT_FOUND", "API key not found")
NOT_ALLOWED = Refusal(405, "METHOD_NOT_ALLOWED", "Method not allowed")

RETRY_STORAGE = (b"retry-after", b"5")

OUTCOME_OF = {
    "UNAUTHORIZED": "unauthorized",
    "FORBIDDEN": "forbidden",
    "RATE_LIMITED": "rate_limited",
    "QUOTA_EXCEEDED": "quota_exceeded",
    "INSUFFICIENT_CREDITS": "insufficient_credits",
    "STORAGE_UNAVAILABLE": "unavailable",
}
"""The outcome (metrics, ledger) of each refusal code the middleware sends."""


def route_path(scope: Mapping[str, Any]) -> str:
    """The request's path inside the app at hand (without a mount's `root_path`), as
    Starlette's router sees it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """Complete the ASGI lifespan protocol for an app with nothing to start or stop
    (served on its own rather than mounted)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            return await send({"type": "lifespan.shutdown.complete"})


def display_header(header: str) -> str:
    """`x-api-key` -> `X-API-Key`; a name given with capitals is kept as given."""
    if header != header.lower():
        return header
    parts = header.split("-")
    return "-".join(p.upper() if p in ("api", "id") else p.capitalize() for p in parts)


def challenges(key_headers: Iterable[str], bearer: bool) -> Headers:
    """The `WWW-Authenticate` headers of a 401 (RFC 9110 §11.6.1): one challenge per way
    a key may be presented, `Bearer` for the `Authorization` header and `ApiKey` (with
    the header's name) for each key header."""
    found: Headers = []
    if bearer:
        found.append((b"www-authenticate", b'Bearer realm="api"'))
    for name in key_headers:
        value = f'ApiKey realm="api", header="{display_header(name)}"'.encode("latin-1")
        found.append((b"www-authenticate", value))
    return found


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


async def refuse_websocket(
    receive: Receive,
    send: Send,
    envelope: Envelope,
    refusal: Refusal,
    now: float,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    http_response: bool,
) -> None:
    """Refuse a WebSocket before it is accepted: with an HTTP response when the server
    offers the ASGI WebSocket denial-response extension (`http_response`), else with a
    close (code 1008, policy violation) carrying the refusal's message."""
    await receive()  # the client's websocket.connect
    if not http_response:
        await send({"type": "websocket.close", "code": 1008, "reason": refusal.message})
        return
    body = error_body(envelope, refusal, now)
    await send(
        {
            "type": "websocket.http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                *headers,
            ],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


def retry_after(seconds: float) -> tuple[bytes, bytes]:
    """A `Retry-After` header: whole seconds, rounded up, at least 1."""
    return (b"retry-after", b"%d" % max(1, math.ceil(seconds)))


@dataclass(frozen=True, slots=True)
class HeaderParts:
    """What a caller's rate-limit headers share for a whole billing period: the limits,
    the `X-RateLimit-Limit` and the `RateLimit-Policy` headers."""

    per_minute: int | None
    month_limit: int | None
    x_limit: tuple[bytes, bytes] | None
    policy: tuple[bytes, bytes] | None


class RateLimitHeaders:
    """Builds the rate-limit headers of one response from the caller's current numbers."""

    def __init__(self, families: Iterable[str] = HEADER_FAMILIES, window: int = 60) -> None:
        families = frozenset(families)
        self.x_ratelimit = "x-ratelimit" in families
        self.ietf = "ietf" in families
        self.window = window

    def parts(
        self, per_minute: int | None, month_limit: int | None, month_length: int
    ) -> HeaderParts:
        """The parts that stay the same for these limits and a month of this length."""
        x_limit = None
        if per_minute is not None and self.x_ratelimit:
            x_limit = (b"x-ratelimit-limit", b"%d" % per_minute)
        policies = []
        if per_minute is not None:
            policies.append(f'"minute";q={per_minute};w={self.window}')
        if month_limit is not None:
            policies.append(f'"month";q={month_limit};w={month_length}')
        policy = (b"ratelimit-policy", ", ".join(policies).encode()) if policies else None
        return HeaderParts(per_minute, month_limit, x_limit, policy if self.ietf else None)

    def build(
        self,
        parts: HeaderParts,
        minute_left: int,
        minute_reset: float,
        month_left: int,
        month_end: float,
        now: float,
    ) -> Headers:
        """The headers for a caller with these limits (`parts`) and numbers."""
        headers: Headers = []
        if parts.x_limit is not None:
            headers = [
                parts.x_limit,
                (b"x-ratelimit-remaining", b"%d" % minute_left),
                (b"x-ratelimit-reset", b"%d" % math.ceil(minute_reset)),
            ]
        if parts.policy is None:
            return headers
        # One format per RateLimit value: the windows in force, remaining and seconds left.
        if parts.per_minute is not None:
            minute_t = math.ceil(minute_reset - now)
            if parts.month_limit is not None:
                value = b'"minute";r=%d;t=%d, "month";r=%d;t=%d' % (
                    minute_left, minute_t if minute_t > 0 else 0,
                    month_left if month_left > 0 else 0, math.ceil(month_end - now),
                )  # fmt: skip
            else:
                value = b'"minute";r=%d;t=%d' % (minute_left, minute_t if minute_t > 0 else 0)
        else:
            left = month_left if month_left > 0 else 0
            value = b'"month";r=%d;t=%d' % (left, math.ceil(month_end - now))
        headers.append(parts.policy)
        headers.append((b"ratelimit", value))
        return headers


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


def error_handlers(envelope: Envelope) -> dict[Any, Any]:
    """Exception handlers for a Starlette or FastAPI app (its `exception_handlers=`, or
    `app.add_exception_handler`) that answer the app's own errors in `envelope`, as
    meterware answers its refusals: `HTTPException` (unknown paths, methods, the
    handlers' own 404s), FastAPI's validation errors (a 400, as the reference APIs have
    it) and unexpected exceptions (a 500 that reveals nothing)."""
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response

    def answer(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
        refusal = Refusal(status, HTTPStatus(status).name, message)
        body = error_body(envelope, refusal, time.time())
        return Response(body, status, headers=headers, media_type="application/json")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return answer(exc.status_code, str(exc.detail), exc.headers)

    async def invalid(request: Request, exc: Exception) -> Response:
        errors: list[dict[str, Any]] = getattr(exc, "errors", list)()
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in errors[:3])
        return answer(400, f"Invalid request: {where}" if where else "Invalid request")

    async def crashed(request: Request, exc: Exception) -> Response:
        return answer(500, "Internal server error")

    handlers: dict[Any, Any] = {HTTPException: http_error, Exception: crashed}
    try:
        from fastapi.exceptions import RequestValidationError
    except ImportError:  # not a FastAPI app
        pass
    else:
        handlers[RequestValidationError] = invalid
    return handlers
