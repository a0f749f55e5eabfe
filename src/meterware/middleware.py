"""`MeterwareMiddleware`: the pure ASGI middleware.

A request's path, top to bottom in `__call__`; each step gives a result, or a refusal
that is sent at once:

1. pass through what is neither HTTP nor a WebSocket, the exempt paths, and apps that
   authenticate on their own (`meterware_exempt`: the admin app, the metrics app, the
   usage page; they find the runtime in the scope);
2. authenticate: the key's caller (401 when missing, malformed, unknown, revoked or
   expired; 503 when the store is needed and down);
3. plan: the caller's limits (403 for a tier the table does not know);
4. route: the endpoint and its declared cost (403 for a site_access key on another site);
5. the usage endpoint (and apps marked `meterware_unmetered`: a mounted `UsageApp`,
   the self-serve `KeysApp`) is answered here: rate-limited, never counted or charged;
6. admit: per-minute window (429), monthly quota (429), monthly credits (402);
7. run the host's app with the rate-limit headers, then settle the call: charge its
   credits if it succeeded, give them back if not.

Every response to an authenticated request carries the rate-limit headers. A WebSocket
goes the same way: refused before it is accepted (an HTTP response through the ASGI
denial-response extension when the server offers it, else a close with code 1008); an
admitted connection counts as one request, and is charged its route's `@cost` once
accepted (with status 101 for the `charge` rule), the rate-limit headers on the accept.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterware import responses
from meterware.admission import Hold
from meterware.clock import Clock, system_clock
from meterware.config import DEFAULT_EXEMPT_PATHS, ChargeRule, Settings
from meterware.keys import Caller, KeyResolver
from meterware.metrics import Metrics
from meterware.notices import Hook
from meterware.openapi import document_openapi
from meterware.responses import OUTCOME_OF, Denial, Envelope, merge_headers, route_path
from meterware.runtime import RUNTIME_KEY, SCOPE_KEY, Call, Runtime
from meterware.storage import Storage
from meterware.tiers import TierTable
from meterware.usage import UsageApp, UsageFormat
from meterware.webhooks import WebhookEndpoint, endpoints_from_env

__all__ = ["MeterwareMiddleware"]


class MeterwareMiddleware:
    """Authenticate, limit and meter every HTTP request of the wrapped app.

    `app.add_middleware(MeterwareMiddleware, storage="sqlite:///meterware.db")`.
    Every option is keyword-only; the README lists them all.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        storage: str | Storage | None = None,
        resolver: KeyResolver | None = None,
        tiers: TierTable | Mapping[str, Mapping[str, int | None]] | None = None,
        key_headers: Iterable[str] = ("x-api-key",),
        bearer: bool = True,
        key_prefix: str = "mw_",
        pepper: str | bytes | None = None,
        key_refresh: float = 1.0,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
        website_param: str = "website_id",
        envelope: Envelope | None = None,
        rate_limit_storage: str | None = None,
        limit_by: Literal["key", "account"] | None = None,
        rate_limit_by: Literal["key", "account"] | None = None,
        rate_limit_headers: Iterable[str] = ("x-ratelimit", "ietf"),
        default_cost: int = 0,
        charge: Collection[int] | ChargeRule | None = None,
        usage_path: str | None = None,
        usage_format: UsageFormat = "quota",
        flush_interval: float = 0.5,
        flush_batch: int = 10_000,
        max_pending: int = 100_000,
        quota_block: int = 1000,
        lease_idle: float = 60.0,
        fail_open: bool | Collection[str] = ("rate_limit",),
        storage_timeout: float = 1.0,
        probe_interval: float = 1.0,
        outbox: bool | None = None,
        metrics: Metrics | None = None,
        on_notice: Hook | None = None,
        webhooks: Sequence[WebhookEndpoint] | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.app = app
        settings = Settings.resolve(
            key_headers=key_headers, bearer=bearer, key_prefix=key_prefix, pepper=pepper,
            key_refresh=key_refresh, exempt_paths=exempt_paths, website_param=website_param,
            envelope=envelope, rate_limit_storage=rate_limit_storage,
            limit_by=limit_by, rate_limit_by=rate_limit_by,
            rate_limit_headers=rate_limit_headers,
            default_cost=default_cost, charge=charge, usage_path=usage_path,
            usage_format=usage_format, flush_interval=flush_interval, flush_batch=flush_batch,
            max_pending=max_pending, quota_block=quota_block, lease_idle=lease_idle,
            fail_open=fail_open, storage_timeout=storage_timeout, probe_interval=probe_interval,
            outbox=outbox,
        )  # fmt: skip
        self.runtime = Runtime(
            settings,
            storage=storage,
            resolver=resolver,
            tiers=tiers,
            clock=clock,
            routes_of=self._routes,
            metrics=metrics,
            on_notice=on_notice,
            webhooks=endpoints_from_env() if webhooks is None else webhooks,
        )
        self.usage_app = UsageApp(settings.usage_format)
        self._documented = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._documented:
            self._documented = True
            document_openapi(scope.get("app"), self.runtime.settings)
        if scope["type"] not in ("http", "websocket"):
            if scope["type"] == "lifespan":
                return await self._lifespan(scope, receive, send)
            return await self.app(scope, receive, send)
        rt = self.runtime
        path = route_path(scope)
        if path in rt.settings.exempt_paths:
            return await self.app(scope, receive, send)
        if not rt.started:
            await rt.start()
        now = rt.clock()
        route = rt.costs.lookup(scope)
        if getattr(route.endpoint, "meterware_exempt", False):  # it authenticates on its own
            scope[RUNTIME_KEY] = rt
            return await self.app(scope, receive, send)
        action = route.cost.action

        caller = await rt.authenticate(scope["headers"], now)
        if isinstance(caller, Denial):
            return await self._deny(scope, receive, send, caller, now, None, action)
        plan = rt.plan(caller)
        if isinstance(plan, Denial):
            return await self._deny(scope, receive, send, plan, now, caller, action)
        site = route.path_params.get(rt.settings.website_param)
        if (
            caller.permission == "site_access"
            and site is not None
            and str(site) != caller.website_id
        ):
            denial = Denial(responses.FORBIDDEN_SITE, rt.admission.headers(plan, now))
            return await self._deny(scope, receive, send, denial, now, caller, action)
        call = Call(caller, rt)
        scope[SCOPE_KEY] = call
        scope.setdefault("state", {})["meterware"] = caller

        # The usage endpoint and the self-serve keys: rate-limited, never counted.
        unmetered = getattr(route.endpoint, "meterware_unmetered", False)
        if (unmetered or path == rt.settings.usage_path) and scope["type"] == "http":
            limited = await rt.admission.rate_limit(plan, now)
            if limited is not None:
                return await self._deny(scope, receive, send, limited, now, caller, action)
            rt.observe("admitted", caller, action, now)
            call.headers = rt.admission.headers(plan, now)
            if unmetered:  # routed by the app as usual (it may be mounted, or redirect)
                return await self.app(scope, receive, _with_headers(send, call.headers))
            return await self.usage_app(scope, receive, send)

        hold = await rt.admission.admit(plan, route.cost, now)
        if isinstance(hold, Denial):
            return await self._deny(scope, receive, send, hold, now, caller, action)
        rt.observe("failed_open" if hold.failed_open else "admitted", caller, action, now)
        call.cost, call.credits = route.cost, route.cost.credits
        await self._run_metered(scope, receive, send, hold, call)

    async def _run_metered(
        self, scope: Scope, receive: Receive, send: Send, hold: Hold, call: Call
    ) -> None:
        """Run the host's app with the rate-limit headers on its response (or its
        WebSocket accept), then settle: the status it answered (101 for an accepted
        WebSocket), or None if it raised or the client left before it answered."""
        websocket = scope["type"] == "websocket"
        starts = "websocket.accept" if websocket else "http.response.start"
        status: int | None = None
        disconnected = False

        async def receive_watching() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect" and status is None:
                disconnected = True
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == starts:
                status = 101 if websocket else message["status"]
                message["headers"] = merge_headers(message.get("headers", ()), hold.headers)
            await send(message)

        finished = False
        try:
            await self.app(scope, receive_watching, send_with_headers)
            finished = True
        finally:
            # An accepted WebSocket is charged, however it ends.
            final = status if (finished or websocket) and not disconnected else None
            hold.settle(final, call.credits)

    async def _deny(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        denial: Denial,
        now: float,
        caller: Caller | None,
        action: str,
    ) -> None:
        envelope = self.runtime.settings.envelope
        refusal, headers = denial.refusal, denial.headers
        self.runtime.observe(OUTCOME_OF[refusal.code], caller, action, now)
        if scope["type"] == "http":
            return await responses.send_refusal(send, envelope, refusal, now, headers)
        offered = "websocket.http.response" in scope.get("extensions", {})
        await responses.refuse_websocket(
            receive, send, envelope, refusal, now, headers, http_response=offered
        )

    def _routes(self, scope: Scope) -> Any:
        return getattr(scope.get("app"), "routes", None) or getattr(self.app, "routes", None)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the runtime on startup and stop it on shutdown, around the app's own
        lifespan; complete the protocol for an app that does not speak it."""
        first = await receive()
        if first["type"] == "lifespan.startup":
            try:
                await self.runtime.start()
            except Exception as exc:
                # as Starlette's router does: report the failure, then raise it
                await send({"type": "lifespan.startup.failed", "message": f"meterware: {exc}"})
                raise

        pending: list[Message] = [first]
        sent: set[str] = set()

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        async def send_then_stop(message: Message) -> None:
            sent.add(message["type"])
            if message["type"] in _LIFESPAN_ENDS:
                await self.runtime.stop()
            await send(message)

        try:
            await self.app(scope, replay, send_then_stop)
        except Exception:
            if sent:  # the app speaks lifespan and failed in it: as it reported
                raise
        if not sent:
            # The wrapped app does not speak lifespan (a raw ASGI app): meterware still
            # needs its startup and its graceful shutdown, so it completes the protocol.
            await send({"type": "lifespan.startup.complete"})
            while (await replay())["type"] != "lifespan.shutdown":
                pass
            await self.runtime.stop()
            await send({"type": "lifespan.shutdown.complete"})


_LIFESPAN_ENDS = (
    "lifespan.startup.failed",
    "lifespan.shutdown.complete",
    "lifespan.shutdown.failed",
)


def _with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """`send`, adding the rate-limit headers to the response (unless it has them)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = merge_headers(message.get("headers", ()), headers)
        await send(message)

    return sending
