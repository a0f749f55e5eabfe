"""The README's examples hold: every script of `examples/snippets/` runs and prints what the
README shows, the parts of them the README quotes are in the files, every Python block
compiles, every `meterware` command line parses, and every link to a section finds it.

The scripts run as subprocesses, all at once (each on a SQLite file of its own in a
temporary directory), so the whole module takes a few seconds.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterware.cli import main, parser
from meterware.cli.args import UsageError

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SNIPPETS = ROOT / "examples" / "snippets"
TIMEOUT = 60  # seconds a script may take (they take 0.3-2.5 s)

# What each script prints: one pattern per line (a regular expression, matched whole).
ID = r"[0-9a-f]{16}"
DAY = r"\d{4}-\d{2}-\d{2}"
PRINTS: dict[str, list[str]] = {
    "signup.py": [
        rf"account acct_{ID} \(Acme Inc\.\) on the free plan",
        rf"key key_{ID} follows the account's plan: True",
        r"secret mw_[0-9A-Za-z]{4}… \(41 characters, shown once\)",
        rf"Conflict \(HTTP 409, exit status 5\): external id 'cust_1042' belongs to account "
        rf"acct_{ID}",
    ],
    "upgrade.py": [
        re.escape("free plan: [200, 200, 200, 429]"),
        r"pro plan: admitted (?P<lag>\d+\.\d) s after the upgrade",
        r'limits now: "minute";q=600;w=60, "month";q=10000;w=\d+',
    ],
    "rotate_key.py": [
        "during the grace period: old 200, new 200",
        "after it: old 401, new 200",
    ],
    "monthly_usage.py": [
        "convert  305 calls, 3050 credits, 16 refused",
        "export   94 calls, 2350 credits, 0 refused",
        re.escape("busiest day: 2026-03-14 (33 calls)"),
        "acct_acme: 2 keys, 3650 credits",
        "account,requests,calls,credits",
        "acct_acme,272,272,3650",
        "acct_globex,127,127,1750",
    ],
    "prepaid.py": [
        re.escape("7 calls of 30 credits: [200, 200, 200, 200, 200, 200, 402]"),
        "balance: 10",
        "  trial: 40 used, 0 left",
        "  order_8812: 90 used, 10 left",
        rf"  {DAY} grant order_8812 -      \+100",
        rf"  {DAY} grant trial      -      \+40",
        rf"  {DAY} use   order_8812 render -90",
        rf"  {DAY} use   trial      render -40",
    ],
    "notices.py": [
        rf"key\.created      key_{ID}  \{{'name': 'Production Key'\}}",
        *(
            rf"quota\.threshold  key_{ID}  \{{'percent': {p}, 'used': {u}, 'limit': 10, .*\}}"
            for p, u in ((50, 5), (80, 8), (100, 10))
        ),
    ],
    "portal_link.py": [
        re.escape("https://api.example.com/portal/?token=v1.…"),
        re.escape("200 text/html; charset=utf-8 True"),
        re.escape("CSP: default-src 'none'"),
        "tampered: 401",
    ],
    "export_outbox.py": [
        "export:jsonl: sent 3, cursor at 3",
        "export:jsonl: sent 0, cursor at 3",
        "replay: sent 3, cursor at 3",
        "usage.jsonl: 3 events, 55 credits",
        r"\{'id': 'mwu_[0-9a-f]{8}_1', 'account_id': 'acct_acme', 'action': 'image_to_html', "
        r"'calls': 1, 'credits': 30\}",
    ],
    "webhook_receiver.py": [
        "acct_acme is at 80% of its monthly quota",
        "notice: 204",
        "retry: 204",
        "forged: 400",
    ],
}
HELPERS = {"serving.py", "gunicorn_conf.py"}  # imported by others, or by gunicorn

# Command lines the README shows failing, and the exit status it shows.
FAILING = {"meterware accounts set-tier acct_acme gold": 3}


def clean_env() -> dict[str, str]:
    """The environment without meterware's variables (the scripts choose their own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}


def run_script(name: str) -> subprocess.Popen[str]:
    """`python -W error examples/snippets/<name>`, started."""
    return subprocess.Popen(
        [sys.executable, "-W", "error", str(SNIPPETS / name)],
        cwd=ROOT,
        env=clean_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="module")
def ran() -> dict[str, subprocess.CompletedProcess[str]]:
    """Every script run once, all at the same time; its result by file name."""
    started = {name: run_script(name) for name in PRINTS}
    results = {}
    for name, process in started.items():
        try:
            out, err = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return results


# -- the scripts ---------------------------------------------------------------------------


def test_every_script_is_checked() -> None:
    """Each file of examples/snippets/ is run here, or is a helper."""
    assert {p.name for p in SNIPPETS.glob("*.py")} == set(PRINTS) | HELPERS


@pytest.mark.parametrize("name", sorted(PRINTS))
def test_script_runs_and_prints_what_the_readme_shows(
    name: str, ran: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    """The script exits 0, with no warning, and prints the promised lines."""
    result = ran[name]
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == len(PRINTS[name]), result.stdout
    for line, pattern in zip(lines, PRINTS[name], strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)


def test_the_upgrade_arrives_within_key_refresh(
    ran: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    """The upgraded key is admitted within key_refresh (1 s) and a poll's slack."""
    found = re.search(r"admitted (\d+\.\d) s", ran["upgrade.py"].stdout)
    assert found is not None and float(found.group(1)) <= 1.5


def test_gunicorn_config_empties_the_metrics_directory(tmp_path: Path) -> None:
    """gunicorn_conf.py's on_starting removes a former run's files; child_exit runs."""
    (tmp_path / "counter_123.db").write_bytes(b"")
    (tmp_path / "keep.txt").write_text("not a metrics file")
    code = (
        "import runpy, types\n"
        f"conf = runpy.run_path({str(SNIPPETS / 'gunicorn_conf.py')!r})\n"
        "conf['on_starting'](None)\n"
        "conf['child_exit'](None, types.SimpleNamespace(pid=123))\n"
    )
    env = {**clean_env(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


# -- the README's blocks ---------------------------------------------------------------------


def blocks(language: str) -> Iterator[str]:
    """The text of every fenced block of `language`."""
    for found in re.finditer(rf"^```{language}\n(.*?)^```$", README, re.S | re.M):
        yield found.group(1)


QUOTED = re.compile(r"# (examples/snippets/\w+\.py)")


def test_every_python_block_compiles() -> None:
    """Each ```python block is valid Python (a quoted part taken out of its function:
    dedented, top-level `await` allowed)."""
    found = 0
    for block in blocks("python"):
        lines = block.splitlines()
        if lines and QUOTED.match(lines[0]):
            lines = lines[1:]
        source = textwrap.dedent("\n".join(lines))
        compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        found += 1
    assert found >= 15


def test_quoted_snippets_are_in_their_files() -> None:
    """A block that names a snippet quotes it: its lines (but `...`) are lines of the
    file, in the file's order."""
    quoted = 0
    for block in blocks("python"):
        lines = block.splitlines()
        named = QUOTED.match(lines[0]) if lines else None
        if named is None:
            continue
        quoted += 1
        source = (ROOT / named.group(1)).read_text().splitlines()
        at = 0
        for line in lines[1:]:
            if not line.strip() or line.strip() == "...":
                continue
            try:
                at = source.index(line, at) + 1
            except ValueError:
                pytest.fail(f"{named.group(1)} has no line {line!r} (in this order)")
    assert quoted >= 9


def command_lines() -> Iterator[str]:
    """Every `meterware ...` command of the ```bash blocks: the lines after a `$ ` prompt
    in a block that has prompts, else every line; continuation lines joined; environment
    assignments, a trailing `; ...` and comments taken off."""
    for block in blocks("bash"):
        raw = block.splitlines()
        prompted = any(line.startswith("$ ") for line in raw)
        joined: list[str] = []
        for line in raw:
            if joined and joined[-1].endswith("\\"):
                joined[-1] = joined[-1][:-1] + " " + line.strip()
            elif not prompted or line.startswith("$ "):
                joined.append(line.removeprefix("$ "))
        for line in joined:
            words = shlex.split(line.split(";")[0], comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if words[:1] == ["meterware"]:
                yield shlex.join(words)


def test_every_command_line_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `meterware` command of the shell blocks is one the command line accepts (the
    ones shown failing fail with the status shown)."""
    for name in list(os.environ):
        if name.startswith("METERWARE_"):
            monkeypatch.delenv(name)
    commands = list(command_lines())
    assert len(commands) >= 20
    for command in commands:
        argv = shlex.split(command)[1:]
        if command in FAILING:
            with pytest.raises(UsageError) as refused:
                parser().parse_args(argv)
            assert refused.value.status == FAILING[command]
            continue
        try:
            parser().parse_args(argv)
        except UsageError as exc:
            pytest.fail(f"{command}: {exc}")
    assert set(FAILING) <= set(commands)


def test_every_command_in_the_text_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `meterware ...` in running text names a command that answers --help (its
    arguments, where given, accepted up to there)."""
    for name in list(os.environ):
        if name.startswith("METERWARE_"):
            monkeypatch.delenv(name)
    prose = re.sub(r"^```.*?^```$", "", README, flags=re.S | re.M)
    spans = set(re.findall(r"`(meterware [^`]+)`", prose))
    assert len(spans) >= 10
    for span in sorted(spans):
        words = [w for w in shlex.split(span) if w not in ("...", "…")][1:]
        with contextlib.redirect_stdout(io.StringIO()):
            status = main([*words, "--help"])
        assert status == 0, span


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_section_link_finds_its_section() -> None:
    """Each `](#anchor)` of the README names one of its headings."""
    prose = re.sub(r"^```.*?^```$", "", README, flags=re.S | re.M)
    anchors = {slug(h) for h in re.findall(r"^#{1,4} (.+)$", prose, re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", prose))
    assert links and links <= anchors, sorted(links - anchors)


def test_the_readme_shows_the_screenshot() -> None:
    """The usage page's screenshot is shown, and is there."""
    assert re.search(r"!\[[^\]]+\]\(docs/portal\.png\)", README)
    assert (ROOT / "docs" / "portal.png").is_file()
