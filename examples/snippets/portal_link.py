"""The end users' usage page: `PortalApp` mounted at /portal, a signed link that works
for 15 minutes, the page behind its strict Content-Security-Policy, and the 401 page
for a link that was tampered with.

    python examples/snippets/portal_link.py

In production the secret comes from `METERWARE_PORTAL_SECRET`, shared by the app and
whatever makes links. The app runs in process (`serving.serve`) on a SQLite file in a
temporary directory.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile

from serving import serve
from starlette.applications import Starlette
from starlette.routing import Mount

from meterware import Admin, MeterwareMiddleware, PortalApp

PORTAL_SECRET = secrets.token_urlsafe(32)  # at least 16 bytes


async def main() -> None:
    url = f"sqlite:///{tempfile.mkdtemp()}/meterware.db"
    async with Admin(url, portal_secret=PORTAL_SECRET) as admin:
        account = await admin.create_account(account_id="acct_acme", name="Acme Inc.")
        link, _expires_at = admin.portal_link(
            account.id, "https://api.example.com/portal", expires_in=15 * 60
        )
    print(link.split("?")[0], "?token=v1.…", sep="")

    app = Starlette(routes=[Mount("/portal", PortalApp(secret=PORTAL_SECRET))])
    app.add_middleware(MeterwareMiddleware, storage=url)
    async with serve(app) as client:
        page = await client.get(link)  # no API key: the link is the access
        print(page.status_code, page.headers["content-type"], "Acme Inc." in page.text)
        print("CSP:", page.headers["content-security-policy"].split(";")[0])
        tampered = await client.get(link[:-1] + ("A" if link[-1] != "A" else "B"))
        print("tampered:", tampered.status_code)


if __name__ == "__main__":
    asyncio.run(main())
