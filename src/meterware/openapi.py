"""Document meterware in a FastAPI app's OpenAPI schema (what `/openapi.json` and `/docs` show).

`document_openapi(app, ...)` wraps `app.openapi` so that the schema FastAPI generates
(and caches in `app.openapi_schema`) also describes what the middleware adds:

- `components.securitySchemes`: an `apiKey` scheme per key header and, with `bearer`, an
  HTTP bearer scheme; every operation outside the exempt paths lists them as alternatives
  (so the Authorize button of `/docs` can send a key);
- on those operations, meterware's own answers: 401, 429 (with the rate-limit headers)
  and, where the endpoint declares a `@cost` of credits, 402 and an `x-credit-cost`
  extension `{"credits", "action", "label"}`; bodies follow the configured envelope
  (`components.schemas.MeterwareError`); responses the host declared are kept;
- the usage endpoint at `usage_path`: `CreditsReport` (reference A) or `QuotaStatus`
  (reference B);
- apps mounted in it that document themselves (`openapi(prefix)`): the self-serve
  `KeysApp` (secured by the key schemes, like any metered route) and the `AdminApp`
  (secured by its own bearer admin token).

Apps without `openapi`/`openapi_schema` (plain Starlette) are left alone. FastAPI itself
is never imported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from meterware.config import Settings
from meterware.metering import Cost, declared_cost
from meterware.responses import display_header

__all__ = ["document_openapi"]

log = logging.getLogger("meterware")

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def document_openapi(app: Any, settings: Settings) -> bool:
    """Make `app.openapi()` document meterware as `settings` configure it; False (and
    nothing done) if `app` is not a FastAPI app. Calling it again is harmless."""
    current = getattr(app, "openapi", None)
    if not callable(current) or not hasattr(app, "openapi_schema"):
        return False
    if not isinstance(current, _DocumentedOpenAPI):
        complete = partial(
            _complete,
            app=app,
            usage_path=settings.usage_path,
            usage_format=settings.usage_format,
            envelope=settings.envelope,
            exempt=settings.exempt_paths,
            key_headers=settings.key_headers,
            bearer=settings.bearer,
            default_cost=settings.default_cost,
        )
        app.openapi = _DocumentedOpenAPI(current, complete)
    return True


class _DocumentedOpenAPI:
    """`app.openapi`, replaced: FastAPI's schema (which FastAPI caches), completed once."""

    def __init__(self, original: Callable[[], Any], complete: Callable[..., None]) -> None:
        self.original, self.complete = original, complete
        self.done: object = None  # the schema object last completed

    def __call__(self) -> dict[str, Any]:
        schema: dict[str, Any] = self.original()
        if schema is not self.done:
            try:
                self.complete(schema)
            except Exception:  # never break the host's /docs
                log.exception("meterware could not document the OpenAPI schema")
            self.done = schema
        return schema


def _complete(
    schema: dict[str, Any],
    *,
    app: Any,
    usage_path: str | None,
    usage_format: str,
    envelope: str,
    exempt: frozenset[str],
    key_headers: tuple[str, ...],
    bearer: bool,
    default_cost: int,
) -> None:
    components = schema.setdefault("components", {})
    ours = _add_schemes(components.setdefault("securitySchemes", {}), key_headers, bearer)
    schemas = components.setdefault("schemas", {})
    schemas.setdefault("MeterwareError", _error_schema(envelope))
    paths = schema.setdefault("paths", {})
    if usage_path and usage_path not in paths:
        paths[usage_path] = {"get": _usage_operation(usage_format, schemas)}
    own_auth: dict[str, Any] = {}
    for prefix, mounted in _mounted(app):
        found, schemes = mounted.openapi(prefix)
        components["securitySchemes"].update(schemes)
        for path, item in found.items():
            exempt_app = getattr(mounted, "meterware_exempt", False)
            (own_auth if exempt_app else paths).setdefault(path, item)
    for path, item in paths.items():
        if path in exempt or path in own_auth:
            continue
        for method, operation in item.items():
            if method not in METHODS:
                continue
            _secure(operation, ours)
            responses = operation.setdefault("responses", {})
            unauthorized = _error("Invalid or missing API key (`UNAUTHORIZED`).")
            unauthorized["headers"] = {"WWW-Authenticate": _header(CHALLENGE, "string")}
            responses.setdefault("401", unauthorized)  # (a host's own 401 is kept as it is)
            responses.setdefault("429", _too_many())
            responses.setdefault("503", _unavailable())
            cost = _cost_of(app, path, method.upper(), default_cost)
            if cost is not None and cost.credits > 0:
                operation.setdefault(
                    "x-credit-cost",
                    {"credits": cost.credits, "action": cost.action, "label": cost.label},
                )
                responses.setdefault(
                    "402",
                    _error(
                        "The monthly credit allowance and the prepaid balance cannot cover "
                        "the call (`INSUFFICIENT_CREDITS`)."
                    ),
                )
            for status, response in responses.items():
                if status not in ("401", "503"):  # every other answer carries them
                    headers = response.setdefault("headers", {})
                    for name, header in RATE_LIMIT_HEADERS.items():
                        headers.setdefault(name, header)
            operation["responses"] = dict(sorted(responses.items()))
    for path, item in own_auth.items():  # the admin app: its own token, not a key
        paths.setdefault(path, item)


def _mounted(app: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(mount path, app) of each mounted app that documents itself (`openapi(prefix)`)."""
    found = []
    for route in getattr(app, "routes", None) or ():
        inner = getattr(route, "app", None)
        path = prefix + str(getattr(route, "path", ""))
        if callable(getattr(inner, "openapi", None)) and not hasattr(inner, "openapi_schema"):
            found.append((path, inner))
        elif hasattr(route, "routes") and inner is not None and route.path:
            found += _mounted(route, path)
    return found


def _add_schemes(schemes: dict[str, Any], key_headers: Sequence[str], bearer: bool) -> list[str]:
    """Declare a scheme per key header (and bearer); their names, in order."""
    names = []
    for header in key_headers:
        name = display_header(header)
        scheme_id = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        scheme = {"type": "apiKey", "in": "header", "name": name, "description": "API key."}
        schemes.setdefault(scheme_id, scheme)
        names.append(scheme_id)
    if bearer:
        scheme = {"type": "http", "scheme": "bearer", "description": "API key as a bearer token."}
        schemes.setdefault("BearerAuth", scheme)
        names.append("BearerAuth")
    return names


def _secure(operation: dict[str, Any], ours: list[str]) -> None:
    """Require one of our schemes, in addition to whatever the host already requires."""
    if not ours:
        return
    existing = operation.get("security") or [{}]
    if all(any(name in requirement for name in ours) for requirement in existing):
        return
    operation["security"] = [{**req, name: []} for req in existing for name in ours]


def _cost_of(app: Any, path: str, method: str, default_cost: int) -> Cost | None:
    """The cost declared on the route serving `method path` (the default where none is)."""
    for route in getattr(app, "routes", None) or ():
        paths = {getattr(route, "path", None), getattr(route, "path_format", None)}
        if path in paths and method in (getattr(route, "methods", None) or ()):
            endpoint = getattr(route, "endpoint", None)
            found = declared_cost(endpoint, method) if endpoint is not None else None
            if found is not None or default_cost <= 0:
                return found
            name = getattr(endpoint, "__name__", None) or path
            return Cost(default_cost, name, name)
    return None


def _error(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/MeterwareError"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _header(description: str, kind: str = "integer") -> dict[str, Any]:
    return {"description": description, "schema": {"type": kind}}


CHALLENGE = "How to present a key: `Bearer` and `ApiKey` challenges (RFC 9110 §11.6.1)."
RATE_LIMIT_HEADERS = {
    "X-RateLimit-Limit": _header("Requests allowed per minute."),
    "X-RateLimit-Remaining": _header("Requests left in the current minute."),
    "X-RateLimit-Reset": _header("When the minute window resets (epoch seconds)."),
    "RateLimit": _header("IETF RateLimit: remaining requests and seconds to reset.", "string"),
    "RateLimit-Policy": _header("IETF RateLimit-Policy: the quotas in force.", "string"),
}
"""What every answer to an authenticated request carries (those a deployment configured)."""


def _too_many() -> dict[str, Any]:
    response = _error(
        "Per-minute rate limit (`RATE_LIMITED`) or monthly request quota (`QUOTA_EXCEEDED`) "
        "exceeded."
    )
    response["headers"] = {"Retry-After": _header("Seconds to wait before retrying.")}
    return response


def _unavailable() -> dict[str, Any]:
    response = _error(
        "The usage storage could not be reached where the check fails closed "
        "(`STORAGE_UNAVAILABLE`)."
    )
    response["headers"] = {"Retry-After": _header("Seconds to wait before retrying.")}
    return response


def _error_schema(envelope: str) -> dict[str, Any]:
    if envelope == "flat":
        return _obj({"error": "str"})
    error = _obj({"message": "str", "code": "str", "timestamp": "time"})
    return _obj({"success": {"type": "boolean", "const": False}, "error": error})


def _usage_operation(usage_format: str, schemas: dict[str, Any]) -> dict[str, Any]:
    bad = "Invalid query parameter (`BAD_REQUEST`)."
    operation: dict[str, Any] = {"tags": ["usage"], "operationId": "meterware_usage"}
    if usage_format == "credits":
        schemas.setdefault("CreditsReport", _credits_report())
        operation["summary"] = "Credit usage report"
        operation["description"] = (
            "Calls and credits by endpoint and by day over the last `days` days, for the "
            "calling key, or another key of the same account (`keyId`)."
        )
        operation["parameters"] = [
            _query("days", {"type": "integer", "minimum": 1, "maximum": 90, "default": 30}),
            _query("keyId", {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,128}$"}),
        ]
        ok = "CreditsReport"
        errors = {"400": _error(bad), "404": _error("Unknown key (`NOT_FOUND`).")}
    else:
        schemas.setdefault("QuotaStatus", _quota_status())
        operation["summary"] = "Quota status"
        operation["description"] = "This key's monthly requests, limits, reset time and tier."
        ok = "QuotaStatus"
        errors = {"400": _error(bad)}
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ok}"}}}
    errors["405"] = _error("Only GET (and HEAD) are answered (`METHOD_NOT_ALLOWED`).")
    errors["405"]["headers"] = {"Allow": _header("The methods answered: GET.", "string")}
    operation["responses"] = {"200": {"description": "Usage.", "content": content}, **errors}
    return operation


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


KINDS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer", "minimum": 0},
    "time": {"type": "string", "format": "date-time"},
    "date": {"type": "string", "format": "date"},
}


def _kind(short: str) -> dict[str, Any]:
    """A fresh schema for a shorthand: `str`, `int`, `time`, `date`; `?` adds null."""
    schema = dict(KINDS[short.rstrip("?")])
    if short.endswith("?"):
        schema["type"] = [schema["type"], "null"]
    return schema


def _obj(properties: dict[str, Any], optional: Sequence[str] = ()) -> dict[str, Any]:
    """An object schema (shorthands expanded); every property is required but `optional`."""
    expanded = {k: _kind(v) if isinstance(v, str) else v for k, v in properties.items()}
    required = [name for name in properties if name not in optional]
    return {"type": "object", "required": required, "properties": expanded}


def _credits_report() -> dict[str, Any]:
    days = {"type": "integer", "minimum": 1, "maximum": 90}
    counts = _obj({"calls": "int", "credits": "int", "label": "str"})
    by_endpoint = {"type": "object", "additionalProperties": counts}
    day = _obj({"date": "date", "calls": "int", "credits": "int"})
    return _obj(
        {
            "period": _obj({"start": "time", "end": "time", "days": days}),
            "key": _obj({"id": "str", "name": "str", "lastUsed": "time?"}),
            "summary": _obj(
                {"totalCalls": "int", "totalCredits": "int", "byEndpoint": by_endpoint}
            ),
            "daily": {"type": "array", "items": day},
        },
        optional=["key"],
    )


def _quota_status() -> dict[str, Any]:
    permission = {"type": "string", "enum": ["full_access", "site_access"]}
    api_key = {"id": "str?", "name": "str", "permission": permission, "website_id": "str?"}
    usage = {
        "monthly_requests": "int",
        "monthly_limit": "int?",
        "monthly_remaining": "int?",
        "monthly_reset_at": "time",
        "total_requests": "int",
    }
    data = {
        "api_key": _obj(api_key),
        "usage": _obj(usage),
        "rate_limits": _obj({"requests_per_minute": "int?"}),
        "subscription": _obj({"tier": "str"}),
    }
    return _obj(
        {"success": {"type": "boolean", "const": True}, "data": _obj(data), "timestamp": "time"}
    )
