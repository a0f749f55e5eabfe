"""The usage page's one stylesheet, and the headers that pin it: a Content-Security-Policy
that allows exactly this `<style>` element (by its hash) and nothing else.

Imports nothing of meterware.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["CONTENT_SECURITY_POLICY", "PAGE_HEADERS", "STYLE"]

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
