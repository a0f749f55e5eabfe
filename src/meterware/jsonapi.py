"""What the admin app and the self-serve keys app share: routes matched by method and
path, JSON bodies read with a size bound and checked field by field, and meterware's
errors answered in the configured envelope.

A handler takes a `Request` and returns `(status, data)`; it raises `InvalidValue`,
`NotFound`, `Conflict` or `StorageError` for the errors, each answered with its
`http_status` (400, 404, 409, 503 + `Retry-After`). Success bodies follow the envelope
as errors do: `wrapped` sends `{"success": true, "data": ..., "timestamp": ...}`, `flat`
the data alone.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from starlette.datastructures import QueryParams
from starlette.types import Receive, Scope, Send

from meterware.clock import isoformat_ms
from meterware.errors import ConfigurationError, InvalidValue, MeterwareError, StorageError
from meterware.responses import (
    RETRY_STORAGE,
    Envelope,
    Refusal,
    render_json,
    send_json,
    send_refusal,
)

__all__ = ["Body", "JsonRoute", "Request", "openapi_paths", "serve"]

log = logging.getLogger("meterware")

MAX_BODY = 64 * 1024
_CODES = {400: "BAD_REQUEST", 404: "NOT_FOUND", 409: "CONFLICT", 503: "STORAGE_UNAVAILABLE"}
_UNSET: Any = object()


@dataclass
class Request:
    """What a handler sees: path parameters, the query, the JSON body (an object)."""

    scope: Scope
    params: dict[str, str]
    query: QueryParams
    body: Body
    now: float
    context: Any = None  # whatever the app passes its handlers (its Admin, the caller)


Handler = Callable[[Request], Awaitable[tuple[int, Any]]]


@dataclass(frozen=True)
class JsonRoute:
    """`method` and a path pattern with `{name}` parameters (ids), and the handler."""

    method: str
    path: str
    handler: Handler
    summary: str = ""
    body: Mapping[str, Any] | None = None  # the JSON body's properties (OpenAPI schemas)
    required: tuple[str, ...] = ()
    query: Mapping[str, Any] = field(default_factory=dict)  # query parameters: their schemas
    status: int = 200
    also: tuple[int, ...] = ()  # other success statuses (200 for a repeated create)
    regex: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.path)  # ids checked later: 400
        object.__setattr__(self, "regex", re.compile(f"{pattern}/?"))


class Body:
    """A request's JSON object; each getter checks one field's type."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def only(self, names: Iterable[str]) -> Body:
        """`InvalidValue` for any field outside `names`."""
        unknown = sorted(set(self.data) - set(names))
        if unknown:
            raise InvalidValue(f"unknown field(s): {', '.join(unknown)}")
        return self

    def given(self, name: str) -> bool:
        return name in self.data

    def text(self, name: str, *, required: bool = False, nullable: bool = False) -> Any:
        """A string field (`_UNSET` when absent and not required)."""
        value = self._get(name, required)
        if value is _UNSET or (value is None and nullable):
            return value
        if not isinstance(value, str):
            raise InvalidValue(f"{name} must be a string{' or null' if nullable else ''}")
        return value

    def count(self, name: str, *, nullable: bool = True) -> Any:
        """An integer >= 0 (null allowed when `nullable`)."""
        value = self._get(name, False)
        if value is _UNSET or (value is None and nullable):
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidValue(f"{name} must be an integer >= 0{' or null' if nullable else ''}")
        return value

    def number(self, name: str, *, low: float = 0.0, high: float | None = None) -> Any:
        value = self._get(name, False)
        if value is _UNSET:
            return value
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not value >= low
            or (high is not None and not value <= high)
        ):
            span = f">= {low:g}" if high is None else f"from {low:g} to {high:g}"
            raise InvalidValue(f"{name} must be a number {span}")
        return float(value)

    def time(self, name: str) -> Any:
        """An ISO 8601 time (`2026-05-01T00:00:00Z`), or null; as Unix time."""
        value = self._get(name, False)
        if value is _UNSET or value is None:
            return value
        if not isinstance(value, str):
            raise InvalidValue(f"{name} must be an ISO 8601 time or null")
        return parse_time(value, name)

    def _get(self, name: str, required: bool) -> Any:
        if name in self.data:
            return self.data[name]
        if required:
            raise InvalidValue(f"{name} is required")
        return _UNSET


def parse_time(text: str, what: str) -> float:
    """Unix time from ISO 8601 with a zone (`Z` or an offset)."""
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise InvalidValue(f"{what}: {text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise InvalidValue(f"{what}: give a time zone (2026-05-01T00:00:00Z)")
    return when.astimezone(timezone.utc).timestamp()


def unset(value: Any) -> bool:
    return value is _UNSET


def given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that were given (not `_UNSET`)."""
    return {name: value for name, value in values.items() if value is not _UNSET}


async def serve(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    routes: Sequence[JsonRoute],
    path: str,
    envelope: Envelope,
    now: float,
    context: Any,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Find the route for `path`, run its handler, send its answer or its error."""
    extra = list(headers)
    methods = []
    for route in routes:
        match = route.regex.fullmatch(path)
        if match is None:
            continue
        methods.append(route.method)
        if route.method != scope["method"]:
            continue
        try:
            body = await _read_body(scope, receive) if route.method in ("POST", "PATCH") else {}
            query = QueryParams(scope.get("query_string", b"").decode("latin-1"))
            request = Request(scope, match.groupdict(), query, Body(body), now, context)
            status, data = await route.handler(request)
        except StorageError as exc:
            log.warning("%s %s: %s", scope["method"], path, exc)
            refusal = Refusal(503, _CODES[503], "Usage storage is unavailable")
            return await send_refusal(send, envelope, refusal, now, [*extra, RETRY_STORAGE])
        except ConfigurationError as exc:  # the server's setup, not the request
            refusal = Refusal(503, "NOT_CONFIGURED", str(exc))
            return await send_refusal(send, envelope, refusal, now, extra)
        except MeterwareError as exc:
            status = exc.http_status if exc.http_status in _CODES else 400
            refusal = Refusal(status, _CODES[status], str(exc))
            return await send_refusal(send, envelope, refusal, now, extra)
        return await send_json(send, status, _success(envelope, data, now), extra)
    if methods:
        allow = (b"allow", ", ".join(sorted(set(methods))).encode())
        refusal = Refusal(405, "METHOD_NOT_ALLOWED", "Method not allowed")
        return await send_refusal(send, envelope, refusal, now, [*extra, allow])
    await send_refusal(send, envelope, Refusal(404, "NOT_FOUND", "Not found"), now, extra)


def _success(envelope: Envelope, data: Any, now: float) -> bytes:
    if envelope == "flat":
        return render_json(data)
    return render_json({"success": True, "data": data, "timestamp": isoformat_ms(now)})


async def _read_body(scope: Scope, receive: Receive) -> dict[str, Any]:
    """The request's JSON object (empty body: `{}`); `InvalidValue` past `MAX_BODY`
    bytes, for anything but a JSON object, or for a body that is not JSON."""
    chunks, size = [], 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidValue("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise InvalidValue(f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise InvalidValue("the body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidValue("the body must be a JSON object")
    return data


def openapi_paths(
    routes: Sequence[JsonRoute],
    prefix: str,
    *,
    tag: str,
    security: list[dict[str, list[str]]] | None = None,
) -> dict[str, Any]:
    """OpenAPI path items for `routes` served under `prefix`."""
    error = {"$ref": "#/components/schemas/MeterwareError"}
    paths: dict[str, Any] = {}
    for route in routes:
        path = (prefix.rstrip("/") + route.path) if route.path != "/" else prefix.rstrip("/") + "/"
        operation: dict[str, Any] = {"tags": [tag], "summary": route.summary}
        operation["operationId"] = re.sub(r"\W+", "_", f"{tag}_{route.method}_{path}").lower()
        parameters = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"}}
            for name in re.findall(r"\{(\w+)\}", route.path)
        ] + [
            {"name": name, "in": "query", "required": False, "schema": dict(schema)}
            for name, schema in route.query.items()
        ]  # fmt: skip
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            schema: dict[str, Any] = {
                "type": "object", "properties": dict(route.body), "additionalProperties": False,
            }  # fmt: skip
            if route.required:
                schema["required"] = list(route.required)
            elif route.method == "PATCH":
                schema["minProperties"] = 1  # a change of nothing is refused
            operation["requestBody"] = {
                "required": bool(route.required) or route.method == "PATCH",
                "content": {"application/json": {"schema": schema}},
            }
        responses: dict[str, Any] = {
            str(route.status): {
                "description": "OK" if route.status == 200 else "Created",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        }
        for status in route.also:
            responses[str(status)] = {
                "description": "Already done: nothing changed",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        for status, what in ((400, "Invalid input"), (404, "No such account or key"),
                             (409, "Conflicts with what is stored"),
                             (503, "Storage unavailable")):  # fmt: skip
            responses[str(status)] = {
                "description": what,
                "content": {"application/json": {"schema": error}},
            }
        operation["responses"] = responses
        if security is not None:
            operation["security"] = security
        paths.setdefault(path, {})[route.method.lower()] = operation
    return paths
