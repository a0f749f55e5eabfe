"""`MeterwareMiddleware`: the pure ASGI middleware.

A request's path, top to bottom in `__call__`:

1. pass through what is not HTTP, and the exempt paths;
2. resolve the key (401 when missing, malformed, unknown, revoked or expired);
3. find the route and its declared cost (403 for a site_access key on another site);
4. per-minute limit (429 RATE_LIMITED);
5. the usage endpoint is answered here: rate-limited, never counted or charged;
6. monthly request quota (429 QUOTA_EXCEEDED), then monthly credits (402);
7. run the host's app; count the request, and charge its credits if it succeeded.

Every response to an authenticated request carries the rate-limit headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from math import ceil
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterware import responses
from meterware.clock import Clock, MonthPeriod, system_clock
from meterware.errors import ConfigurationError, StorageError
from meterware.keys import Caller, KeyExtractor, KeyResolver, SecretHasher, StoreResolver
from meterware.limits import (
    LocalWindows,
    MinuteResult,
    PeriodCache,
    QuotaCounter,
    credits_counter,
    requests_counter,
    windows_from,
)
from meterware.metering import SCOPE_KEY, Call, Meter, RouteCosts
from meterware.openapi import document_openapi
from meterware.responses import Refusal, retry_after
from meterware.storage import Storage, storage_from_url
from meterware.tiers import Limits, TierTable
from meterware.usage import ENVELOPE_OF, UsageApp, UsageFormat

__all__ = ["DEFAULT_EXEMPT_PATHS", "MeterwareMiddleware"]

log = logging.getLogger("meterware")

DEFAULT_STORAGE = "sqlite:///meterware.db"
DEFAULT_EXEMPT_PATHS = ("/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
ChargeRule = Callable[[int], bool]


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
        envelope: responses.Envelope | None = None,
        rate_limit_storage: str | None = None,
        rate_limit_by: Literal["key", "account"] = "key",
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
        clock: Clock = system_clock,
    ) -> None:
        self.app = app
        self.clock = clock
        if storage is None:
            storage = os.environ.get("METERWARE_STORAGE") or DEFAULT_STORAGE
        self._owns_store = isinstance(storage, str)
        self.store = storage_from_url(storage) if isinstance(storage, str) else storage
        self.tiers = TierTable.coerce(tiers)
        self.hasher = SecretHasher(
            prefix=key_prefix,
            pepper=pepper if pepper is not None else os.environ.get("METERWARE_PEPPER"),
        )
        self.key_headers = tuple(key_headers)
        self.bearer = bearer
        self.extract = KeyExtractor(self.key_headers, bearer=bearer)
        self.key_cache = (
            None if resolver is not None else StoreResolver(self.store, self.hasher, clock)
        )
        self.resolve: KeyResolver = resolver if resolver is not None else self.key_cache  # type: ignore[assignment]
        self._cached: Callable[[str, float], Caller | None] = (
            self.key_cache.cached if self.key_cache is not None else _no_cache
        )
        if key_refresh <= 0:
            raise ConfigurationError("key_refresh must be > 0 seconds")
        self.key_refresh = key_refresh
        self.exempt = frozenset(exempt_paths)
        self.website_param = website_param
        if rate_limit_by not in ("key", "account"):
            raise ConfigurationError("rate_limit_by must be 'key' or 'account'")
        self.rate_limit_by = rate_limit_by
        if rate_limit_storage is None:
            rate_limit_storage = os.environ.get("METERWARE_RATE_LIMIT_STORAGE") or None
        self.fail_open = _concerns(fail_open)
        self._outages: set[str] = set()
        self.windows = windows_from(
            rate_limit_storage, clock, fail_open="rate_limit" in self.fail_open
        )
        self._local_windows = self.windows if isinstance(self.windows, LocalWindows) else None
        families = responses.check_header_families(rate_limit_headers)
        self._x_headers = "x-ratelimit" in families
        self._ietf_headers = "ietf" in families
        self._plans: dict[int, _Plan] = {}
        self.costs = RouteCosts(default_cost, routes_of=self._routes)
        self.charge_rule = _charge_rule(charge)
        self.usage_path = usage_path
        self.usage_app = UsageApp(usage_format)
        self.envelope = responses.check_envelope(envelope or ENVELOPE_OF[usage_format])
        self.periods = PeriodCache()
        self.meter = Meter(
            self.store,
            clock=clock,
            flush_interval=flush_interval,
            flush_batch=flush_batch,
            max_pending=max_pending,
        )
        self.quota = QuotaCounter(
            self.store,
            clock=clock,
            max_block=quota_block,
            lease_idle=lease_idle,
            defer=self.meter.count,
        )
        self._policies: dict[tuple[int | None, int | None, int], bytes] = {}
        self._started = False
        self._starting: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._documented = False
        self._stopping = False

    # -- the request path --------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._documented:
            self._document(scope.get("app"))
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                return await self._lifespan(scope, receive, send)
            return await self.app(scope, receive, send)
        path = _route_path(scope)
        if path in self.exempt:
            return await self.app(scope, receive, send)
        if not self._started:
            await self.start()
        now = self.clock()

        # 2. who is calling (a cached key: no I/O, no await)
        secret = self.extract(scope["headers"])
        caller = None
        if secret is not None:
            caller = self._cached(secret, now)
            if caller is None:
                try:
                    caller = await self.resolve(secret)
                except StorageError as exc:
                    return await self._unavailable(scope, send, exc)
        if caller is None:
            return await self._refuse(send, responses.UNAUTHORIZED, now)
        plan = self._plans.get(id(caller))
        if plan is None or plan.caller is not caller:
            try:
                plan = self._plan_of(caller)
            except ConfigurationError:
                log.error("key %s has tier %r, unknown to the tiers", caller.key_id, caller.tier)
                return await self._refuse(send, responses.FORBIDDEN_TIER, now)
        limits = plan.limits
        period = plan.period
        if period is None or not period.start <= now < period.end:
            period = plan.period = self.periods.get(now, limits.anchor_day)

        # 3. where it is going
        route = self.costs.lookup(scope)
        is_usage = path == self.usage_path or isinstance(route.endpoint, UsageApp)
        if caller.permission == "site_access":
            site = route.path_params.get(self.website_param)
            if site is not None and str(site) != caller.website_id:
                headers = self._headers(plan, None, now, period)
                return await self._refuse(send, responses.FORBIDDEN_SITE, now, headers)

        # 4. per-minute limit
        minute = None
        if limits.per_minute is not None:
            try:
                if self._local_windows is not None:
                    minute = self._local_windows.hit_now(
                        plan.minute_subject, limits.per_minute, now
                    )
                else:
                    minute = await self.windows.hit(plan.minute_subject, limits.per_minute)
            except StorageError as exc:  # the shared windows failed and fail closed
                return await self._unavailable(scope, send, exc)
            if not minute.allowed:
                headers = self._headers(plan, minute, now, period)
                headers.append((b"retry-after", retry_after(minute.reset_at - now)))
                return await self._refuse(send, responses.RATE_LIMITED, now, headers)

        # 5. the usage endpoint
        call = Call(caller, self)
        scope[SCOPE_KEY] = call
        scope.setdefault("state", {})["meterware"] = caller
        if is_usage:
            call.headers = self._headers(plan, minute, now, period)
            usage_app = route.endpoint if isinstance(route.endpoint, UsageApp) else self.usage_app
            return await usage_app(scope, receive, send)

        # 6. monthly quota, then monthly credits
        quota = self.quota
        credits = route.cost.credits
        held = 0
        took: bool | None = None
        try:
            took = quota.take_now(
                plan.requests, period.id, 1, limits.monthly_requests, now
            ) or await self._take("quota", plan.requests, period.id, 1, limits.monthly_requests)
            if took is False:
                headers = self._headers(plan, minute, now, period)
                headers.append((b"retry-after", retry_after(period.end - now)))
                return await self._refuse(send, responses.QUOTA_EXCEEDED, now, headers)
            if credits:
                got = quota.take_now(
                    plan.credits, period.id, credits, limits.monthly_credits, now
                ) or await self._take(
                    "credits", plan.credits, period.id, credits, limits.monthly_credits
                )
                if got is False:
                    if took:
                        quota.give_back(plan.requests, period.id, 1, limits.monthly_requests)
                    headers = self._headers(plan, minute, now, period)
                    return await self._refuse(send, responses.INSUFFICIENT_CREDITS, now, headers)
                held = credits if got else 0
        except StorageError as exc:
            if took:  # the credits check failed closed: this request does not count
                quota.give_back(plan.requests, period.id, 1, limits.monthly_requests)
            return await self._unavailable(scope, send, exc)

        # 7. the host's app, metered
        call.cost, call.credits = route.cost, credits
        self.meter.admitted(caller.key_id, now)
        extra = self._headers(plan, minute, now, period)
        status = 0
        disconnected = False

        async def receive_watching() -> Message:
            nonlocal disconnected
            message = await receive()
            if message["type"] == "http.disconnect" and not status:
                disconnected = True
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = _merge_headers(message.get("headers", ()), extra)
            await send(message)

        succeeded = False
        try:
            await self.app(scope, receive_watching, send_with_headers)
            succeeded = True
        finally:
            final = call.credits
            if final and not (
                succeeded and status and not disconnected and self.charge_rule(status)
            ):
                final = 0
            if final and call.cost is not None:
                self.meter.charge(caller.account_id, caller.key_id, call.cost, final, now)
            if final < held:
                quota.give_back(plan.credits, period.id, held - final, limits.monthly_credits)
            elif final > held:
                await self._charge_more(plan, period.id, final - held)

    async def _charge_more(self, plan: _Plan, period: str, extra: int) -> None:
        """Count credits a handler added at run time (beyond what was held)."""
        try:
            await self.quota.force(plan.credits, period, extra, plan.limits.monthly_credits)
        except StorageError as exc:
            log.warning("could not count %d extra credits: %s", extra, exc)

    # -- helpers of the request path ---------------------------------------------------

    async def _take(
        self, concern: str, counter: str, period: str, amount: int, limit: int | None
    ) -> bool | None:
        """Take quota units: True or False as the store says; None when the store failed
        and this concern fails open (the request passes uncounted)."""
        try:
            taken = await self.quota.take(counter, period, amount, limit)
        except StorageError as exc:
            if concern not in self.fail_open:
                raise
            if concern not in self._outages:
                self._outages.add(concern)
                log.warning(
                    "storage failed: admitting requests without %s checks: %s", concern, exc
                )
            return None
        if self._outages:
            self._outages.discard(concern)
        return taken

    def _routes(self, scope: Scope) -> Any:
        return getattr(scope.get("app"), "routes", None) or getattr(self.app, "routes", None)

    def quota_subject(self, caller: Caller) -> str:
        return caller.subject

    def _headers(
        self, plan: _Plan, minute: MinuteResult | None, now: float, period: MonthPeriod
    ) -> list[tuple[bytes, bytes]]:
        """The rate-limit headers for this caller's current numbers.

        What stays the same for a caller (the limit, the policy, a window's reset) is
        built once and reused; per request only the remaining counts and seconds are
        formatted."""
        limits = plan.limits
        if minute is None and limits.per_minute is not None:
            minute = self.windows.peek(plan.minute_subject, limits.per_minute)
        headers: list[tuple[bytes, bytes]] = []
        if minute is not None and self._x_headers:
            if plan.reset_at != minute.reset_at:  # once per window
                plan.reset_at = minute.reset_at
                plan.reset = (b"x-ratelimit-reset", b"%d" % ceil(minute.reset_at))
            headers = [
                plan.x_limit,
                (b"x-ratelimit-remaining", b"%d" % minute.remaining),
                plan.reset,
            ]
        if not self._ietf_headers:
            return headers
        month_limit = limits.monthly_requests
        if minute is not None:
            minute_t = ceil(minute.reset_at - now)
            minute_t = minute_t if minute_t > 0 else 0  # < 0 only for a stale shared peek
            if month_limit is not None:
                left = month_limit - self.quota.estimate(plan.requests, period.id)
                value = b'"minute";r=%d;t=%d, "month";r=%d;t=%d' % (
                    minute.remaining, minute_t, left if left > 0 else 0, ceil(period.end - now)
                )  # fmt: skip
            else:
                value = b'"minute";r=%d;t=%d' % (minute.remaining, minute_t)
        elif month_limit is not None:
            left = month_limit - self.quota.estimate(plan.requests, period.id)
            value = b'"month";r=%d;t=%d' % (left if left > 0 else 0, ceil(period.end - now))
        else:
            return headers
        if plan.policy_period is not period:  # once per caller and billing period
            plan.policy = (b"ratelimit-policy", self._policy(limits, period.length))
            plan.policy_period = period
        headers += (plan.policy, (b"ratelimit", value))
        return headers

    def _plan_of(self, caller: Caller) -> _Plan:
        """What the request path needs to know of a caller, worked out once per caller
        object (the key cache returns the same object for every request of a key) and
        kept in `_plans` under the object's id."""
        subject = self.quota_subject(caller)
        limits = self.tiers.limits_for(caller)
        plan = _Plan(
            caller=caller,
            limits=limits,
            minute_subject=caller.account_id if self.rate_limit_by == "account" else subject,
            requests=requests_counter(subject),
            credits=credits_counter(subject),
            x_limit=(b"x-ratelimit-limit", b"%d" % (limits.per_minute or 0)),
        )
        if len(self._plans) >= 100_000:
            self._plans.clear()
        self._plans[id(caller)] = plan
        return plan

    def _policy(self, limits: Limits, month_seconds: int) -> bytes:
        key = (limits.per_minute, limits.monthly_requests, month_seconds)
        policy = self._policies.get(key)
        if policy is None:
            parts = []
            if limits.per_minute is not None:
                parts.append(f'"minute";q={limits.per_minute};w={self.windows.window}')
            if limits.monthly_requests is not None:
                parts.append(f'"month";q={limits.monthly_requests};w={month_seconds}')
            policy = ", ".join(parts).encode()
            if len(self._policies) > 1024:
                self._policies.clear()
            self._policies[key] = policy
        return policy

    async def _refuse(
        self, send: Send, refusal: Refusal, now: float, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        body = responses.error_body(self.envelope, refusal, now)
        await responses.send_json(send, refusal.status, body, headers)

    async def _unavailable(self, scope: Scope, send: Send, exc: Exception) -> None:
        if "storage" not in self._outages:  # once per outage; cleared by the next flush
            self._outages.add("storage")
            log.warning("storage unavailable, answering 503: %s", exc)
        now = self.clock()
        await self._refuse(send, responses.STORAGE_UNAVAILABLE, now, [(b"retry-after", b"5")])

    def _document(self, app: Any) -> None:
        """Add meterware's security schemes, responses and usage endpoint to a FastAPI
        app's OpenAPI schema (nothing for other apps)."""
        self._documented = True
        document_openapi(
            app,
            usage_path=self.usage_path,
            usage_format=self.usage_app.format,
            envelope=self.envelope,
            exempt_paths=self.exempt,
            key_headers=self.key_headers,
            bearer=self.bearer,
            default_cost=self.costs.default,
        )

    async def labels(self) -> dict[str, str]:
        """Action labels: those recorded in storage, overridden by the routes' current ones."""
        return {**await self.store.labels(), **self.costs.labels}

    # -- lifecycle ---------------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] == "lifespan.startup":
            try:
                await self.start()
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
            if message["type"] in (
                "lifespan.startup.failed",
                "lifespan.shutdown.complete",
                "lifespan.shutdown.failed",
            ):
                await self.stop()
            await send(message)

        try:
            await self.app(scope, replay, send_then_stop)
        except Exception:
            if sent:  # the app speaks lifespan and failed in it: as it reported
                raise
        if not sent:
            # The wrapped app does not speak lifespan (a raw ASGI app): meterware still
            # needs its startup and its graceful shutdown, so it completes the protocol.
            await self._own_lifespan(replay, send)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        await send({"type": "lifespan.startup.complete"})
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        await self.stop()
        await send({"type": "lifespan.shutdown.complete"})

    async def start(self) -> None:
        """Open storage, check the tiers of stored keys, start the background task.

        Called on lifespan startup, or by the first request where there is no lifespan.
        """
        if self._started:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._started:
                return
            if not self.store.opened:
                await self.store.open()
            else:
                self._owns_store = False
            unknown = {t for t in await self.store.key_tiers() if not _known(self.tiers, t)}
            if unknown:
                raise ConfigurationError(
                    f"stored keys use tiers the tier table does not know: {sorted(unknown)}"
                )
            if self.key_cache is not None:
                await self.key_cache.start()
            self._task = asyncio.get_running_loop().create_task(self._background())
            self._started = True

    async def stop(self) -> None:
        """Flush everything, return unused quota, close what meterware opened."""
        if not self._started:
            return
        self._started = False
        if self._task is not None:
            # let the background task finish the flush it may be in, then end it
            self._stopping = True
            self.meter.wake()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=10)
            except asyncio.TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
            self._stopping = False
        for attempt in range(3):
            if await self.meter.flush():
                break
            await asyncio.sleep(0.2 * (attempt + 1))
        else:
            log.error(
                "usage could not be written at shutdown: %d aggregates lost", self.meter.pending
            )
        try:
            await self.quota.release_all()
        except StorageError as exc:
            log.warning("could not return unused quota at shutdown: %s", exc)
        await self.windows.close()
        if self._owns_store:
            await self.store.close()

    async def _background(self) -> None:
        """Flush the ledger, poll key changes, return idle quota, forget ended windows."""
        loop = asyncio.get_running_loop()
        next_poll = next_sweep = loop.time()
        while not self._stopping:
            await self.meter.wait()
            if self._stopping:
                return
            if await self.meter.flush():
                self._outages.discard("storage")
            now = loop.time()
            try:
                if self.key_cache is not None and now >= next_poll:
                    next_poll = now + self.key_refresh
                    await self.key_cache.poll()
                await self.quota.release_idle()
            except StorageError as exc:
                log.debug("background storage work failed: %s", exc)
            except Exception:
                log.exception("meterware background task error")
            if now >= next_sweep:
                next_sweep = now + 60
                self.windows.sweep()


@dataclass(slots=True)
class _Plan:
    """A caller's limits, counter names and header parts, derived once per caller."""

    caller: Caller
    limits: Limits
    minute_subject: str
    requests: str
    credits: str
    x_limit: tuple[bytes, bytes]  # the X-RateLimit-Limit header
    period: MonthPeriod | None = None  # the current billing period, as last seen
    policy: tuple[bytes, bytes] = (b"", b"")  # the RateLimit-Policy header for policy_period
    policy_period: MonthPeriod | None = None
    reset: tuple[bytes, bytes] = (b"", b"")  # the X-RateLimit-Reset header for reset_at
    reset_at: float = -1.0


def _no_cache(secret: str, now: float) -> Caller | None:
    return None


def _known(tiers: TierTable, name: str) -> bool:
    try:
        tiers.get(name)
    except ConfigurationError:
        return False
    return True


CONCERNS = ("rate_limit", "quota", "credits")


def _concerns(fail_open: bool | Collection[str]) -> frozenset[str]:
    if fail_open is True:
        return frozenset(CONCERNS)
    if fail_open is False:
        return frozenset()
    concerns = frozenset(fail_open)
    if not concerns <= set(CONCERNS):
        raise ConfigurationError(f"fail_open takes True, False or some of {CONCERNS}")
    return concerns


def _charge_rule(charge: Collection[int] | ChargeRule | None) -> ChargeRule:
    if charge is None:
        return lambda status: status < 400
    if callable(charge):
        return charge
    statuses = frozenset(charge)
    return statuses.__contains__


def _route_path(scope: Scope) -> str:
    """The request's path inside the app meterware wraps (without a mount's root_path),
    as Starlette's router sees it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _merge_headers(
    headers: Iterable[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """The response's headers plus ours, leaving out any family the app already set.
    The app's headers may be any iterable (read once); its own list is never changed."""
    merged = list(headers)
    for name, _ in merged:
        if b"atelimit" in name:  # rare: the app set rate-limit headers of its own
            return _merge_own(merged, extra)
    merged += extra
    return merged


def _merge_own(
    merged: list[tuple[bytes, bytes]], extra: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    names = [name.lower() for name, _ in merged]
    if any(name.startswith(b"x-ratelimit-") for name in names):
        extra = [h for h in extra if not h[0].startswith(b"x-ratelimit")]
    if any(name in (b"ratelimit", b"ratelimit-policy") for name in names):
        extra = [h for h in extra if h[0] not in (b"ratelimit", b"ratelimit-policy")]
    return merged + extra
