"""The usage page: signed links, the rendered HTML, and the page in a real browser."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from meterware.portal import (
    CONTENT_SECURITY_POLICY,
    PAGE_HEADERS,
    STYLE,
    DayUsage,
    EndpointUsage,
    KeyLine,
    PortalData,
    portal_url,
    render_denied,
    render_page,
    sign_token,
    verify_token,
)
from tests.utils import at

SECRET = b"portal-secret-for-tests-0123456789"
NOW = at("2026-04-12T14:30:00")
XSS = "<script>alert(1)</script>"


def token(account: str = "acct_1", ttl: float = 900) -> str:
    return sign_token(account, secret=SECRET, expires_at=NOW + ttl)


def flip(text: str, index: int) -> str:
    """`text` with the character at `index` changed to another URL-safe one."""
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


# Signed links


def test_token_round_trip():
    """A fresh token gives back its account id, whatever characters the id has."""
    for account in ("acct_1", "acct:with:colons", "компания 7", "😀" * 128, "a" * 512):
        assert verify_token(token(account), secret=SECRET, now=NOW) == account


def test_token_format():
    """A token is `v1.<payload>.<mac>`, URL-safe, unpadded, and carries no secret."""
    value = token()
    version, payload, mac = value.split(".")
    assert version == "v1"
    assert len(mac) == 43  # SHA-256 in unpadded base64
    assert "=" not in value
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)) == (
        f"{int(NOW + 900)}:acct_1".encode()
    )


def test_token_expires():
    """A token is valid strictly before its expiry and refused from then on."""
    value = token(ttl=60)
    assert verify_token(value, secret=SECRET, now=NOW + 59.9) == "acct_1"
    assert verify_token(value, secret=SECRET, now=NOW + 60) is None
    assert verify_token(value, secret=SECRET, now=NOW + 86400) is None


@pytest.mark.parametrize("part", [1, 2])
def test_tampered_token(part):
    """Changing any character of the payload or the mac makes the token worthless."""
    value = token()
    start = len("v1.") if part == 1 else value.rindex(".") + 1
    end = value.rindex(".") if part == 1 else len(value)
    for index in range(start, end):
        assert verify_token(flip(value, index), secret=SECRET, now=NOW) is None


def test_other_account_payload_is_refused():
    """A payload swapped in from another account's token does not verify."""
    mine, theirs = token("acct_1").split("."), token("acct_2").split(".")
    forged = ".".join([mine[0], theirs[1], mine[2]])
    assert verify_token(forged, secret=SECRET, now=NOW) is None


def test_wrong_secret():
    """A token signed under another secret is refused."""
    other = sign_token("acct_1", secret=b"another-secret-0123456789", expires_at=NOW + 60)
    assert verify_token(other, secret=SECRET, now=NOW) is None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "v1",
        "v1.",
        "v1..",
        "v1.abc",
        "v1.abcd.",
        ".".join(["v2", *token().split(".")[1:]]),
        "v1." + token().split(".")[1],
        token() + ".extra",
        token() + "=",
        " " + token(),
        "é" * 100,
        "v1.ééééé." + "A" * 43,
        "v1.\x00\x00\x00\x00." + "A" * 43,
        "x" * 10_000_000,
        token()[:-1] + "é",
    ],
    ids=lambda g: f"len{len(g)}",
)
def test_garbage_is_refused(garbage):
    """Anything that is not a token of ours gives None, never an exception."""
    assert verify_token(garbage, secret=SECRET, now=NOW) is None


def test_sign_refuses_bad_arguments():
    """Signing needs a real secret, an account id and a usable expiry."""
    with pytest.raises(ValueError, match="secret"):
        sign_token("acct_1", secret=b"short", expires_at=NOW)
    with pytest.raises(ValueError, match="account_id"):
        sign_token("", secret=SECRET, expires_at=NOW)
    with pytest.raises(ValueError, match="account_id"):
        sign_token("é" * 257, secret=SECRET, expires_at=NOW)
    with pytest.raises(ValueError, match="expires_at"):
        sign_token("acct_1", secret=SECRET, expires_at=float("nan"))


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://api.example.com/usage", "https://api.example.com/usage?token=T"),
        ("https://x.test/u?lang=en", "https://x.test/u?lang=en&token=T"),
        ("https://x.test/u?token=old&a=1", "https://x.test/u?a=1&token=T"),
        ("https://x.test/u?a=1#top", "https://x.test/u?a=1&token=T#top"),
        ("/usage", "/usage?token=T"),
    ],
)
def test_portal_url(base, expected):
    """The token goes in the query, beside what is there, replacing an old token."""
    assert portal_url(base, "T") == expected


def test_portal_url_round_trip():
    """A real token survives the URL unchanged."""
    value = token()
    assert portal_url("https://x.test/usage", value).endswith("?token=" + value)


# The page


def days(n: int, start: date = date(2026, 1, 13)) -> list[DayUsage]:
    found = []
    for i in range(n):
        calls = (i * 37) % 500 + (0 if i % 7 in (5, 6) else 200)
        found.append(DayUsage((start + timedelta(i)).isoformat(), calls, calls * 3, calls))
    return found


def data(**fields: Any) -> PortalData:
    values: dict[str, Any] = {
        "account_id": "acct_1",
        "account_name": "Acme Analytics",
        "tier": "pro",
        "generated_at": NOW,
        "period_start": at("2026-04-01T00:00:00"),
        "period_end": at("2026-05-01T00:00:00"),
        "monthly_requests": 6812,
        "monthly_limit": 10000,
        "monthly_credits": 48210,
        "monthly_credits_limit": 100000,
        "per_minute": 120,
        "days": days(90),
        "endpoints": [
            EndpointUsage("image_to_html", "Image → HTML", 1204, 36120, 1204),
            EndpointUsage("summarize", "Summarize & shorten", 3100, 9300, 3100),
        ],
        "refused": {"rate_limited": 42, "quota_exceeded": 3},
        "balance": 12500,
        "keys": [
            KeyLine("key_1", "Production", at("2026-01-03T10:00:00"), NOW - 60, "active"),
            KeyLine("key_2", "Old", at("2025-11-20T08:00:00"), None, "revoked"),
        ],
    }
    values.update(fields)
    return PortalData(**values)


class Page(HTMLParser):
    """The parts of a page the tests read: elements by id, bars, scripts, styles."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: dict[str, dict[str, str | None]] = {}
        self.bars: list[dict[str, str | None]] = []
        self.tags: list[str] = []
        self.attributes: set[str] = set()
        self.styles: list[str] = []
        self.text: list[str] = []
        self._in_style = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tags.append(tag)
        self.attributes.update(name for name, _ in attrs)
        if "id" in values:
            assert values["id"] not in self.ids, f"duplicate id {values['id']}"
            self.ids[str(values["id"])] = values
        if tag == "rect" and values.get("class") == "bar":
            self.bars.append(values)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)
        else:
            self.text.append(data)

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())

    def value(self, ident: str) -> int:
        return int(str(self.ids[ident]["data-value"]))


def test_page_numbers_match_the_data():
    """The data attributes carry the same numbers as the data, totals summed over days."""
    source = data()
    page = Page(render_page(source))
    assert page.value("monthly-requests") == 6812
    assert page.value("monthly-limit") == 10000
    assert page.value("monthly-credits") == 48210
    assert page.value("monthly-credits-limit") == 100000
    assert page.value("per-minute") == 120
    assert page.value("balance") == 12500
    assert page.value("total-calls") == sum(d.calls for d in source.days)
    assert page.value("total-credits") == sum(d.credits for d in source.days)
    assert [(b["data-day"], int(str(b["data-calls"]))) for b in page.bars] == [
        (d.day, d.calls) for d in source.days
    ]


def test_page_shows_every_section():
    """Header, quotas with reset date, chart, tables, refusals, balance and keys all show."""
    text = Page(render_page(data())).words
    for expected in (
        "Acme Analytics",
        "pro",
        "updated 2026-04-12 14:30 UTC",
        "resets 2026-05-01",
        "6,812",
        "of 10,000",
        "3,188 left",
        "requests per minute",
        "Calls per day",
        "Daily numbers",
        "Summarize & shorten",
        "image_to_html",
        "Rate limited (429)",
        "Monthly quota exceeded (429)",
        "Prepaid balance",
        "12,500",
        "Production",
        "2026-01-03",
        "2026-04-12 14:29 UTC",
        "never",
        "revoked",
    ):
        assert expected in text, expected


def test_page_is_self_contained_and_csp_clean():
    """No script, no inline style, no external reference; the one style is the hashed one."""
    text = render_page(data())
    page = Page(text)
    assert text.startswith("<!doctype html>")
    assert "script" not in page.tags
    assert "style" not in page.attributes
    assert not [a for a in page.attributes if a.startswith("on")]
    assert not {"href", "src", "srcset", "action"} & page.attributes
    assert "http" not in text.replace("http://www.w3.org/2000/svg", "")
    assert page.tags.count("style") == 1
    assert page.styles == [STYLE]
    digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in CONTENT_SECURITY_POLICY
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert ("content-security-policy", CONTENT_SECURITY_POLICY) in PAGE_HEADERS
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text


def test_page_escapes_what_the_account_controls():
    """Names, labels and tiers are escaped: a key named like a script stays text."""
    source = data(
        account_name=f'"><img src=x>{XSS}',
        tier=XSS,
        endpoints=[EndpointUsage(XSS, XSS, 1, 1, 1)],
        keys=[KeyLine(XSS, XSS, NOW, None, XSS)],
        refused={XSS: 2},
        days=[DayUsage(XSS, 1, 1, 1)],
    )
    text = render_page(source)
    page = Page(text)
    assert XSS not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "script" not in page.tags and "img" not in page.tags
    assert sum(XSS in chunk for chunk in page.text) >= 5


def test_page_edges():
    """No days, one day, 400 days, huge numbers, a zero limit and no limits all render."""
    empty = Page(render_page(data(days=[], endpoints=[], refused={}, keys=[])))
    assert empty.bars == [] and empty.value("total-calls") == 0
    assert "No usage recorded in this range." in empty.words
    assert "No refused calls this period." in empty.words

    one = Page(render_page(data(days=[DayUsage("2026-04-12", 0, 0, 0)])))
    assert len(one.bars) == 1 and one.bars[0]["height"] == "0.0"

    text = render_page(data(days=days(400)))
    many = Page(text)
    assert len(many.bars) == 400
    assert all(float(str(b["width"])) > 0 for b in many.bars)
    assert len(text) < 200_000

    huge = 12_345_678_901_234
    big = Page(render_page(data(monthly_requests=huge, monthly_limit=None, balance=huge)))
    assert big.value("monthly-requests") == huge
    assert "12,345,678,901,234" in big.words
    assert "unlimited" in big.words and "data-value" not in big.ids["monthly-limit"]

    unlimited = Page(render_page(data(monthly_credits_limit=None, per_minute=None, balance=None)))
    assert "balance" not in unlimited.ids and "per-minute" not in unlimited.ids
    assert "No limit" in unlimited.words


def test_gauge_is_capped_but_numbers_are_honest():
    """Over the limit, the arc stops at 100% while the numbers say how far over it is."""
    text = render_page(data(monthly_requests=12_000, monthly_limit=10_000))
    assert 'stroke-dasharray="100.0 100"' in text
    assert "120%" in text and "over by 2,000" in text
    zero = render_page(data(monthly_requests=0, monthly_limit=0))
    page = Page(zero)
    assert page.value("monthly-limit") == 0 and page.value("monthly-requests") == 0
    assert 'stroke-dasharray="100.0 100"' in zero
    none_used = render_page(data(monthly_requests=0, monthly_credits=0))
    assert "stroke-dasharray" not in none_used  # an empty arc draws no dot


def test_denied_page():
    """The 401 page uses the same style, asks for a new link, and escapes its reason."""
    text = render_denied()
    page = Page(text)
    assert page.styles == [STYLE] and "script" not in page.tags
    assert "invalid or has expired" in text and "new link" in text
    assert XSS not in render_denied(XSS)


# In a real browser


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium) to test the page")
    return path


class CSPHandler(SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        for name, value in PAGE_HEADERS:
            if name != "content-type":
                self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server over a folder, sending the page's headers; (base URL, folder)."""
    root = tmp_path / "site"
    root.mkdir()
    handler = functools.partial(CSPHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def browse(chromium: str, profile: Path, url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *flags,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def csp_messages(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "Content Security Policy" in line or "Refused to" in line
    ]


@pytest.mark.slow
def test_browser_reports_csp_violations(chromium, site, tmp_path):
    """The check works: a page with an inline style attribute is reported under our CSP."""
    base, root = site
    (root / "bad.html").write_text('<!doctype html><p style="color:red">red</p>')
    result = browse(chromium, tmp_path / "profile", f"{base}/bad.html", "--dump-dom")
    assert csp_messages(result.stderr)


@pytest.mark.slow
def test_page_in_a_browser(chromium, site, tmp_path):
    """Chromium renders the page under its CSP with no violation, at phone and desktop size."""
    base, root = site
    (root / "page.html").write_text(
        render_page(data(keys=[KeyLine("k", XSS, NOW, None, "active")]))
    )
    (root / "denied.html").write_text(render_denied())
    profile = tmp_path / "profile"

    result = browse(chromium, profile, f"{base}/page.html", "--dump-dom")
    assert not csp_messages(result.stderr)
    dom = Page(result.stdout)
    assert len(dom.bars) == 90
    assert dom.value("total-calls") == sum(d.calls for d in days(90))
    assert "script" not in dom.tags

    for size in ("390,844", "1280,900"):
        shot = tmp_path / f"page-{size.replace(',', 'x')}.png"
        result = browse(
            chromium, profile, f"{base}/page.html", f"--screenshot={shot}", f"--window-size={size}"
        )
        assert not csp_messages(result.stderr)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 10_000

    result = browse(chromium, profile, f"{base}/denied.html", "--dump-dom")
    assert not csp_messages(result.stderr)
    assert "Link not valid" in result.stdout
