"""`meterware copy`: a SQLite deployment (keys, rotated secrets, counters, usage) copied
into a fresh PostgreSQL schema, checked through the storage contract, in process and as
a real CLI process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meterware import Admin
from meterware.keys import SecretHasher
from meterware.storage import Claim, Rollup, Storage, UsageBatch, storage_from_url
from meterware.storage.memory import MemoryStorage
from meterware.storage.sqlite import SQLiteStorage
from meterware.storage.transfer import TransferError, copy, copy_urls, export
from tests.backends import PostgresBackend, require_postgres
from tests.utils import bearer, serve, starlette_app

PEPPER = "copy-test-pepper"
HASHER = SecretHasher(pepper=PEPPER)
FAR_DAYS = ("2000-01-01", "2100-01-01")


@pytest.fixture
async def postgres() -> AsyncIterator[PostgresBackend]:
    """A fresh PostgreSQL schema (`...?schema=mw_test_<hex>`), dropped afterwards."""
    backend = PostgresBackend(require_postgres())
    yield backend
    await backend.cleanup()


class Deployment:
    """A store with what a real deployment accumulates, and the secrets of its keys."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}  # name -> secret (current, in grace, expired)
        self.key_ids: dict[str, str] = {}


async def fill(store: Storage) -> Deployment:
    """Keys of two accounts (one rotated twice: one old secret expired, one in a grace
    period; one revoked; one site key with overrides), traffic through the middleware,
    and older usage, counters and labels written directly."""
    d = Deployment()
    now = time.time()

    async def key(name: str, **fields: Any) -> str:
        made, secret = await Admin(store, pepper=PEPPER, clock=lambda: now).create_key(
            name=name, **fields
        )
        d.secrets[name] = secret
        d.key_ids[name] = made.id
        return made.id

    rotated = await key("rotated", account_id="acct_a", tier="pro", monthly_limit=500)
    site = await key(
        "site",
        account_id="acct_a",
        permission="site_access",
        website_id="site_1",
        per_minute=7,
        monthly_credits=9000,
        billing_anchor_day=15,
        expires_at=now + 30 * 86400,
    )
    revoked = await key("revoked", account_id="acct_b", tier="enterprise")
    await key("plain", account_id="acct_b", tier="scale")

    # Traffic through the real request path (counters, rollups, totals, last use).
    app = starlette_app(store, time.time, pepper=PEPPER)
    async with serve(app) as client:
        for name, path, times in [
            ("rotated", "/image", 4),
            ("rotated", "/hello", 2),
            ("site", "/sites/site_1/stats", 3),
            ("plain", "/image", 5),
            ("revoked", "/image", 1),
        ]:
            for _ in range(times):
                method = client.post if path == "/image" else client.get
                answer = await method(path, headers=bearer(d.secrets[name]))
                assert answer.status_code == 200, (name, path, answer.text)
    await store.update_key(revoked, revoked_at=now)

    # Rotations: the first secret expired (grace 0), the second in a one-hour grace.
    d.secrets["rotated_expired"] = d.secrets["rotated"]
    _, second = await Admin(store, pepper=PEPPER, clock=lambda: now - 5).rotate_key(rotated)
    assert second is not None
    d.secrets["rotated_grace"] = second
    _, third = await Admin(store, pepper=PEPPER, clock=lambda: now).rotate_key(rotated, grace=3600)
    assert third is not None
    d.secrets["rotated"] = third

    # Older history: other days, an account-level rollup, requests that cost nothing, an
    # account's counter and credits counted past their limit.
    await store.record(
        UsageBatch(
            rollups=[
                Rollup("acct_a", rotated, "code_export", "2026-01-03", 7, 105, 7, now - 86400 * 9),
                Rollup("acct_a", site, "figma_export", "2026-01-04", 2, 20),
                Rollup("acct_b", "", "image_to_html", "2026-01-05", 3, 90),
                Rollup("acct_a", site, "upload", "2026-01-06", 0, 0, 2, now - 86400 * 40),
            ],
            labels={"code_export": "Export Code", "figma_export": "Figma Export"},
        )
    )
    far = now + 86400 * 20
    await store.reserve([Claim("month:@acct_b", 9, 2**62, far)], now)
    await store.reserve([Claim(f"credits:{site}", 20, 2**62, far)], now)
    return d


async def assert_same(source: Storage, dest: Storage, d: Deployment) -> None:
    """Every key resolves by hash alike, and counters, usage, totals and labels agree."""
    now = time.time()
    for name, secret in d.secrets.items():
        digest = HASHER.hash(secret)
        assert await dest.find_key(digest, now) == await source.find_key(digest, now), name
    assert await dest.find_key(HASHER.hash(d.secrets["rotated_expired"]), now) is None
    grace = await dest.find_key(HASHER.hash(d.secrets["rotated_grace"]), now)
    assert grace is not None and grace.expires_at is not None
    assert grace.expires_at - now == pytest.approx(3600, abs=60)  # still in its grace

    assert (
        [a.id for a in await dest.list_accounts()]
        == [a.id for a in await source.list_accounts()]
        == ["acct_a", "acct_b"]
    )
    assert await dest.list_keys() == await source.list_keys()
    assert await dest.labels() == await source.labels()
    snapshot = await export(source)
    assert snapshot.counters  # the traffic reserved quota
    for counter, (end, count) in snapshot.counters.items():
        assert end > now, counter  # every window of the deployment is live
        assert await dest.counter(counter, now) == count, counter
    for key in await source.list_keys():
        assert await dest.key_totals(key.id) == await source.key_totals(key.id)
        first, last = FAR_DAYS
        for key_id in (key.id, None):
            want = await source.usage(
                account_id=key.account_id, key_id=key_id, first_day=first, last_day=last
            )
            got = await dest.usage(
                account_id=key.account_id, key_id=key_id, first_day=first, last_day=last
            )
            assert got == want and want, key.name
    assert await export(dest) == snapshot


@pytest.mark.postgres
async def test_sqlite_deployment_copied_into_postgres(tmp_path: Path, postgres: PostgresBackend):
    """SQLite into a new PostgreSQL schema: secrets resolve alike; counters, usage, totals too."""
    source_url = f"sqlite:///{tmp_path}/old.db"
    async with SQLiteStorage(source_url) as source:
        d = await fill(source)

    report = await copy_urls(source_url, postgres.url, now=time.time())

    assert (report.accounts, report.keys, report.secrets) == (2, 4, 6)
    assert (report.current_secrets, report.retiring_secrets, report.expired_secrets) == (4, 1, 1)
    assert report.calls == 4 + 5 + 1 + 7 + 2 + 3 and report.labels == 3  # /image costs 30
    assert report.requests == 4 + 2 + 3 + 5 + 1 + 7 + 2  # traffic, then older history
    async with SQLiteStorage(source_url) as source, postgres.new() as dest:
        await assert_same(source, dest, d)
        summary = (await dest.usage(account_id="acct_a", key_id=None, first_day="2026-01-01",
                                    last_day="2100-01-01"))  # fmt: skip
        assert sum(r.credits for r in summary) == 4 * 30 + 105 + 20


@pytest.mark.postgres
async def test_copied_store_serves_the_same_keys(tmp_path: Path, postgres: PostgresBackend):
    """An app on the copy admits current and in-grace secrets; refuses expired and revoked ones."""
    source_url = f"sqlite:///{tmp_path}/old.db"
    async with SQLiteStorage(source_url) as source:
        d = await fill(source)
    await copy_urls(source_url, postgres.url, now=time.time())

    dest = postgres.new()
    app = starlette_app(dest, time.time, pepper=PEPPER)
    async with serve(app) as client:
        codes = {
            name: (await client.get("/hello", headers=bearer(d.secrets[name]))).status_code
            for name in ("rotated", "rotated_grace", "rotated_expired", "revoked", "plain")
        }
        status = (await client.get("/whoami", headers=bearer(d.secrets["plain"]))).json()
    assert codes == {
        "rotated": 200, "rotated_grace": 200, "rotated_expired": 401, "revoked": 401, "plain": 200,
    }  # fmt: skip
    assert status["key"] == d.key_ids["plain"]
    async with postgres.new() as check:
        totals = await check.key_totals(d.key_ids["plain"])
    assert totals.requests == 5 + 2  # 5 copied, then /hello and /whoami on the copy


@pytest.mark.postgres
async def test_postgres_back_into_sqlite(tmp_path: Path, postgres: PostgresBackend):
    """PostgreSQL copied into a new SQLite file is identical (checks the PostgreSQL reader)."""
    async with postgres.new() as source:
        d = await fill(source)
    dest_url = f"sqlite:///{tmp_path}/back.db"
    await copy_urls(postgres.url, dest_url, now=time.time())
    async with postgres.new() as source, SQLiteStorage(dest_url) as dest:
        await assert_same(source, dest, d)


async def test_refusals(tmp_path: Path):
    """Non-empty destination, same store, missing source: refused; nothing written or created."""
    source_url, dest_url = f"sqlite:///{tmp_path}/a.db", f"sqlite:///{tmp_path}/b.db"
    async with SQLiteStorage(source_url) as source:
        await fill(source)
    await copy_urls(source_url, dest_url, now=time.time())
    async with SQLiteStorage(dest_url) as dest:
        before = await export(dest)

    with pytest.raises(TransferError, match="not empty"):
        await copy_urls(source_url, dest_url, now=time.time())
    with pytest.raises(TransferError, match="exist in both stores"):
        await copy_urls(source_url, dest_url, merge=True, now=time.time())
    with pytest.raises(TransferError, match="same store"):
        await copy_urls(source_url, f"sqlite:///{tmp_path}/./a.db", now=time.time())
    with pytest.raises(TransferError, match="no meterware store"):
        await copy_urls(f"sqlite:///{tmp_path}/typo.db", dest_url, now=time.time())
    assert not (tmp_path / "typo.db").exists()
    async with SQLiteStorage(dest_url) as dest:
        assert await export(dest) == before


async def test_merge_adds_keys_and_sums_usage():
    """--merge adds the other store's keys, sums usage and counters, keeps the labels there."""
    now = time.time()
    one, two, dest = MemoryStorage(), MemoryStorage(), MemoryStorage()
    for store, label in ((one, "Image → HTML"), (two, "Image to HTML (old)")):
        key, _ = await Admin(store, pepper=PEPPER, clock=lambda: now).create_key(
            name="k", account_id="acct_a"
        )
        await store.record(
            UsageBatch(
                rollups=[
                    Rollup("acct_a", "", "image_to_html", "2026-01-05", 3, 90),
                    Rollup("acct_a", key.id, "lookup", "2026-01-05", 0, 0, 3, now),
                ],
                labels={"image_to_html": label},
            )
        )
        await store.reserve([Claim("month:@acct_a", 3, 2**62, now + 86400)], now)
    await copy(one, dest, now=now)
    report = await copy(two, dest, merge=True, now=now)

    assert report.merged and report.keys == 1
    assert len(await dest.list_keys("acct_a")) == 2
    assert await dest.counter("month:@acct_a", now) == 6
    rows = await dest.usage(account_id="acct_a", key_id="", first_day="2026-01-01",
                            last_day="2026-12-31")  # fmt: skip
    assert [(r.calls, r.credits) for r in rows] == [(6, 180)]
    assert await dest.labels() == {"image_to_html": "Image → HTML"}
    with pytest.raises(TransferError, match="not empty"):
        await copy(two, dest, now=now)


# -- the command ---------------------------------------------------------------------


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meterware.cli", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def ok_json(*args: str, env: dict[str, str]) -> Any:
    done = run(*args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.postgres
@pytest.mark.slow
async def test_copy_command(tmp_path: Path, postgres: PostgresBackend):
    """`meterware copy` as a process: CLI-made keys work on PostgreSQL; a second copy exits 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWARE_")}
    env["METERWARE_PEPPER"] = PEPPER
    sqlite_url = f"sqlite:///{tmp_path}/cli.db"
    made = ok_json("keys", "create", "--name", "A", "--account", "acct_c", "--storage",
                   sqlite_url, env=env)  # fmt: skip
    other = ok_json("keys", "create", "--name", "B", "--tier", "pro", "--monthly-limit", "77",
                    "--storage", sqlite_url, env=env)  # fmt: skip
    rotated = ok_json("keys", "rotate", made["id"], "--grace", "600", "--storage", sqlite_url,
                      env=env)  # fmt: skip

    summary = ok_json("copy", sqlite_url, postgres.url, env=env)
    text = run("copy", sqlite_url, postgres.url, env=env)

    assert summary["accounts"] == 2 and summary["keys"] == 2 and summary["secrets"] == 3
    assert summary["retiring_secrets"] == 1 and summary["merged"] is False
    assert summary["source"] == sqlite_url and summary["destination"] == postgres.url
    assert text.returncode == 1 and text.stdout == ""
    assert text.stderr.count("\n") == 1 and "not empty" in text.stderr, text.stderr
    listed = ok_json("keys", "list", "--storage", postgres.url, env=env)
    assert listed == ok_json("keys", "list", "--storage", sqlite_url, env=env)
    shown = ok_json("keys", "show", other["id"], "--storage", postgres.url, env=env)
    assert shown["quota"]["monthly_limit"] == 77
    async with storage_from_url(postgres.url) as dest:
        now = time.time()
        for secret in (made["key"], rotated["key"], other["key"]):
            found = await dest.find_key(HASHER.hash(secret), now)
            assert found is not None and found.id in (made["id"], other["id"])
        old = await dest.find_key(HASHER.hash(made["key"]), now)
        assert old is not None and old.expires_at == pytest.approx(now + 600, abs=60)

    human = run("copy", sqlite_url, f"sqlite:///{tmp_path}/copy2.db", env=env)
    assert human.returncode == 0, human.stderr
    assert "secrets:   3 (2 current, 1 in a grace period, 0 expired)" in human.stdout
    assert "METERWARE_PEPPER" in human.stdout
