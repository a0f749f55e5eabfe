"""The two example apps: reference A's sample reproduced on the FastAPI example, and the
Starlette example served by a real uvicorn, driven over HTTP with keys made by the CLI."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meterware import Admin
from meterware.storage.sqlite import SQLiteStorage
from tests.utils import serve

ROOT = Path(__file__).resolve().parent.parent


def load_example(name: str, storage_url: str, monkeypatch: pytest.MonkeyPatch):
    """Import examples/<name>/app.py afresh with METERWARE_STORAGE pointing at storage_url."""
    monkeypatch.setenv("METERWARE_STORAGE", storage_url)
    monkeypatch.delenv("METERWARE_RATE_LIMIT_STORAGE", raising=False)
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / name / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


async def make_key(url: str, **fields) -> tuple[str, str]:
    async with SQLiteStorage(url) as store:
        fields.setdefault("name", "Production Key")
        fields.setdefault("account_id", "acct_demo")
        key, secret = await Admin(store).create_key(**fields)
    return key.id, secret


async def test_reference_a_sample(tmp_path, monkeypatch):
    """20 image_to_html, 18 code_export, 9 figma_export (plus uploads) give reference A's
    byEndpoint exactly and totalCalls 47.

    The sample's own totalCredits (855) disagrees with its byEndpoint (600 + 270 + 90 =
    960); meterware keeps the report consistent: totalCredits is the sum of byEndpoint.
    """
    url = f"sqlite:///{tmp_path}/a.db"
    app = load_example("fastapi_app", url, monkeypatch)
    key_id, secret = await make_key(url, tier="enterprise")
    auth = {"Authorization": f"Bearer {secret}"}
    plan = [("image-to-html", 20), ("code-export", 18), ("figma-export", 9), ("uploads", 6)]
    async with serve(app) as client:
        for path, times in plan:
            for _ in range(times):
                assert (await client.post(f"/api/v1/{path}", headers=auth)).status_code == 200
        report = (await client.get("/api/v1/usage", headers=auth)).json()
        unauthorized = await client.get("/api/v1/usage")
    assert report["summary"] == {
        "totalCalls": 47,
        "totalCredits": 960,
        "byEndpoint": {
            "image_to_html": {"calls": 20, "credits": 600, "label": "Image → HTML"},
            "code_export": {"calls": 18, "credits": 270, "label": "Export Code"},
            "figma_export": {"calls": 9, "credits": 90, "label": "Figma Export"},
        },
    }
    assert report["key"]["id"] == key_id and report["key"]["name"] == "Production Key"
    assert sum(d["calls"] for d in report["daily"]) == 47
    assert len(report["daily"]) == 31
    assert unauthorized.status_code == 401
    assert unauthorized.json() == {"error": "Invalid or missing API key"}


async def test_fastapi_example_health_and_docs_are_open(tmp_path, monkeypatch):
    """/health and /openapi.json need no key on the FastAPI example."""
    app = load_example("fastapi_app", f"sqlite:///{tmp_path}/h.db", monkeypatch)
    async with serve(app) as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        assert (await client.get("/openapi.json")).status_code == 200
        assert (await client.post("/api/v1/code-export")).status_code == 401


async def test_starlette_example_reference_b(tmp_path, monkeypatch):
    """The Starlette example serves reference B's status and scopes site keys."""
    url = f"sqlite:///{tmp_path}/b.db"
    app = load_example("starlette_app", url, monkeypatch)
    _, site_secret = await make_key(url, permission="site_access", website_id="site_1")
    key_id, secret = await make_key(url, tier="professional", name="Production API Key")
    async with serve(app) as client:
        own = await client.get(
            "/api/external/v1/websites/site_1/stats", headers={"X-API-Key": site_secret}
        )
        other = await client.get(
            "/api/external/v1/websites/site_2/stats", headers={"X-API-Key": site_secret}
        )
        sites = await client.get("/api/external/v1/websites", headers={"X-API-Key": site_secret})
        await client.get("/api/external/v1/websites", headers={"X-API-Key": secret})
        status = (await client.get("/api/external/v1/usage", headers={"X-API-Key": secret})).json()
    assert own.status_code == 200
    assert other.status_code == 403
    assert other.json()["success"] is False and other.json()["error"]["code"] == "FORBIDDEN"
    assert [s["id"] for s in sites.json()["data"]] == ["site_1"]
    assert status["success"] is True
    assert status["data"]["api_key"]["id"] == key_id
    assert status["data"]["usage"]["monthly_requests"] == 1
    assert status["data"]["usage"]["monthly_limit"] == 100000
    assert status["data"]["subscription"]["tier"] == "professional"


async def test_every_error_of_the_examples_is_in_their_envelope(tmp_path, monkeypatch):
    """Unknown paths and methods, bad parameters and the handlers' own 404s answer in the
    example's reference envelope (flat for A, wrapped with a timestamp for B)."""
    url = f"sqlite:///{tmp_path}/e.db"
    fastapi_example = load_example("fastapi_app", url, monkeypatch)
    starlette_example = load_example("starlette_app", url, monkeypatch)
    _, secret = await make_key(url, tier="pro")
    key = {"X-API-Key": secret}
    async with serve(fastapi_example) as client:
        a = {
            "unknown path": await client.get("/api/v1/nothing", headers=key),
            "wrong method": await client.get("/api/v1/image-to-html", headers=key),
        }
    async with serve(starlette_example) as client:
        b = {
            "unknown path": await client.get("/api/external/v1/nothing", headers=key),
            "wrong method": await client.delete("/api/external/v1/websites", headers=key),
            "no such site": await client.get("/api/external/v1/websites/site_9/stats", headers=key),
        }
    assert {k: (r.status_code, r.json()) for k, r in a.items()} == {
        "unknown path": (404, {"error": "Not Found"}),
        "wrong method": (405, {"error": "Method Not Allowed"}),
    }
    for name, answer in b.items():
        body = answer.json()
        assert body["success"] is False, name
        assert set(body["error"]) == {"message", "code", "timestamp"}, name
        assert body["error"]["timestamp"].endswith("Z"), name
    assert [(r.status_code, r.json()["error"]["code"]) for r in b.values()] == [
        (404, "NOT_FOUND"), (405, "METHOD_NOT_ALLOWED"), (404, "NOT_FOUND"),
    ]  # fmt: skip
    assert b["no such site"].json()["error"]["message"] == "Website not found"
    assert all("x-ratelimit-remaining" in r.headers for r in (*a.values(), *b.values()))


# -- a real server ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str, env: dict[str, str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "meterware.cli", *args, "--json"],
        capture_output=True, text=True, env=env, check=True, timeout=60,
    )  # fmt: skip
    return json.loads(done.stdout)


@contextlib.contextmanager
def uvicorn(example: str, env: dict[str, str]) -> Iterator[str]:
    """Run `uvicorn --app-dir examples/<example> app:app` and yield its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", f"examples/{example}", "app:app",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"uvicorn did not start: {output}")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()  # SIGTERM: uvicorn runs the lifespan shutdown
        try:
            process.wait(timeout=20)
        finally:
            if process.stdout:
                process.stdout.close()


@pytest.mark.slow
def test_starlette_example_under_uvicorn(tmp_path):
    """Served by uvicorn: --per-minute 3 gives 200, 200, 200, 429 (remaining 2, 1, 0);
    --monthly-limit 5 refuses the 6th call until next month, even after a restart."""
    env = {**os.environ, "METERWARE_STORAGE": f"sqlite:///{tmp_path}/served.db"}
    env.pop("METERWARE_RATE_LIMIT_STORAGE", None)
    minute = cli("keys", "create", "--name", "minute", "--per-minute", "3", env=env)
    month = cli("keys", "create", "--name", "month", "--monthly-limit", "5", env=env)
    url = "/api/external/v1/websites"
    with uvicorn("starlette_app", env) as base:
        answers = [httpx.get(base + url, headers={"X-API-Key": minute["key"]}) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["x-ratelimit-remaining"] for a in answers[:3]] == ["2", "1", "0"]
        assert answers[3].json()["error"]["code"] == "RATE_LIMITED"
        codes = [httpx.get(base + url, headers={"X-API-Key": month["key"]}).status_code
                 for _ in range(6)]  # fmt: skip
        assert codes == [200] * 5 + [429]
    with uvicorn("starlette_app", env) as base:
        refused = httpx.get(base + url, headers={"X-API-Key": month["key"]})
        status = httpx.get(base + "/api/external/v1/usage", headers={"X-API-Key": month["key"]})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "QUOTA_EXCEEDED"
    seconds = int(refused.headers["retry-after"])
    reset = status.json()["data"]["usage"]["monthly_reset_at"]
    assert status.json()["data"]["usage"]["monthly_requests"] == 5
    assert status.json()["data"]["usage"]["total_requests"] == 5
    from datetime import datetime

    reset_at = datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp()
    assert abs(time.time() + seconds - reset_at) < 5
    assert reset.endswith("T00:00:00.000Z") and reset[8:10] == "01"
