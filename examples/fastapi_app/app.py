"""Reference A's API on FastAPI: three metered exports, a free upload, the credits report
at `GET /api/v1/usage`, and self-serve keys at `/api/v1/keys`.

    uvicorn --app-dir examples/fastapi_app app:app      # serve it
    python examples/fastapi_app/app.py                  # create a demo key, then serve it

Storage comes from `METERWARE_STORAGE` (default `sqlite:///meterware.db`), the per-minute
limits from `METERWARE_RATE_LIMIT_STORAGE` (default: the main store). With
`METERWARE_ADMIN_TOKEN` set, the admin API is served at `/admin`; with `METERWARE_METRICS`
set, Prometheus metrics at `/metrics`. The usage page is at `/portal`, for links made
with `meterware portal-link` (`METERWARE_PORTAL_SECRET`).
"""

from __future__ import annotations

import os

from fastapi import Depends, FastAPI

from meterware import (
    AdminApp,
    Caller,
    KeysApp,
    MeterwareMiddleware,
    MetricsApp,
    PortalApp,
    cost,
    error_handlers,
    get_caller,
    metrics_from_env,
)

# Every error this API sends is in reference A's envelope, {"error": "..."}: meterware's
# refusals, and the app's own (unknown paths and methods, bad parameters, crashes).
app = FastAPI(
    title="Design export API (meterware example)", exception_handlers=error_handlers("flat")
)
metrics = metrics_from_env()  # Prometheus metrics when METERWARE_METRICS is set
app.add_middleware(
    MeterwareMiddleware, usage_path="/api/v1/usage", usage_format="credits", metrics=metrics
)
if metrics is not None:
    app.add_route("/metrics", MetricsApp(metrics))  # scraped without a key
app.mount("/api/v1/keys", KeysApp())  # end users manage their own keys, with a key
app.mount("/portal", PortalApp())  # the usage page, by signed link (METERWARE_PORTAL_SECRET)
if os.environ.get("METERWARE_ADMIN_TOKEN"):
    app.mount("/admin", AdminApp())  # the operator's API, behind the admin token


@app.post("/api/v1/image-to-html")
@cost(30, action="image_to_html", label="Image → HTML")
async def image_to_html(caller: Caller = Depends(get_caller)) -> dict[str, str]:
    """Turn an uploaded image into HTML (30 credits)."""
    return {"html": "<main><h1>Hello</h1></main>", "account": caller.account_id}


@app.post("/api/v1/code-export")
@cost(15, action="code_export", label="Export Code")
async def code_export() -> dict[str, str]:
    """Export a design as code (15 credits)."""
    return {"code": "export default function Page() { return <main />; }"}


@app.post("/api/v1/figma-export")
@cost(10, action="figma_export", label="Figma Export")
async def figma_export() -> dict[str, str]:
    """Export a design to Figma (10 credits)."""
    return {"figma": "https://figma.example/file/demo"}


@app.post("/api/v1/uploads")
@cost(0, action="upload", label="Upload")
async def upload() -> dict[str, str]:
    """Upload an asset (free: never appears in the usage report)."""
    return {"upload": "ok"}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:  # pragma: no cover - the quickstart's demo
    import asyncio

    import uvicorn

    from meterware import Admin

    url = os.environ.get("METERWARE_STORAGE", "sqlite:///meterware.db")

    async def demo_key() -> str:
        async with Admin(url) as admin:
            _, secret = await admin.create_key(name="Demo Key", account_id="demo", tier="pro")
            return secret

    secret = asyncio.run(demo_key())
    host, port = "127.0.0.1", int(os.environ.get("PORT", "8000"))
    base = f"http://{host}:{port}"
    print(f"\nmeterware demo on {base} (storage {url})\nYour demo key: {secret}\n")
    for path in ("image-to-html", "code-export", "figma-export"):
        print(f"curl -X POST {base}/api/v1/{path} -H 'Authorization: Bearer {secret}'")
    print(f"curl '{base}/api/v1/usage?days=7' -H 'Authorization: Bearer {secret}'\n")
    uvicorn.run(app, host=host, port=port)


if __name__ == "__main__":
    main()
