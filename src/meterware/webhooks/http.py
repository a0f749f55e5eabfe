"""Webhook attempts over HTTP: one POST of a signed notice and what it got (`Attempt`),
and `send_once`, the test of an endpoint.

It imports the endpoints; `httpx` only when a notice is posted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from meterware.storage.records import Notice
from meterware.version import __version__
from meterware.webhooks.endpoints import WebhookEndpoint, _require, signed_request

if TYPE_CHECKING:
    import httpx

__all__ = ["Attempt", "send_once"]

RETRIED_4XX = frozenset({408, 409, 429})
MAX_ANSWER = 65_536  # bytes of an answer's body read (more: the connection is dropped)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt got: the HTTP `status` (None: no answer, then `error` says why),
    and the `retry-after` it asked for, in seconds."""

    status: int | None
    error: str | None = None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def refused(self) -> bool:
        """A 4xx that is not worth retrying for long (not 408, 409 or 429)."""
        status = self.status
        return status is not None and 400 <= status < 500 and status not in RETRIED_4XX

    def describe(self) -> str:
        return f"HTTP {self.status}" if self.status is not None else str(self.error)


class _Poster:
    """One httpx client; each POST, its answer's status and headers within `timeout`
    seconds. The answer's body is read (to keep the connection) in what is left of
    them, and does not matter: a 2xx whose body breaks off is a 2xx."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> Attempt:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout, headers={"user-agent": f"meterware/{__version__}"}
            )
        request = self._client.build_request("POST", url, headers=headers, content=body)
        deadline = time.monotonic() + self.timeout
        try:
            response = await asyncio.wait_for(self._client.send(request, stream=True), self.timeout)
        except asyncio.TimeoutError:
            return Attempt(None, f"no answer within {self.timeout:g} s")
        except (httpx.HTTPError, OSError) as exc:
            return Attempt(None, f"{type(exc).__name__}: {exc}"[:300])
        attempt = Attempt(response.status_code, None, _retry_after(response.headers))
        try:
            left = max(0.0, deadline - time.monotonic())
            await asyncio.wait_for(_drain(response), left)
        except (asyncio.TimeoutError, httpx.HTTPError, OSError):
            pass
        finally:
            await response.aclose()
        return attempt

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


async def _drain(response: httpx.Response) -> None:
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > MAX_ANSWER:
            return


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


async def send_once(
    endpoint: WebhookEndpoint,
    notice: Notice,
    *,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> Attempt:
    """Send one notice to one endpoint, once, nothing stored (a test of the endpoint)."""
    _require()
    poster = _Poster(timeout)
    try:
        headers, body = signed_request(endpoint, notice, int(clock()))
        return await poster.post(endpoint.url, headers, body)
    finally:
        await poster.aclose()
