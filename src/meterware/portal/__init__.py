"""The end-user usage page: signed links and the HTML, as pure functions.

Browsers send no API-key headers, so the host gives a customer a link instead:
`portal_url(base, sign_token(account_id, secret=..., expires_at=...))`. A token reads
`v1.<payload>.<mac>`, both parts unpadded URL-safe base64: the payload is
`<expiry>:<account id>` (expiry in whole seconds since the epoch), the mac is
HMAC-SHA-256 under the host's secret over the version and the payload. It guarantees
integrity and expiry only: anyone holding the link can read the account id, and anyone
holding it can open the page until it expires. A link is a bearer capability; keep it
short-lived, send it only over HTTPS, and rotate the secret to revoke every link at once.
`verify_token` answers None for anything that is not a live token of ours, and never raises
on what a browser sends (garbage, non-ASCII, megabytes).

The page (`render_page`) is rendered on the server from a `PortalData` the caller fills
from the ledger: the same numbers as the JSON usage endpoints, nothing computed twice.
It has no JavaScript and loads nothing: charts and gauges are inline SVG, the only styles
are one `<style>` element whose text is `STYLE`, and `CONTENT_SECURITY_POLICY` allows
exactly that element by its hash and nothing else. So the page works offline, under a
strict policy, and a name that slips past escaping still cannot run. Everything the
account controls (names, labels) is HTML-escaped. Send `PAGE_HEADERS` with both pages;
`no-referrer` keeps the token out of other sites' logs.
"""

from __future__ import annotations

from meterware.portal.links import portal_url, sign_token, verify_token
from meterware.portal.page import (
    DayUsage,
    EndpointUsage,
    KeyLine,
    PortalData,
    render_denied,
    render_page,
)
from meterware.portal.style import CONTENT_SECURITY_POLICY, PAGE_HEADERS, STYLE

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "PAGE_HEADERS",
    "STYLE",
    "DayUsage",
    "EndpointUsage",
    "KeyLine",
    "PortalData",
    "portal_url",
    "render_denied",
    "render_page",
    "sign_token",
    "verify_token",
]
