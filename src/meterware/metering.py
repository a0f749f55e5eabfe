"""Credit metering: `@cost` on routes, and finding a request's route and cost before it
runs.

`@cost` only marks the endpoint (no wrapper), so it works above or below the framework's
route decorator. `RouteCosts` finds the endpoint the router will call with Starlette's
own `route.matches(scope)`, walking mounts and included routers, and caches the answer
per path. What was charged is recorded by the ledger (`meterware.ledger`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.routing import Match
from starlette.types import Scope

from meterware.errors import InvalidValue

__all__ = ["Cost", "RouteCosts", "RouteInfo", "check_credits", "cost", "declared_cost"]

F = TypeVar("F", bound=Callable[..., Any])
ATTRIBUTE = "__meterware_cost__"


@dataclass(frozen=True)
class Cost:
    """What a call to an endpoint costs, and under which action and label it is reported."""

    credits: int
    action: str
    label: str


def check_credits(credits: object) -> int:
    """`credits` if it is a non-negative integer, else `InvalidValue`."""
    if isinstance(credits, bool) or not isinstance(credits, int) or credits < 0:
        raise InvalidValue(f"a cost must be a non-negative integer, not {credits!r}")
    return credits


def cost(credits: int, *, action: str | None = None, label: str | None = None) -> Callable[[F], F]:
    """Declare what a call to this endpoint costs.

    `action` (the report's key) defaults to the function's name, `label` (its display
    name) to the action. The endpoint is returned unchanged.
    """
    check_credits(credits)

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
        self.default = check_credits(default)
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
        cache_key = (_method(scope), scope.get("root_path", ""), scope["path"])
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
        if matched is None and not scope["path"].endswith("/"):
            # `/keys` for an app mounted at `/keys`: the router redirects it to `/keys/`,
            # and the redirect is that app's (exempt or unmetered as it is).
            slashed = _match({**scope, "path": scope["path"] + "/"}, routes or ())
            if slashed is not None and _is_app(slashed[0]):
                matched = slashed
        if matched is None:  # one action for every unmatched path, not one per path
            return RouteInfo(None, Cost(self.default, "default", "default"), {})
        endpoint, params = matched
        declared = declared_cost(endpoint, _method(scope))
        if declared is None:
            name = action_of(endpoint)
            declared = Cost(self.default, name, name)
        return RouteInfo(endpoint, declared, params)


def action_of(endpoint: Any) -> str:
    """The action of an endpoint without `@cost`: its `meterware_action`, its function's
    name, or its class's (never the request's path: ids in paths would make one action
    per id)."""
    return str(
        getattr(endpoint, "meterware_action", None)
        or getattr(endpoint, "__name__", None)
        or type(endpoint).__name__
    )


def _is_app(endpoint: Any) -> bool:
    return bool(
        getattr(endpoint, "meterware_exempt", False)
        or getattr(endpoint, "meterware_unmetered", False)
    )


def _method(scope: Scope) -> str:
    """The request's method; `WEBSOCKET` for a WebSocket (its endpoint's own `@cost`)."""
    method: str = scope.get("method", "WEBSOCKET")
    return method


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


def declared_cost(endpoint: Any, method: str) -> Cost | None:
    """The `@cost` on an endpoint (for a class endpoint, on its method's handler)."""
    declared = getattr(endpoint, ATTRIBUTE, None)
    if declared is None and isinstance(endpoint, type):  # an HTTPEndpoint class
        name = method.lower()
        handler = getattr(endpoint, name, None)
        if handler is None and name == "head":
            handler = getattr(endpoint, "get", None)
        declared = getattr(handler, ATTRIBUTE, None)
    return declared if isinstance(declared, Cost) else None
