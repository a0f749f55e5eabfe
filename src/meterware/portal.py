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

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from urllib.parse import quote, urlsplit, urlunsplit

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

MAX_TOKEN_LENGTH = 1024
MIN_SECRET_LENGTH = 16
_VERSION = "v1"
_DOMAIN = b"meterware.portal:"  # a mac for this page is never valid anywhere else
_TOKEN = re.compile(r"v1\.([A-Za-z0-9_-]{4,700})\.([A-Za-z0-9_-]{43})")
_PAYLOAD = re.compile(r"([0-9]{1,12}):(.+)", re.DOTALL)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(secret: bytes, signed: str) -> str:
    return _b64(hmac.new(secret, _DOMAIN + signed.encode("ascii"), hashlib.sha256).digest())


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"the portal secret must be at least {MIN_SECRET_LENGTH} bytes")


def sign_token(account_id: str, *, secret: bytes, expires_at: float) -> str:
    """A URL-safe token for `account_id`, valid until `expires_at` (epoch seconds)."""
    _check_secret(secret)
    account = account_id.encode()
    if not 0 < len(account) <= 512:
        raise ValueError("account_id must be 1 to 512 bytes in UTF-8")
    if not math.isfinite(expires_at) or not 0 <= expires_at < 10**12:
        raise ValueError(f"expires_at is not a usable timestamp: {expires_at!r}")
    payload = _b64(b"%d:%s" % (int(expires_at), account))
    signed = f"{_VERSION}.{payload}"
    return f"{signed}.{_mac(secret, signed)}"


def verify_token(token: str, *, secret: bytes, now: float) -> str | None:
    """The account id of a live token signed with `secret`, else None."""
    _check_secret(secret)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    payload, mac = match.groups()
    if not hmac.compare_digest(mac, _mac(secret, f"{_VERSION}.{payload}")):
        return None
    try:
        text = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    fields = _PAYLOAD.fullmatch(text)
    if fields is None or not now < int(fields[1]):
        return None
    return fields[2]


def portal_url(base_url: str, token: str) -> str:
    """`base_url` with `token=<token>` in its query, replacing any token already there."""
    parts = urlsplit(base_url)
    kept = [p for p in parts.query.split("&") if p and p.partition("=")[0] != "token"]
    query = "&".join([*kept, "token=" + quote(token, safe="")])
    return urlunsplit(parts._replace(query=query))


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One UTC day of the account's usage."""

    day: str  # YYYY-MM-DD
    calls: int
    credits: int
    requests: int


@dataclass(frozen=True, slots=True)
class EndpointUsage:
    """One metered action's usage this period."""

    action: str
    label: str
    calls: int
    credits: int
    requests: int


@dataclass(frozen=True, slots=True)
class KeyLine:
    """One of the account's keys, as the page lists it."""

    id: str
    name: str
    created_at: float
    last_used_at: float | None
    state: str  # "active" | "revoked" | "expired"


@dataclass(frozen=True, slots=True)
class PortalData:
    """Everything the page shows, filled by the host from the ledger."""

    account_id: str
    account_name: str | None
    tier: str
    generated_at: float
    period_start: float  # the billing month, reset at period_end
    period_end: float
    monthly_requests: int
    monthly_limit: int | None
    monthly_credits: int
    monthly_credits_limit: int | None
    per_minute: int | None
    days: Sequence[DayUsage]  # oldest first, every day of the range
    endpoints: Sequence[EndpointUsage]  # this period, most credits first
    refused: Mapping[str, int]  # outcome -> refusals this period
    balance: int | None  # prepaid credits, None without grants
    keys: Sequence[KeyLine]


STYLE = """
:root{--bg:#f5f6f8;--card:#fff;--line:#e2e5ea;--text:#1c2024;--muted:#5f6873;
--accent:#3b5bdb;--soft:#e7ecfc;--bad:#c92a2a;color-scheme:light dark}
@media (prefers-color-scheme:dark){:root{--bg:#111316;--card:#1a1d21;--line:#2c3137;
--text:#e8eaed;--muted:#9aa3ad;--accent:#7b96f5;--soft:#262d44;--bad:#f06a6a}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--text);font:15px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;-webkit-text-size-adjust:100%}
main{max-width:1040px;margin:0 auto;padding:2rem 1rem 3rem}
header{margin-bottom:1.5rem}
h1{font-size:1.6rem;line-height:1.25;margin:.15rem 0 .4rem;overflow-wrap:anywhere}
h2{font-size:.8rem;font-weight:600;letter-spacing:.06em;text-transform:uppercase;
color:var(--muted);margin:0 0 .75rem}
p{margin:0}
code{font:.85em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
.eyebrow{color:var(--accent);font-weight:600;font-size:.85rem}
.meta{color:var(--muted);font-size:.9rem}
.tag{display:inline-block;padding:0 .5rem;border-radius:99px;background:var(--soft);
color:var(--accent);font-size:.8rem;font-weight:600;line-height:1.6rem}
.tag.revoked,.tag.expired{background:transparent;color:var(--muted);border:1px solid var(--line)}
.cards{display:grid;gap:1rem;grid-template-columns:repeat(auto-fit,minmax(165px,1fr));
margin-bottom:1rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:1.25rem;
margin-bottom:1rem;min-width:0}
.cards .card{margin:0}
.narrow{max-width:34rem;margin:12vh auto 0}
.big{font-size:1.75rem;font-weight:650;line-height:1.2;font-variant-numeric:tabular-nums}
.sub{color:var(--muted);font-size:.875rem;margin-top:.25rem}
.over .big,.bad{color:var(--bad)}
.gauge{display:block;width:100%;max-width:200px;margin:0 auto .25rem}
.gauge path{fill:none;stroke-width:12;stroke-linecap:round}
.gauge .track{stroke:var(--line)}.gauge .fill{stroke:var(--accent)}
.over .gauge .fill{stroke:var(--bad)}
.gauge text{fill:var(--text);font-size:20px;font-weight:650;text-anchor:middle}
.gauged p{text-align:center}
.head{display:flex;flex-wrap:wrap;justify-content:space-between;gap:.25rem 1rem;
align-items:baseline;margin-bottom:.75rem}
.head h2{margin:0}
.totals{font-variant-numeric:tabular-nums;color:var(--muted);font-size:.9rem}
.totals strong{color:var(--text)}
figure{margin:0}
.chart{display:block;width:100%;height:180px;border-bottom:1px solid var(--line)}
.chart .rule{stroke:var(--line);stroke-width:1;vector-effect:non-scaling-stroke}
.bar{fill:var(--accent)}.bar:hover{fill:var(--text)}
.axis{display:flex;justify-content:space-between;color:var(--muted);font-size:.8rem;
margin-top:.35rem;font-variant-numeric:tabular-nums}
figcaption{color:var(--muted);font-size:.85rem;margin-top:.5rem}
details{margin-top:1rem}
summary{cursor:pointer;color:var(--accent);font-size:.9rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{width:100%;border-collapse:collapse;font-size:.9rem}
th,td{padding:.55rem .75rem .55rem 0;text-align:left;border-bottom:1px solid var(--line);
white-space:nowrap}
th{color:var(--muted);font-weight:600;font-size:.8rem}
th:last-child,td:last-child{padding-right:0}
.nw{white-space:nowrap}
tr:last-child td{border-bottom:0}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
td.wrap{white-space:normal;min-width:10rem}
.share{display:inline-block;vertical-align:middle;width:4rem;height:6px;margin-left:.5rem}
.share .track{fill:var(--line)}.share .fill{fill:var(--accent)}
.empty{color:var(--muted)}
footer{color:var(--muted);font-size:.8rem;text-align:center;margin-top:2rem}
@media (max-width:480px){main{padding:1.25rem .75rem 2rem}h1{font-size:1.35rem}
.card{padding:1rem}.big{font-size:1.5rem}}
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-type", "text/html; charset=utf-8"),
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("cache-control", "no-store"),
    ("referrer-policy", "no-referrer"),
    ("x-content-type-options", "nosniff"),
)

OUTCOMES = {
    "rate_limited": "Rate limited (429)",
    "quota_exceeded": "Monthly quota exceeded (429)",
    "insufficient_credits": "Insufficient credits (402)",
    "forbidden": "Forbidden (403)",
    "unavailable": "Service unavailable (503)",
}
_ARC = "M10 62 A50 50 0 0 1 110 62"
_CHART_W, _CHART_H = 1000, 200
_NUMERIC = ' class="n"'


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _value(ident: str, n: int) -> str:
    return f'<span id="{ident}" data-value="{n}">{n:,}</span>'


def _document(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="robots" content="noindex, nofollow">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _gauge(
    title: str, used: int, limit: int | None, unit: str, ids: tuple[str, str], reset: str
) -> str:
    """A card for a monthly allowance: a capped arc, the honest numbers, the reset date."""
    used_html = _value(ids[0], used)
    if limit is None:
        return (
            f'<section class="card"><h2>{title}</h2><p class="big">{used_html}</p>'
            f'<p class="sub">{unit} · <span id="{ids[1]}">unlimited</span></p></section>'
        )
    share = used / limit if limit > 0 else 1.0
    over = used > limit
    filled = min(100.0, share * 100)
    arc = f'<path class="fill" d="{_ARC}" pathLength="100" stroke-dasharray="{filled:.1f} 100"/>'
    percent = f"{math.floor(share * 100):,}%" if limit > 0 else "—"
    note = f"over by {used - limit:,}" if over else f"{limit - used:,} left"
    return (
        f'<section class="card gauged{" over" if over else ""}"><h2>{title}</h2>'
        f'<svg class="gauge" viewBox="0 0 120 72" role="img" '
        f'aria-label="{percent} of the monthly {unit} limit used">'
        f'<path class="track" d="{_ARC}"/>{arc if filled > 0 else ""}'
        f'<text x="60" y="60">{percent}</text></svg><p class="big">{used_html}</p>'
        f'<p class="sub">of {_value(ids[1], limit)} {unit}</p>'
        f'<p class="sub{" bad" if over else ""}">{note}</p><p class="sub">resets {reset}</p>'
        "</section>"
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(
            f"<{tag}{_NUMERIC if i in numeric else ''}>{v}</{tag}>" for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    return (
        f'<div class="scroll"><table><thead><tr>{cells("th", head)}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _chart(days: Sequence[DayUsage]) -> str:
    if not days:
        return '<p class="empty">No usage recorded in this range.</p>'
    peak = max(d.calls for d in days)
    slot = _CHART_W / len(days)
    width = slot * (0.7 if len(days) <= 120 else 0.85)
    grid = "".join(
        f'<line class="rule" x1="0" x2="{_CHART_W}" y1="{y}" y2="{y}"/>' for y in (0, 50, 100, 150)
    )
    bars = []
    for i, d in enumerate(days):
        height = d.calls / peak * _CHART_H if peak else 0.0
        height = max(height, 1.0) if d.calls else 0.0
        bars.append(
            f'<rect class="bar" data-day="{escape(d.day)}" data-calls="{d.calls}" '
            f'x="{i * slot + (slot - width) / 2:.2f}" y="{_CHART_H - height:.1f}" '
            f'width="{width:.2f}" height="{height:.1f}"><title>{escape(d.day)}: '
            f"{d.calls:,} calls, {d.credits:,} credits</title></rect>"
        )
    first, last = escape(days[0].day), escape(days[-1].day)
    busiest = max(days, key=lambda d: d.calls)
    rows = [
        (escape(d.day), f"{d.calls:,}", f"{d.credits:,}", f"{d.requests:,}") for d in days[::-1]
    ]
    return (
        f'<figure><svg class="chart" viewBox="0 0 {_CHART_W} {_CHART_H}" '
        f'preserveAspectRatio="none" role="img" aria-labelledby="chart-caption">'
        f'{grid}{"".join(bars)}</svg><div class="axis"><span>{first}</span>'
        f'<span>{last}</span></div><figcaption id="chart-caption">Calls per day (UTC), '
        f"{first} to {last}. Busiest day: {escape(busiest.day)}, {peak:,} calls."
        f"</figcaption></figure><details><summary>Daily numbers</summary>"
        f"{_table(('Day', 'Calls', 'Credits', 'Requests'), rows, {1, 2, 3})}</details>"
    )


def _endpoints(endpoints: Sequence[EndpointUsage]) -> str:
    if not endpoints:
        return '<p class="empty">No metered calls this period.</p>'
    total = sum(e.credits for e in endpoints) or 1
    rows = []
    for e in endpoints:
        pct = max(0.0, min(100.0, e.credits / total * 100))
        share = (
            f'{pct:.0f}%<svg class="share" viewBox="0 0 100 6" preserveAspectRatio="none" '
            f'aria-hidden="true"><rect class="track" width="100" height="6"/>'
            f'<rect class="fill" width="{pct:.1f}" height="6"/></svg>'
        )
        name = f"{escape(e.label)}<br><code>{escape(e.action)}</code>"
        rows.append((name, f"{e.calls:,}", f"{e.credits:,}", f"{e.requests:,}", share))
    head = ("Endpoint", "Calls", "Credits", "Requests", "Share of credits")
    return _table(head, rows, {1, 2, 3, 4})


def _refused(refused: Mapping[str, int]) -> str:
    order = [o for o in OUTCOMES if refused.get(o)] + sorted(
        o for o, n in refused.items() if n and o not in OUTCOMES
    )
    if not order:
        return '<p class="empty">No refused calls this period.</p>'
    rows = [(escape(OUTCOMES.get(o, o)), f"{refused[o]:,}") for o in order]
    return _table(("Outcome", "Calls"), rows, {1})


def _keys(keys: Sequence[KeyLine]) -> str:
    if not keys:
        return '<p class="empty">No keys.</p>'
    rows = [
        (
            escape(k.name) or '<span class="empty">unnamed</span>',
            f"<code>{escape(k.id)}</code>",
            _day(k.created_at),
            "never" if k.last_used_at is None else _when(k.last_used_at),
            f'<span class="tag {escape(k.state)}">{escape(k.state)}</span>',
        )
        for k in keys
    ]
    return _table(("Name", "ID", "Created", "Last used", "State"), rows, set())


def render_page(data: PortalData) -> str:
    """The account's usage page: a complete HTML document, to send with `PAGE_HEADERS`."""
    name = data.account_name or data.account_id
    reset = _day(data.period_end)
    cards = [
        _gauge("Monthly requests", data.monthly_requests, data.monthly_limit, "requests",
               ("monthly-requests", "monthly-limit"), reset),
        _gauge("Monthly credits", data.monthly_credits, data.monthly_credits_limit, "credits",
               ("monthly-credits", "monthly-credits-limit"), reset),
    ]  # fmt: skip
    if data.per_minute is None:
        minute = '<p class="big">No limit</p><p class="sub">requests per minute</p>'
    else:
        minute = f'<p class="big">{_value("per-minute", data.per_minute)}</p>'
        minute += '<p class="sub">requests per minute</p>'
    cards.append(f'<section class="card"><h2>Rate limit</h2>{minute}</section>')
    if data.balance is not None:
        cards.append(
            f'<section class="card"><h2>Prepaid balance</h2><p class="big">'
            f'{_value("balance", data.balance)}</p><p class="sub">credits</p></section>'
        )
    calls = sum(d.calls for d in data.days)
    credits = sum(d.credits for d in data.days)
    totals = (
        f'<p class="totals"><strong>{_value("total-calls", calls)}</strong> calls · '
        f"<strong>{_value('total-credits', credits)}</strong> credits · {len(data.days)} days</p>"
    )
    body = f"""<header><p class="eyebrow">API usage</p><h1>{escape(name)}</h1>
<p class="meta"><span class="tag">{escape(data.tier)}</span> · <span class="nw">account
<code>{escape(data.account_id)}</code></span> · <span class="nw">updated
{_when(data.generated_at)}</span></p><p class="meta">Billing period <span class="nw">
{_day(data.period_start)} – {_day(data.period_end - 1)}</span> · <span class="nw">quotas
reset {_when(data.period_end)}</span></p></header>
<div class="cards">{"".join(cards)}</div>
<section class="card"><div class="head"><h2>Daily usage</h2>{totals}</div>
{_chart(data.days)}</section>
<section class="card"><h2>By endpoint, this period</h2>{_endpoints(data.endpoints)}</section>
<section class="card"><h2>Refused calls, this period</h2>{_refused(data.refused)}</section>
<section class="card"><h2>API keys</h2>{_keys(data.keys)}</section>
<footer>All times UTC. This link is personal and expires; ask for a new one when it does.
</footer>"""
    return _document(f"API usage · {name}", body)


def render_denied(reason: str = "This usage link is invalid or has expired.") -> str:
    """The page answering an expired, tampered or missing link (send it with a 401)."""
    body = (
        '<section class="card narrow"><p class="eyebrow">401 · Unauthorized</p>'
        f"<h1>Link not valid</h1><p>{escape(reason)}</p>"
        '<p class="sub">Usage links are short-lived. Ask the service for a new link to '
        "your usage page.</p></section>"
    )
    return _document("Link not valid", body)
