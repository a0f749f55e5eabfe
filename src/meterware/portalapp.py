"""`PortalApp`: serves an account's usage page to the browser that holds a signed link.

```python
app.mount("/portal", PortalApp())  # links from Admin.portal_link / meterware portal-link
```

`GET /?token=...`: the page of the account the token names (`meterware.portal`), or a
401 page for a token that is missing, tampered with or expired; 503 when no secret is
configured (`secret`, else `METERWARE_PORTAL_SECRET`). Behind `MeterwareMiddleware` it is
exempt from API keys (the link is the access) and reads the middleware's store, tiers and
`limit_by`; without it, it opens `storage` for each request, as `AdminApp` does. Every
page goes with the strict Content-Security-Policy of `meterware.portal.PAGE_HEADERS`.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import QueryParams
from starlette.types import Receive, Scope, Send

from meterware import config, portal
from meterware.admin import Admin
from meterware.clock import Clock, system_clock
from meterware.errors import NotFound, StorageError
from meterware.responses import serve_lifespan
from meterware.runtime import RUNTIME_KEY, Runtime
from meterware.storage import Storage
from meterware.tiers import TierTable

__all__ = ["PortalApp"]


class PortalApp:
    """The usage page (see module doc).

    - `secret` - what links are signed with (at least 16 bytes). Defaults to
      `METERWARE_PORTAL_SECRET`.
    - `days` - the days the chart covers. Defaults to 90.
    - `storage`, `tiers`, `clock` - used when no middleware is in front.
    """

    meterware_action = "portal"  # its action in metrics and the ledger
    meterware_exempt = True  # the signed link is the access: no API key

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        days: int = 90,
        storage: str | Storage | None = None,
        tiers: TierTable | Mapping[str, Mapping[str, int | None]] | None = None,
        clock: Clock = system_clock,
    ) -> None:
        given = secret if secret is not None else config.env("PORTAL_SECRET")
        self.secret = given.encode() if isinstance(given, str) else given
        self.days = days
        self._storage, self._tiers, self._clock = storage, tiers, clock

    def __repr__(self) -> str:
        return f"PortalApp(days={self.days})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own
            return await serve_lifespan(receive, send)
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            return await _send(send, 405, portal.render_denied("Only GET is served here."))
        if not self.secret:
            page = portal.render_denied("The usage page is not configured on this server.")
            return await _send(send, 503, page)
        runtime = scope.get(RUNTIME_KEY)
        if isinstance(runtime, Runtime) and self._storage is None:
            return await self._page(scope, send, runtime.admin)
        async with Admin(self._storage, tiers=self._tiers, clock=self._clock) as admin:
            await self._page(scope, send, admin)

    async def _page(self, scope: Scope, send: Send, admin: Admin) -> None:
        assert self.secret is not None
        token = QueryParams(scope.get("query_string", b"").decode("latin-1")).get("token", "")
        account_id = portal.verify_token(token, secret=self.secret, now=admin.clock())
        if account_id is None:
            return await _send(send, 401, portal.render_denied())
        try:
            data = await admin.portal_data(account_id, days=self.days)
        except NotFound:  # a link to an account that is gone
            return await _send(send, 401, portal.render_denied())
        except StorageError:
            page = portal.render_denied("Usage is unavailable right now: try again shortly.")
            return await _send(send, 503, page, retry=True)
        await _send(send, 200, portal.render_page(data))


async def _send(send: Send, status: int, page: str, *, retry: bool = False) -> None:
    body = page.encode()
    headers = [(k.lower().encode(), v.encode()) for k, v in portal.PAGE_HEADERS]
    headers.append((b"content-length", b"%d" % len(body)))
    if retry:
        headers.append((b"retry-after", b"5"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
