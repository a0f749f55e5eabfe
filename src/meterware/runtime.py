"""The services one app runs, their lifecycle and their background work.

A `Runtime` holds the store, the key resolver, the admission engine (windows, quota),
the ledger, the route costs, the tiers and the clock. The middleware drives requests
through it; the usage endpoint reads through it (`Call.runtime`). Each request carries
a `Call` in its scope: the caller, and what the call costs.

Its lifecycle and background work (start, stop, the flush, the key poll, upkeep, notices)
are the mixin `meterware.background.Background`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import Scope

from meterware import config, responses
from meterware.admin import Admin
from meterware.admission import Admission, Plan
from meterware.background import Background
from meterware.clock import Clock
from meterware.config import Settings
from meterware.errors import ConfigurationError, StorageError
from meterware.guard import Breaker, Guarded
from meterware.keycache import KeyCache
from meterware.keys import Caller, KeyExtractor, KeyResolver, SecretHasher
from meterware.leases import Leases
from meterware.ledger import Meter
from meterware.metering import Cost, RouteCosts, check_credits
from meterware.metrics import Metrics
from meterware.notices import Hook, Notifier
from meterware.reported import MonthViews, QuotaStatus, Subject, quota_status
from meterware.responses import Denial, Headers, RateLimitHeaders
from meterware.storage import Storage, storage_from_url
from meterware.storage.records import OUTCOME_FIELDS
from meterware.tiers import TierTable
from meterware.webhooks import WebhookEndpoint
from meterware.windows import WINDOW, window_store

__all__ = ["RUNTIME_KEY", "SCOPE_KEY", "Call", "Runtime", "get_caller", "set_cost"]

log = logging.getLogger("meterware")

CONCERN_OF = {"quota": "counters", "credits": "counters"}  # admission's -> the metric's


class Runtime(Background):
    """The services behind one middleware (see module doc)."""

    def __init__(
        self,
        settings: Settings,
        *,
        storage: str | Storage | None = None,
        resolver: KeyResolver | None = None,
        tiers: TierTable | Mapping[str, Mapping[str, int | None]] | None = None,
        clock: Clock,
        routes_of: Callable[[Scope], Iterable[Any] | None] = lambda scope: None,
        metrics: Metrics | None = None,
        on_notice: Hook | None = None,
        webhooks: Sequence[WebhookEndpoint] = (),
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self._owns_store = not isinstance(storage, Storage)
        self.store = (
            storage
            if isinstance(storage, Storage)
            # (SQLite waits this long for another process's write lock; others ignore it)
            else storage_from_url(
                config.storage_url(storage), busy_timeout=settings.storage_timeout
            )
        )
        self.tiers = TierTable.coerce(tiers)
        self.hasher = SecretHasher(prefix=settings.key_prefix, pepper=settings.pepper)
        self.extract = KeyExtractor(settings.key_headers, bearer=settings.bearer)
        unauthorized = responses.challenges(settings.key_headers, settings.bearer)
        self.unauthorized = Denial(responses.UNAUTHORIZED, unauthorized)
        self.breaker = Breaker(
            "usage storage",
            timeout=settings.storage_timeout,
            probe_every=settings.probe_interval,
        )
        guarded = Guarded(self.store, self.breaker, poll_timeout=settings.background_timeout)
        self.keys = KeyCache(guarded, self.hasher) if resolver is None else None
        self.host_resolver = resolver
        self.costs = RouteCosts(settings.default_cost, routes_of=routes_of)
        self.views = MonthViews(refresh=settings.key_refresh)
        self.meter = Meter(
            self.store,
            flush_interval=settings.flush_interval,
            flush_batch=settings.flush_batch,
            max_pending=settings.max_pending,
            on_take=self.views.mark,
            on_written=self._ledger_written,
            on_flushed=self._flushed,
            timeout=settings.background_timeout,
            outbox=settings.outbox,
            clock=clock,
        )
        self.leases = Leases(guarded, max_block=settings.quota_block)
        windows = window_store(settings.rate_limit_storage, self.store)
        if windows is self.store:  # one round trip serves the minute and the month
            self.minutes = self.leases
        else:
            breaker = Breaker(
                "rate limit storage",
                timeout=settings.storage_timeout,
                probe_every=settings.probe_interval,
            )
            timeout = settings.background_timeout
            guarded_windows = Guarded(windows, breaker, poll_timeout=timeout)
            self.minutes = Leases(guarded_windows, max_block=settings.quota_block)
        self.admission = Admission(
            self.minutes,
            self.leases,
            self.meter,
            self.views,
            RateLimitHeaders(settings.rate_limit_headers, window=WINDOW),
            fail_open=settings.fail_open,
            charge=settings.charge,
            lease_idle=settings.lease_idle,
            grants=guarded.grants,
            on_store_error=self._store_error,
            on_charge=self._charged,
            notify=self._notify,
        )
        self.notifier = Notifier(
            self.store, hook=on_notice, timeout=settings.background_timeout, clock=clock
        )
        self.admission.outages.listener = self._outage
        self.webhooks = list(webhooks)
        self._webhooks_stop = asyncio.Event()
        self._sending: asyncio.Task[None] | None = None
        self._expiries_seen = 0.0  # keys that expired before this were noticed
        self._plans: dict[int, Plan] = {}
        self._started = False
        self._starting = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- the request path --------------------------------------------------------------

    async def authenticate(
        self, headers: Iterable[tuple[bytes, bytes]], now: float
    ) -> Caller | Denial:
        """The caller behind the request's key, or the 401 (or 503) to send."""
        secret = self.extract(headers)
        if secret is None:
            return self.unauthorized
        try:
            if self.keys is not None:
                caller = await self.keys.resolve(secret, now)
            else:
                assert self.host_resolver is not None
                caller = await self.host_resolver(secret)
        except StorageError as exc:
            self._store_error("keys")
            return self.admission.unavailable(exc)
        return caller if caller is not None else self.unauthorized

    @functools.cached_property
    def admin(self) -> Admin:
        """An `Admin` over this runtime's store, hashing keys and reading limits as the
        middleware does: what the apps behind it (admin, self-serve, usage page) use."""
        settings = self.settings
        return Admin(
            self.store, pepper=settings.pepper, key_prefix=settings.key_prefix,
            tiers=self.tiers, limit_by=settings.limit_by, clock=self.clock,
        )  # fmt: skip

    def observe(self, outcome: str, caller: Caller | None, action: str, now: float) -> None:
        """Count a request's outcome: in the metrics (when on), and in the ledger when a
        known caller was refused or let through by a check that failed open."""
        if self.metrics is not None:
            self.metrics.count(outcome, caller.tier if caller is not None else "", action)
        if caller is not None and outcome in OUTCOME_FIELDS:
            self.meter.refused(caller.account_id, caller.key_id, action, outcome, now)

    def _charged(self, caller: Caller, action: str, credits: int) -> None:
        if self.metrics is not None:
            self.metrics.charge(caller.tier, action, credits)

    def _store_error(self, concern: str) -> None:
        if self.metrics is not None:
            self.metrics.store_error(CONCERN_OF.get(concern, concern))

    def plan(self, caller: Caller) -> Plan | Denial:
        """The caller's plan (limits and counters), worked out once per caller object: the
        key cache hands out the same object for every request of a key."""
        plan = self._plans.get(id(caller))
        if plan is not None and plan.caller is caller:
            return plan
        try:
            limits = self.tiers.limits_for(caller)
        except ConfigurationError:
            log.error("key %s has tier %r, unknown to the tiers", caller.key_id, caller.tier)
            return Denial(responses.FORBIDDEN_TIER, [])
        if len(self._plans) >= 100_000:
            self._plans.clear()
        plan = self._plans[id(caller)] = Plan(
            caller, limits, limit_by=self.settings.limit_by, minute_by=self.settings.minute_by
        )
        return plan

    # -- what the usage endpoint reads ---------------------------------------------------

    async def labels(self) -> dict[str, str]:
        """Action labels: those recorded in storage, overridden by the routes' current ones."""
        return {**await self.store.labels(), **self.costs.labels}

    async def quota_status(self, caller: Caller, now: float) -> QuotaStatus:
        """The caller's monthly numbers, this process's pending usage written first."""
        await self.meter.flush()
        plan = self.plan(caller)
        limits = self.tiers.limits_for(caller)
        subject = plan.subject if isinstance(plan, Plan) else Subject(caller.account_id, None)
        return await quota_status(
            self.store, subject=subject, key_id=caller.key_id, limits=limits, now=now
        )


@dataclass(slots=True)
class Call:
    """The per-request state meterware keeps in `scope["meterware"]`."""

    caller: Caller
    runtime: Runtime
    cost: Cost | None = None
    credits: int = 0
    headers: Headers | None = None  # the rate-limit headers the usage endpoint adds


SCOPE_KEY = "meterware"
RUNTIME_KEY = "meterware.runtime"  # where apps that authenticate on their own find it


def _call(request: HTTPConnection) -> Call:
    call = request.scope.get(SCOPE_KEY)
    if not isinstance(call, Call):
        raise LookupError("this request did not pass through MeterwareMiddleware")
    return call


def get_caller(request: HTTPConnection) -> Caller:
    """Who made this request (a `Caller`); also usable as a FastAPI dependency.

    Raises `LookupError` if the request did not pass through the middleware (an exempt
    path, or no middleware).
    """
    return _call(request).caller


def set_cost(request: HTTPConnection, credits: int) -> None:
    """Set the credits this call costs, from inside the handler (e.g. by payload size).

    Charged only if the call succeeds; must be a non-negative integer.
    """
    _call(request).credits = check_credits(credits)
