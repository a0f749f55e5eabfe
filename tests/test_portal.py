"""The usage page served: the FastAPI example under uvicorn, an account with 90 days of
usage, a link from `meterware portal-link`, opened in headless Chromium (Debian's
`chromium`): the chart and the same totals as the JSON usage endpoint; a tampered or
expired link gets the 401 page; the admin API makes links too."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from meterware import Admin, PortalApp
from meterware.clock import day_of
from meterware.storage import Rollup, UsageBatch, storage_from_url
from tests.servers import Uvicorn
from tests.test_portal_page import Page, browse, chromium, csp_messages
from tests.test_scale_out import cli
from tests.utils import serve

SECRET = "portal-secret-for-the-tests-0123456789"
ACTIONS = [("image_to_html", 30), ("code_export", 15), ("figma_export", 10)]

__all__ = ["chromium"]  # (a fixture, imported for the tests below)


def usage_days(account: str, key: str, days: int = 90) -> list[Rollup]:
    """A quarter of made-up usage: every day of the last `days`, a few calls of each
    action (some days none)."""
    today = date.today()
    rollups = []
    for back in range(days + 1):
        day = (today - timedelta(days=back)).isoformat()
        for i, (action, each) in enumerate(ACTIONS):
            calls = (back * 7 + i * 3) % 11
            if calls:
                rollups.append(Rollup(account, key, action, day, calls, calls * each, calls))
    return rollups


@pytest.mark.slow
def test_the_page_in_a_browser_matches_the_json(chromium: str, tmp_path: Path) -> None:
    """90 days of usage: the page, rendered by Chromium under its CSP with no violation,
    has a bar per day and the JSON endpoint's total calls and credits; a tampered link
    and an expired one get the 401 page."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
    url = f"sqlite:///{tmp_path}/portal.db"
    env |= {"METERWARE_STORAGE": url, "METERWARE_PORTAL_SECRET": SECRET}
    made = cli("keys", "create", "--name", "Production Key", "--tier", "scale", env=env)

    async def record() -> None:
        async with storage_from_url(url) as store:
            rows = usage_days(made["account"], made["id"])
            labels = {"image_to_html": "Image → HTML", "code_export": "Export Code"}
            await store.record(UsageBatch(rollups=rows, labels=labels))

    asyncio.run(record())
    server = Uvicorn("fastapi_app", env, tmp_path, workers=1)
    with server.running():
        link = cli("portal-link", made["account"], "--base-url", f"{server.base}/portal",
                   "--expires-in", "10", env=env)["url"]  # fmt: skip
        report = httpx.get(f"{server.base}/api/v1/usage?days=90",
                           headers={"X-API-Key": made["key"]}).json()  # fmt: skip
        direct = httpx.get(link)
        profile = tmp_path / "profile"
        shown = browse(chromium, profile, link, "--dump-dom")
        shot = tmp_path / "portal.png"
        browse(chromium, profile, link, f"--screenshot={shot}", "--window-size=1280,1800")
        token = link.split("token=")[1]
        tampered = link.replace(token, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
        refused = browse(chromium, profile, tampered, "--dump-dom")
        tampered_status = httpx.get(tampered).status_code
    assert direct.status_code == 200
    assert "content-security-policy" in direct.headers
    assert not csp_messages(shown.stderr)
    page = Page(shown.stdout)
    assert len(page.bars) == 91  # today and the 90 days before, as the JSON counts them
    assert page.value("total-calls") == report["summary"]["totalCalls"] > 0
    assert page.value("total-credits") == report["summary"]["totalCredits"] > 0
    days = {d["date"]: d["calls"] for d in report["daily"]}
    assert {b["data-day"]: int(str(b["data-calls"])) for b in page.bars} == days
    assert "Link not valid" in refused.stdout and tampered_status == 401
    assert shot.stat().st_size > 20_000


async def test_links_expire_and_name_one_account(tmp_path: Path) -> None:
    """A link works until its expiry, for its account only; no secret configured: 503."""
    url = f"sqlite:///{tmp_path}/links.db"
    now = [time.time()]
    admin = Admin(url, portal_secret=SECRET, clock=lambda: now[0])
    async with admin:
        key, _ = await admin.create_key(name="k", account_id="acct_pages")
        link, expires_at = admin.portal_link(key.account_id, "http://test/", expires_in=60)
    app = PortalApp(secret=SECRET, storage=url, clock=lambda: now[0])
    async with serve(app) as client:
        ok = await client.get(link.replace("http://test/", "/"))
        now[0] = expires_at
        late = await client.get(link.replace("http://test/", "/"))
        missing = await client.get("/")
        posted = await client.post(link.replace("http://test/", "/"))
    assert ok.status_code == 200 and "acct_pages" in ok.text
    assert (late.status_code, missing.status_code, posted.status_code) == (401, 401, 405)
    async with serve(PortalApp(secret="", storage=url)) as client:
        assert (await client.get("/")).status_code == 503


async def test_the_admin_api_makes_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /admin/accounts/{id}/portal-link answers a link the page accepts."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from meterware import AdminApp

    monkeypatch.setenv("METERWARE_PORTAL_SECRET", SECRET)
    url = f"sqlite:///{tmp_path}/admin-links.db"
    app = Starlette(routes=[
        Mount("/admin", AdminApp(token="t" * 32, storage=url)),
        Mount("/portal", PortalApp(storage=url)),
    ])  # fmt: skip
    async with serve(app) as client:
        headers = {"Authorization": "Bearer " + "t" * 32}
        await client.post("/admin/accounts", json={"id": "acct_x", "name": "X"}, headers=headers)
        made = await client.post("/admin/accounts/acct_x/portal-link", headers=headers,
                                 json={"base_url": "http://test/portal/",
                                       "expires_in_minutes": 5})  # fmt: skip
        data: Any = made.json()["data"]
        page = await client.get(data["url"].replace("http://test", ""))
        bad = await client.post("/admin/accounts/acct_x/portal-link", headers=headers,
                                json={"base_url": "ftp://x"})  # fmt: skip
    assert made.status_code == 201 and page.status_code == 200
    assert day_of(time.time()).isoformat() in page.text
    assert bad.status_code == 400
