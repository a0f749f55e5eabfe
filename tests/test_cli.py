"""The `meterware` command, run as a real process against a SQLite file in `tmp_path`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from meterware.keys import SecretHasher
from meterware.storage import Rollup, UsageBatch, storage_from_url
from meterware.tiers import DEFAULT_TIERS, LEGACY_TIERS

PEPPER = "cli-test-pepper"
SECRET = re.compile(r"mw_[0-9A-Za-z]{38}")  # 32 random base62 characters and a checksum
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class Cli:
    """Runs `python -m meterware.cli ... --storage sqlite:///<tmp>/meterware.db`."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "meterware.db"
        self.url = f"sqlite:///{self.path}"  # absolute path: sqlite:////...
        self.cwd = tmp_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
        self.env["METERWARE_PEPPER"] = PEPPER

    def run(self, *args: str, storage: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "meterware.cli", *args, "--storage", storage or self.url]
        return subprocess.run(
            command, capture_output=True, text=True, env=self.env, cwd=self.cwd, timeout=60
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, *args: str, storage: str | None = None) -> str:
        """The one line on stderr of a command that must fail."""
        done = self.run(*args, storage=storage)
        assert done.returncode != 0
        assert "Traceback" not in done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert done.stdout == ""
        return done.stderr.strip()

    async def find(self, secret: str) -> Any:
        """The key this secret resolves to in the store now, as the middleware would."""
        async with storage_from_url(self.url) as store:
            return await store.find_key(SecretHasher(pepper=PEPPER).hash(secret), time.time())


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def next_month_start(ts: float) -> str:
    now = datetime.fromtimestamp(ts, tz=timezone.utc)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return f"{year:04d}-{month:02d}-01T00:00:00.000Z"


# -- create ---------------------------------------------------------------------------


def test_create_prints_the_secret_once_with_a_warning(cli: Cli) -> None:
    """The table output has the secret and says it will not be shown again."""
    out = cli.ok("keys", "create", "--name", "CI key")
    assert len(SECRET.findall(out)) == 1
    assert "will not be shown again" in out
    assert "CI key" in out


async def test_create_json_has_the_key_and_creates_its_account(cli: Cli) -> None:
    """--json gives id, secret, name, new account, tier, permission and ISO-ms times."""
    made = cli.json("keys", "create", "--name", "CI key")
    assert SECRET.fullmatch(made["key"])
    assert made["name"] == "CI key"
    assert made["tier"] == "free"
    assert made["permission"] == "full_access"
    assert made["website_id"] is None
    assert made["expires_at"] is None
    assert ISO_MS.fullmatch(made["created_at"])
    assert made["account"].startswith("acct_")
    async with storage_from_url(cli.url) as store:
        assert made["account"] in [a.id for a in await store.list_accounts()]
    assert (await cli.find(made["key"])).id == made["id"]


def test_create_with_every_option(cli: Cli) -> None:
    """Account, site access, overrides and expiry are stored as given."""
    made = cli.json(
        "keys", "create", "--name", "widget", "--account", "acct_7", "--tier", "pro",
        "--permission", "site_access", "--website-id", "site_1", "--per-minute", "5",
        "--monthly-limit", "50", "--monthly-credits", "900", "--billing-anchor-day", "15",
        "--expires-in", "1",
    )  # fmt: skip
    assert (made["account"], made["permission"], made["website_id"]) == (
        "acct_7", "site_access", "site_1",
    )  # fmt: skip
    assert made["overrides"] == {
        "per_minute": 5, "monthly_limit": 50, "monthly_credits": 900, "billing_anchor_day": 15,
    }  # fmt: skip
    created = datetime.fromisoformat(made["created_at"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(made["expires_at"].replace("Z", "+00:00"))
    assert (expires - created).total_seconds() == pytest.approx(86_400, abs=0.002)


def test_legacy_tier_is_accepted_and_kept(cli: Cli) -> None:
    """`professional` is stored under its own name and limited as `scale`."""
    made = cli.json("keys", "create", "--name", "old", "--tier", "professional")
    shown = cli.json("keys", "show", made["id"])
    assert made["tier"] == shown["tier"] == shown["quota"]["tier"] == "professional"
    assert shown["quota"]["monthly_limit"] == 100_000
    assert shown["quota"]["requests_per_minute"] == 60


def test_unknown_tier_fails_in_one_line_and_touches_nothing(cli: Cli) -> None:
    """An unknown tier exits non-zero with one line naming the known tiers; no store is made."""
    line = cli.fails("keys", "create", "--name", "x", "--tier", "gold")
    assert "unknown tier 'gold'" in line
    assert "free" in line
    assert "professional" in line
    assert not cli.path.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--name", "x", "--per-minute", "-5"], "--per-minute"),
        (["keys", "create", "--name", "x", "--permission", "admin"], "invalid choice"),
        (["keys", "create", "--name", "x", "--permission", "site_access"], "website id"),
        (["keys", "show", "key_nope"], "no key 'key_nope'"),
        (["keys", "revoke", "key_nope"], "no key 'key_nope'"),
        (["keys", "rotate", "key_nope"], "no key 'key_nope'"),
    ],
    ids=["negative", "permission", "site-without-website", "show", "revoke", "rotate"],
)
def test_bad_input_fails_in_one_line(cli: Cli, args: list[str], message: str) -> None:
    """Bad numbers, permissions and unknown key ids exit non-zero with one stderr line."""
    assert message in cli.fails(*args)


# -- list and show --------------------------------------------------------------------


def test_list_and_show_never_print_the_secret(cli: Cli) -> None:
    """Neither list nor show, as table or JSON, contains the secret or its hash."""
    made = cli.json("keys", "create", "--name", "one", "--account", "acct_1")
    cli.ok("keys", "create", "--name", "two", "--account", "acct_2")
    digest = SecretHasher(pepper=PEPPER).hash(made["key"])
    outputs = [
        cli.ok("keys", "list"),
        cli.ok("keys", "list", "--json"),
        cli.ok("keys", "show", made["id"]),
        cli.ok("keys", "show", made["id"], "--json"),
    ]
    assert made["id"] in outputs[0]
    assert "two" in outputs[0]
    assert "active" in outputs[0]
    for out in outputs:
        assert made["key"] not in out
        assert digest not in out
        assert not SECRET.search(out)
    only = cli.json("keys", "list", "--account", "acct_1")
    assert [k["id"] for k in only] == [made["id"]]


def test_show_reports_a_fresh_keys_quota(cli: Cli) -> None:
    """A new free key: 0 of 1000 this month, reset at the first instant of next month."""
    made = cli.json("keys", "create", "--name", "fresh")
    before = time.time()
    quota = cli.json("keys", "show", made["id"])["quota"]
    after = time.time()
    assert quota["monthly_requests"] == 0
    assert quota["monthly_limit"] == 1000
    assert quota["monthly_remaining"] == 1000
    assert quota["requests_per_minute"] == 10
    assert quota["total_requests"] == 0
    assert quota["monthly_reset_at"] in {next_month_start(before), next_month_start(after)}
    assert "0 of 1000 requests" in cli.ok("keys", "show", made["id"])


async def test_show_reads_the_stored_counters_and_overrides(cli: Cli) -> None:
    """Show reports the month's count from the store against the key's own limit."""
    made = cli.json("keys", "create", "--name", "busy", "--monthly-limit", "50")
    async with storage_from_url(cli.url) as store:
        today = time.strftime("%Y-%m-%d", time.gmtime())
        rollup = Rollup(made["account"], made["id"], "search", today, 0, 0, 7, time.time())
        await store.record(UsageBatch(rollups=[rollup]))
    quota = cli.json("keys", "show", made["id"])["quota"]
    assert (quota["monthly_requests"], quota["monthly_limit"], quota["monthly_remaining"]) == (
        7, 50, 43,
    )  # fmt: skip


# -- revoke and rotate ----------------------------------------------------------------


async def test_revoke_makes_the_key_inactive(cli: Cli) -> None:
    """After revoke, show says revoked and the secret's key is no longer active."""
    made = cli.json("keys", "create", "--name", "doomed")
    revoked = cli.json("keys", "revoke", made["id"])
    assert revoked["status"] == "revoked"
    assert ISO_MS.fullmatch(revoked["revoked_at"])
    assert cli.json("keys", "show", made["id"])["status"] == "revoked"
    assert "revoked" in cli.ok("keys", "list")
    key = await cli.find(made["key"])
    assert key is not None
    assert not key.active(time.time())
    assert cli.json("keys", "revoke", made["id"])["revoked_at"] == revoked["revoked_at"]


async def test_rotate_with_grace_keeps_both_secrets_working(cli: Cli) -> None:
    """Within the grace period the old and the new secret both resolve to the key."""
    made = cli.json("keys", "create", "--name", "rolling")
    out = cli.ok("keys", "rotate", made["id"], "--grace", "600")
    assert "will not be shown again" in out
    (new,) = SECRET.findall(out)
    assert new != made["key"]
    old_key, new_key = await cli.find(made["key"]), await cli.find(new)
    assert old_key is not None
    assert new_key is not None
    assert old_key.id == new_key.id == made["id"]


async def test_rotate_without_grace_retires_the_old_secret(cli: Cli) -> None:
    """With --grace 0 only the new secret resolves."""
    made = cli.json("keys", "create", "--name", "rolling")
    rotated = cli.json("keys", "rotate", made["id"], "--grace", "0")
    assert SECRET.fullmatch(rotated["key"])
    assert await cli.find(made["key"]) is None
    assert (await cli.find(rotated["key"])).id == made["id"]


# -- stores and tiers -----------------------------------------------------------------


def test_unreachable_store_fails_in_one_line(cli: Cli) -> None:
    """A PostgreSQL server nobody listens on gives a one-line error, not a traceback."""
    line = cli.fails("keys", "list", storage="postgresql://nobody@127.0.0.1:1/x")
    assert line.startswith("meterware: error:")


def test_unknown_storage_scheme_names_the_known_ones(cli: Cli) -> None:
    """`bogus://` fails in one line listing the schemes meterware knows."""
    line = cli.fails("keys", "list", storage="bogus://x")
    assert "sqlite://" in line
    assert "postgresql://" in line


def test_storage_comes_from_the_environment(cli: Cli) -> None:
    """Without --storage the command uses $METERWARE_STORAGE, not ./meterware.db."""
    other = cli.cwd / "other.db"
    cli.env["METERWARE_STORAGE"] = f"sqlite:///{other}"
    command = [sys.executable, "-m", "meterware.cli", "keys", "create", "--name", "env"]
    subprocess.run(command, check=True, capture_output=True, env=cli.env, cwd=cli.cwd)
    assert other.exists()
    assert not cli.path.exists()
    assert "env" in cli.run("keys", "list", storage=f"sqlite:///{other}").stdout


def test_tiers_json_is_the_default_table(cli: Cli) -> None:
    """`tiers --json` is DEFAULT_TIERS plus the legacy aliases."""
    assert cli.json("tiers") == {
        "tiers": [dataclasses.asdict(t) for t in DEFAULT_TIERS],
        "aliases": dict(LEGACY_TIERS),
    }


def test_console_script_shows_tiers_and_legacy_names() -> None:
    """The installed `meterware` script prints the tiers and `starter -> pro`."""
    script = Path(sys.executable).with_name("meterware")
    if not script.exists():
        pytest.skip("the console script is not installed: pip install -e .")
    out = subprocess.run([script, "tiers"], check=True, capture_output=True, text=True).stdout
    assert "enterprise" in out
    assert "starter -> pro" in out
    assert "professional -> scale" in out
