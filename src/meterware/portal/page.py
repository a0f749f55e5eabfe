"""The usage page's HTML: what it shows (`PortalData`, filled by the host from the ledger)
and its rendering, inline SVG and no JavaScript (see `meterware.portal`).

Imports only the page's stylesheet (`meterware.portal.style`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from meterware.portal.style import STYLE

__all__ = [
    "DayUsage",
    "EndpointUsage",
    "KeyLine",
    "PortalData",
    "render_denied",
    "render_page",
]


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
