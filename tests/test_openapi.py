"""The OpenAPI document meterware adds to a FastAPI app (`meterware.openapi`)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from starlette.applications import Starlette

from meterware import DEFAULT_EXEMPT_PATHS, MeterwareMiddleware, cost
from meterware.config import Settings
from meterware.openapi import document_openapi
from tests.utils import ROUTES, FakeClock, bearer, new_key, runtime_of

USAGE = "/api/v1/usage"
SCHEMES = [{"X-API-Key": []}, {"BearerAuth": []}]


def fastapi_app(usage_format: str = "credits", **options: Any) -> FastAPI:
    """A tiny host: two metered routes (@cost above and below the route), free ones, /health."""
    app = FastAPI()
    app.add_middleware(
        MeterwareMiddleware,
        storage="memory://",
        clock=FakeClock(),
        usage_path=USAGE,
        usage_format=usage_format,
        **options,
    )

    @cost(30, action="image_to_html", label="Image → HTML")
    @app.post("/image")
    async def image() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/export")
    @cost(15, action="code_export", label="Export Code")
    async def export() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/upload")
    @cost(0, action="upload", label="Upload")
    async def upload() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/items/{item_id}", responses={401: {"description": "The host's own 401"}})
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def document(app: Any, usage_format: str = "credits", **overrides: Any) -> bool:
    options: dict[str, Any] = {
        "usage_path": USAGE,
        "usage_format": usage_format,
        "exempt_paths": DEFAULT_EXEMPT_PATHS,
        "key_headers": ("x-api-key",),
        "bearer": True,
    }
    return document_openapi(app, Settings.resolve(**{**options, **overrides}))


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


PY_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "boolean": bool,
    "null": type(None),
}
FORMATS = {
    "date-time": re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"),
    "date": re.compile(r"\d{4}-\d\d-\d\d"),
}


def problems(doc: dict[str, Any], schema: dict[str, Any], value: Any, at: str = "$") -> list[str]:
    """Where `value` breaks `schema` (types, required, const, enum, bounds, formats)."""
    schema = resolve(doc, schema)
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if types and not any(
        isinstance(value, PY_TYPES[t]) and (t == "boolean" or not isinstance(value, bool))
        for t in types
    ):
        return [f"{at}: {value!r} is not {types}"]
    found = []
    if "const" in schema and value != schema["const"]:
        found.append(f"{at}: {value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        found.append(f"{at}: {value!r} not in {schema['enum']}")
    number = isinstance(value, int) and not isinstance(value, bool)
    if number and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        found.append(f"{at}: {value} out of bounds")
    pattern = FORMATS.get(schema.get("format", "")) if isinstance(value, str) else None
    if pattern is not None and not pattern.fullmatch(value):
        found.append(f"{at}: {value!r} is not a {schema['format']}")
    if isinstance(value, dict):
        found += [f"{at}: missing {k}" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                found += problems(doc, sub, v, f"{at}.{k}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            found += problems(doc, schema["items"], v, f"{at}[{i}]")
    return found


def ok_schema(doc: dict[str, Any]) -> dict[str, Any]:
    response = doc["paths"][USAGE]["get"]["responses"]["200"]
    return resolve(doc, response["content"]["application/json"]["schema"])


async def test_security_schemes_are_declared_and_required() -> None:
    """Every non-exempt operation requires the API-key header or the bearer scheme."""
    app = fastapi_app()
    assert document(app)
    doc = app.openapi()
    assert doc["components"]["securitySchemes"] == {
        "X-API-Key": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "API key.",
        },
        "BearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "API key as a bearer token.",
        },
    }
    for path in ("/image", "/export", "/upload", "/items/{item_id}", USAGE):
        for operation in doc["paths"][path].values():
            assert operation["security"] == SCHEMES, path
            assert {"401", "429"} <= operation["responses"].keys(), path


async def test_exempt_paths_stay_open() -> None:
    """An exempt path (/health) gets no security and none of meterware's responses."""
    app = fastapi_app()
    document(app)
    health = app.openapi()["paths"]["/health"]["get"]
    assert "security" not in health
    assert set(health["responses"]) == {"200"}


async def test_credit_cost_documented_on_metered_operations_only() -> None:
    """x-credit-cost and 402 appear exactly on the operations with a positive cost."""
    app = fastapi_app()
    document(app)
    paths = app.openapi()["paths"]
    assert paths["/image"]["post"]["x-credit-cost"] == {
        "credits": 30,
        "action": "image_to_html",
        "label": "Image → HTML",
    }
    assert paths["/export"]["post"]["x-credit-cost"] == {
        "credits": 15,
        "action": "code_export",
        "label": "Export Code",
    }
    metered = {
        path
        for path, item in paths.items()
        for operation in item.values()
        if "402" in operation["responses"] or "x-credit-cost" in operation
    }
    assert metered == {"/image", "/export"}


async def test_default_cost_meters_undeclared_routes() -> None:
    """With default_cost, routes without @cost are documented at that cost."""
    app = fastapi_app()
    document(app, default_cost=2)
    paths = app.openapi()["paths"]
    assert paths["/items/{item_id}"]["get"]["x-credit-cost"] == {
        "credits": 2,
        "action": "item",
        "label": "item",
    }
    assert "x-credit-cost" not in paths["/upload"]["post"]
    assert "x-credit-cost" not in paths[USAGE]["get"]


async def test_rate_limit_response_documents_headers() -> None:
    """429 names both codes and documents Retry-After and both rate-limit header families."""
    app = fastapi_app()
    document(app)
    too_many = app.openapi()["paths"]["/image"]["post"]["responses"]["429"]
    assert "RATE_LIMITED" in too_many["description"]
    assert "QUOTA_EXCEEDED" in too_many["description"]
    assert set(too_many["headers"]) == {
        "Retry-After",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "RateLimit",
        "RateLimit-Policy",
    }


async def test_host_responses_are_kept() -> None:
    """A response the host declared for 401 is not replaced."""
    app = fastapi_app()
    document(app)
    responses = app.openapi()["paths"]["/items/{item_id}"]["get"]["responses"]
    assert responses["401"] == {"description": "The host's own 401"}
    assert "422" in responses


@pytest.mark.parametrize(
    ("envelope", "required"), [("flat", ["error"]), ("wrapped", ["success", "error"])]
)
async def test_error_schema_follows_envelope(envelope: str, required: list[str]) -> None:
    """MeterwareError has the configured envelope's shape and the error responses use it."""
    app = fastapi_app()
    document(app, envelope=envelope)
    doc = app.openapi()
    error = doc["components"]["schemas"]["MeterwareError"]
    assert error["required"] == required
    for code in ("401", "402", "429"):
        body = doc["paths"]["/image"]["post"]["responses"][code]["content"]["application/json"]
        assert body["schema"] == {"$ref": "#/components/schemas/MeterwareError"}


async def test_credits_usage_operation() -> None:
    """The credits format documents GET usage_path with CreditsReport, days and keyId."""
    app = fastapi_app("credits")
    document(app, "credits")
    doc = app.openapi()
    operation = doc["paths"][USAGE]["get"]
    assert list(doc["paths"][USAGE]) == ["get"]
    assert operation["operationId"] == "meterware_usage"
    assert operation["tags"] == ["usage"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert params["days"]["in"] == "query"
    assert params["days"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 90,
        "default": 30,
    }
    assert params["keyId"]["schema"] == {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,128}$"}
    assert set(operation["responses"]) == {"200", "400", "401", "404", "405", "429", "503"}
    report = ok_schema(doc)
    assert report is doc["components"]["schemas"]["CreditsReport"]
    assert report["required"] == ["period", "summary", "daily"]
    assert set(report["properties"]) == {"period", "key", "summary", "daily"}
    by_endpoint = report["properties"]["summary"]["properties"]["byEndpoint"]
    assert by_endpoint["additionalProperties"]["required"] == ["calls", "credits", "label"]
    assert report["properties"]["daily"]["items"]["properties"]["date"]["format"] == "date"
    last_used = report["properties"]["key"]["properties"]["lastUsed"]
    assert last_used["type"] == ["string", "null"]


async def test_quota_usage_operation() -> None:
    """The quota format documents GET usage_path with QuotaStatus and no query parameters."""
    app = fastapi_app("quota")
    document(app, "quota")
    doc = app.openapi()
    operation = doc["paths"][USAGE]["get"]
    assert operation["operationId"] == "meterware_usage"
    assert "parameters" not in operation
    assert set(operation["responses"]) == {"200", "400", "401", "405", "429", "503"}
    status = ok_schema(doc)
    assert status is doc["components"]["schemas"]["QuotaStatus"]
    assert "CreditsReport" not in doc["components"]["schemas"]
    assert status["required"] == ["success", "data", "timestamp"]
    data = status["properties"]["data"]
    assert data["required"] == ["api_key", "usage", "rate_limits", "subscription"]
    api_key = data["properties"]["api_key"]["properties"]
    assert api_key["website_id"]["type"] == ["string", "null"]
    assert api_key["permission"]["enum"] == ["full_access", "site_access"]


async def test_host_route_at_usage_path_is_kept() -> None:
    """A path the host already documents at usage_path is not overwritten."""
    app = fastapi_app()

    @app.get("/mine")
    async def mine() -> dict[str, str]:
        return {}

    document(app, usage_path="/mine")
    operation = app.openapi()["paths"]["/mine"]["get"]
    assert operation["operationId"] != "meterware_usage"
    assert operation["security"] == SCHEMES


async def test_key_headers_and_bearer_options() -> None:
    """Each key header is a scheme of its own; bearer=False leaves out the bearer scheme."""
    app = fastapi_app()
    document(app, key_headers=("x-api-key", "X-Custom-Token"), bearer=False)
    doc = app.openapi()
    assert set(doc["components"]["securitySchemes"]) == {"X-API-Key", "X-Custom-Token"}
    security = doc["paths"]["/image"]["post"]["security"]
    assert security == [{"X-API-Key": []}, {"X-Custom-Token": []}]


async def test_idempotent_and_cached() -> None:
    """Calling twice changes nothing; the schema is cached in app.openapi_schema."""
    app = fastapi_app()
    assert document(app)
    wrapper = app.openapi
    assert document(app)
    assert app.openapi is wrapper
    doc = app.openapi()
    assert app.openapi() is doc
    assert app.openapi_schema is doc
    assert doc["paths"]["/image"]["post"]["security"] == SCHEMES
    assert list(doc["paths"]["/image"]["post"]["responses"]).count("402") == 1


async def test_schema_generated_before_and_regenerated_after() -> None:
    """A schema cached before the call and one regenerated for a new route are completed."""
    app = fastapi_app()
    before = app.openapi()
    assert "securitySchemes" not in before.get("components", {})
    document(app)
    assert app.openapi()["paths"]["/image"]["post"]["security"] == SCHEMES

    @app.post("/late")
    @cost(5, action="late")
    async def late() -> dict[str, str]:
        return {}

    paths = app.openapi()["paths"]
    assert paths["/late"]["post"]["x-credit-cost"] == {
        "credits": 5,
        "action": "late",
        "label": "late",
    }
    assert paths["/late"]["post"]["security"] == SCHEMES


async def test_starlette_app_is_left_alone() -> None:
    """A non-FastAPI app (Starlette, or any object) returns False and is not touched."""
    app = Starlette(routes=ROUTES)
    app.add_middleware(MeterwareMiddleware, storage="memory://")
    assert document(app) is False
    assert not hasattr(app, "openapi")
    assert document(object()) is False


async def test_no_usage_path() -> None:
    """Without usage_path no usage operation or report schema is added."""
    app = fastapi_app()
    document(app, usage_path=None)
    doc = app.openapi()
    assert USAGE not in doc["paths"]
    assert "CreditsReport" not in doc["components"]["schemas"]


def client_for(manager: LifespanManager) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=manager.app)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.mark.parametrize("usage_format", ["credits", "quota"])
async def test_served_responses_match_documented_schemas(usage_format: str) -> None:
    """A real usage report and a real 401 body conform to the schemas the document gives."""
    app = fastapi_app(usage_format)
    document(app, usage_format)
    doc = app.openapi()
    error = doc["components"]["schemas"]["MeterwareError"]
    async with LifespanManager(app) as manager, client_for(manager) as client:
        runtime = runtime_of(app)
        _, secret = await new_key(runtime.store, FakeClock(), tier="pro")
        _, site_secret = await new_key(
            runtime.store, FakeClock(), permission="site_access", website_id="site_1"
        )
        assert (await client.post("/image", headers=bearer(secret))).status_code == 200
        assert (await client.post("/export", headers={"x-api-key": secret})).status_code == 200
        reports = [
            (await client.get(USAGE, headers=bearer(s))).json() for s in (secret, site_secret)
        ]
        refused = await client.get(USAGE)
    assert refused.status_code == 401
    assert problems(doc, error, refused.json()) == []
    for report in reports:
        assert problems(doc, ok_schema(doc), report) == []
    if usage_format == "credits":
        assert set(reports[0]["summary"]["byEndpoint"]) == {"image_to_html", "code_export"}
        assert "key" in reports[0]
    else:
        assert reports[1]["data"]["api_key"]["website_id"] == "site_1"
        assert reports[0]["data"]["api_key"]["website_id"] is None
    # the checker is not vacuous
    broken = {**reports[0], "timestamp": 5, "period": {"days": "30"}}
    assert problems(doc, ok_schema(doc), broken)


async def test_served_openapi_json_after_startup() -> None:
    """/openapi.json served through the middleware is documented once it has started."""
    app = fastapi_app("credits")
    async with LifespanManager(app) as manager, client_for(manager) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert_documented(response.json())


async def test_served_openapi_json_without_lifespan() -> None:
    """Without a lifespan, a first request to the exempt /openapi.json is documented too."""
    app = fastapi_app("quota")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert_documented(response.json(), "QuotaStatus")


def assert_documented(doc: dict[str, Any], report: str = "CreditsReport") -> None:
    assert set(doc["components"]["securitySchemes"]) == {"X-API-Key", "BearerAuth"}
    assert doc["paths"]["/image"]["post"]["security"] == SCHEMES
    assert doc["paths"]["/image"]["post"]["x-credit-cost"]["credits"] == 30
    assert "security" not in doc["paths"]["/health"]["get"]
    assert ok_schema(doc) == doc["components"]["schemas"][report]


@pytest.mark.parametrize("usage_format", ["credits", "quota"])
async def test_document_is_valid_openapi(usage_format: str) -> None:
    """The completed document passes openapi-spec-validator (when it is installed)."""
    validator = pytest.importorskip("openapi_spec_validator")
    app = fastapi_app(usage_format)
    document(app, usage_format)
    validator.validate(app.openapi())


async def test_documented_answers_match_what_the_server_sends() -> None:
    """Every authenticated operation documents 503 STORAGE_UNAVAILABLE, the WWW-Authenticate
    challenge of its 401, and the rate-limit headers on every other answer (its 200
    included), as the server sends them."""
    app = fastapi_app()
    document(app)
    doc = app.openapi()
    for path, item in doc["paths"].items():
        if path == "/health":
            continue
        for operation in item.values():
            responses = operation["responses"]
            assert "503" in responses, path
            if "UNAUTHORIZED" in responses["401"]["description"]:  # ours, not the host's
                assert "WWW-Authenticate" in responses["401"]["headers"], path
            for status, response in responses.items():
                if status not in ("401", "503"):
                    assert {"RateLimit", "X-RateLimit-Remaining"} <= set(response["headers"]), (
                        path, status,
                    )  # fmt: skip
