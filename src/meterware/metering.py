"""Credit metering: `@cost` on routes, finding a request's cost before it runs, and the
write-behind ledger that records what was charged.

`@cost` only marks the endpoint (no wrapper), so it works above or below the framework's
route decorator. The middleware finds the endpoint the router will call with Starlette's
own `route.matches(scope)`, walking mounts and included routers, and caches the answer
per path.

The ledger (`Meter`) aggregates in memory, per (account, key, action, UTC day), and a
background task writes the aggregates in one transaction every `flush_interval` seconds or
`flush_batch` events. Memory is bounded by distinct (key, action, day) triples, not by
calls. A failed flush keeps its aggregates and retries with backoff. What a hard crash
(SIGKILL, power loss) can lose: the calls of the last `flush_interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import HTTPConnection
from starlette.routing import Match
from starlette.types import Scope

from meterware.clock import Clock, day_of, midnight, system_clock
from meterware.errors import ConfigurationError
from meterware.keys import Caller
from meterware.storage.base import KeyActivity, Rollup, Storage, UsageBatch

__all__ = ["Call", "Cost", "Meter", "RouteCosts", "cost", "get_caller", "set_cost"]

log = logging.getLogger("meterware")

F = TypeVar("F", bound=Callable[..., Any])
ATTRIBUTE = "__meterware_cost__"


@dataclass(frozen=True)
class Cost:
    """What a call to an endpoint costs, and under which action and label it is reported."""

    credits: int
    action: str
    label: str


def _check_credits(credits: object) -> int:
    if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
        raise ValueError(f"a cost must be a non-negative integer, not {credits!r}")
    return credits


def cost(credits: int, *, action: str | None = None, label: str | None = None) -> Callable[[F], F]:
    """Declare what a call to this endpoint costs.

    `action` (the report's key) defaults to the function's name, `label` (its display
    name) to the action. The endpoint is returned unchanged.
    """
    _check_credits(credits)

    def mark(endpoint: F) -> F:
        name = action or getattr(endpoint, "__name__", None) or "call"
        setattr(endpoint, ATTRIBUTE, Cost(credits, name, label or name))
        return endpoint

    return mark


@dataclass(frozen=True)
class RouteInfo:
    """What the middleware needs to know of a request's route before it runs."""

    endpoint: Any
    cost: Cost
    path_params: dict[str, Any]


class RouteCosts:
    """Finds the endpoint a request will reach, and its declared cost, before it runs.

    `routes_of(scope)` gives the routes to search; it is called only when a path is not
    in the cache yet.
    """

    def __init__(
        self,
        default: int = 0,
        *,
        routes_of: Callable[[Scope], Iterable[Any] | None] = lambda scope: None,
        max_entries: int = 10_000,
    ) -> None:
        self.default = _check_credits(default)
        self.routes_of = routes_of
        self.max_entries = max_entries
        self._cache: dict[tuple[str, str, str], RouteInfo] = {}
        self.labels: dict[str, str] = {}
        """The label of every action found so far (the routes' current labels)."""

    def lookup(self, scope: Scope) -> RouteInfo:
        """The endpoint that will serve `scope`, its cost and path parameters.

        Where no route matches (or the app has no routes), the endpoint is None and the
        cost is the default, reported under the request's path.
        """
        cache_key = (scope["method"], scope.get("root_path", ""), scope["path"])
        found = self._cache.get(cache_key)
        if found is None:
            found = self._find(scope, self.routes_of(scope))
            self.labels[found.cost.action] = found.cost.label
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[cache_key] = found
        return found

    def _find(self, scope: Scope, routes: Iterable[Any] | None) -> RouteInfo:
        matched = _match(dict(scope), routes or ())
        if matched is None:  # one action for every unmatched path, not one per path
            return RouteInfo(None, Cost(self.default, "default", "default"), {})
        endpoint, params = matched
        declared = _declared(endpoint, scope["method"])
        if declared is None:
            name = getattr(endpoint, "__name__", None) or scope["path"]
            declared = Cost(self.default, name, name)
        return RouteInfo(endpoint, declared, params)


def _match(scope: dict[str, Any], routes: Iterable[Any]) -> tuple[Any, dict[str, Any]] | None:
    for route in routes:
        try:
            match, child = route.matches(scope)
        except Exception:  # a custom route that cannot judge this scope
            continue
        if match is not Match.FULL:
            continue
        params = dict(child.get("path_params", {}))
        endpoint = child.get("endpoint")
        if endpoint is None or endpoint is getattr(route, "app", None):
            children = _children(route)
            if children:
                inner = _match({**scope, **child}, children)
                if inner is None:
                    return None
                return inner[0], {**params, **inner[1]}
        return endpoint, params
    return None


def _children(route: Any) -> Iterable[Any] | None:
    """The routes inside a Mount, a mounted app, or a FastAPI included router."""
    effective = getattr(route, "effective_candidates", None)  # FastAPI's included routers
    if callable(effective):
        return effective()  # type: ignore[no-any-return]
    return getattr(route, "routes", None)


def _declared(endpoint: Any, method: str) -> Cost | None:
    declared = getattr(endpoint, ATTRIBUTE, None)
    if declared is None and isinstance(endpoint, type):  # an HTTPEndpoint class
        name = method.lower()
        handler = getattr(endpoint, name, None)
        if handler is None and name == "head":
            handler = getattr(endpoint, "get", None)
        declared = getattr(handler, ATTRIBUTE, None)
    return declared if isinstance(declared, Cost) else None


class Meter:
    """The write-behind ledger: record in memory now, write in batches later."""

    def __init__(
        self,
        store: Storage,
        *,
        clock: Clock = system_clock,
        flush_interval: float = 0.5,
        flush_batch: int = 10_000,
        max_pending: int = 100_000,
    ) -> None:
        if flush_interval <= 0 or flush_batch < 1 or max_pending < 1:
            raise ConfigurationError("flush_interval > 0, flush_batch >= 1, max_pending >= 1")
        self.store = store
        self.clock = clock
        self.flush_interval = flush_interval
        self.flush_batch = flush_batch
        self.max_pending = max_pending
        self._rollups: dict[tuple[str, str, str, str], list[int]] = {}
        self._activity: dict[str, list[float]] = {}
        self._labels: dict[str, str] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._events = 0
        self._dropped = 0
        self._day = ""
        self._day_end = 0.0
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self.failures = 0

    @property
    def pending(self) -> int:
        """Distinct aggregates waiting to be written."""
        return len(self._rollups) + len(self._activity) + len(self._counts)

    def _today(self, now: float) -> str:
        if now >= self._day_end or now < self._day_end - 86400:
            day = day_of(now)
            self._day = day.isoformat()
            self._day_end = midnight(day) + 86400
        return self._day

    def admitted(self, key_id: str | None, now: float) -> None:
        """Count a request admitted to the host's handler (total_requests, last use).

        Each admitted request is one event toward `flush_batch`."""
        self._events += 1
        if self._events >= self.flush_batch:
            self._wakeup.set()
        if key_id is None:
            return
        entry = self._activity.get(key_id)
        if entry is None:
            if self.pending >= self.max_pending:
                self._drop()
                return
            self._activity[key_id] = [1, now]
        else:
            entry[0] += 1
            entry[1] = now

    def charge(
        self, account_id: str, key_id: str | None, cost: Cost, credits: int, now: float
    ) -> None:
        """Record a successful call that cost `credits` (> 0) under `cost.action`."""
        rollup_key = (account_id, key_id or "", cost.action, self._today(now))
        entry = self._rollups.get(rollup_key)
        if entry is None:
            if self.pending >= self.max_pending:
                self._drop()
                return
            self._rollups[rollup_key] = [1, credits]
            self._labels[cost.action] = cost.label
        else:
            entry[0] += 1
            entry[1] += credits

    def count(self, counter: str, period: str, amount: int) -> None:
        """Add to a counter that has no limit to enforce (write-behind)."""
        key = (counter, period)
        self._counts[key] = self._counts.get(key, 0) + amount

    def _drop(self) -> None:
        if self._dropped == 0:
            log.error(
                "usage buffer full (%d aggregates): dropping usage until the next flush succeeds",
                self.max_pending,
            )
        self._dropped += 1

    def _take(self) -> UsageBatch:
        rollups, self._rollups = self._rollups, {}
        activity, self._activity = self._activity, {}
        labels, self._labels = self._labels, {}
        counts, self._counts = self._counts, {}
        self._events = 0
        return UsageBatch(
            rollups=[Rollup(a, k, act, d, c, cr) for (a, k, act, d), (c, cr) in rollups.items()],
            activity=[KeyActivity(k, int(n), t) for k, (n, t) in activity.items()],
            labels=labels,
            counters=[(c, p, n) for (c, p), n in counts.items() if n],
        )

    def _put_back(self, batch: UsageBatch) -> None:
        for r in batch.rollups:
            entry = self._rollups.setdefault((r.account_id, r.key_id, r.action, r.day), [0, 0])
            entry[0] += r.calls
            entry[1] += r.credits
        for a in batch.activity:
            act = self._activity.setdefault(a.key_id, [0, a.last_used_at])
            act[0] += a.requests
            act[1] = max(act[1], a.last_used_at)
        for action, label in batch.labels.items():
            self._labels.setdefault(action, label)
        for counter, period, amount in batch.counters:
            self.count(counter, period, amount)

    async def flush(self) -> bool:
        """Write what is pending in one transaction; on failure keep it and return False."""
        async with self._lock:
            batch = self._take()
            if not batch:
                return True
            try:
                await self.store.record(batch)
            except BaseException as exc:  # cancelled too: the batch must not be lost
                self._put_back(batch)
                if not isinstance(exc, Exception):
                    raise
                if self.failures == 0:
                    log.warning("usage flush failed, keeping %d aggregates: %s", self.pending, exc)
                self.failures += 1
                return False
            if self.failures:
                log.warning("usage flush recovered after %d failed attempts", self.failures)
                self.failures = 0
            if self._dropped:
                log.error("%d usage events were dropped: the buffer was full", self._dropped)
                self._dropped = 0
            return True

    def wake(self) -> None:
        """End the current `wait` early."""
        self._wakeup.set()

    async def wait(self) -> None:
        """Sleep until the next flush is due: the interval (longer after failures) or a
        full batch."""
        delay = self.flush_interval * min(2**self.failures, 60)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
        self._wakeup.clear()


SCOPE_KEY = "meterware"


@dataclass(slots=True)
class Call:
    """The per-request state meterware keeps in `scope["meterware"]`."""

    caller: Caller
    runtime: Any  # the middleware serving this request
    cost: Cost | None = None
    credits: int = 0
    headers: Any = ()  # the rate-limit headers the usage endpoint adds to its answer


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
    _call(request).credits = _check_credits(credits)
