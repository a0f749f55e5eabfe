"""The storage contract (`meterware.storage.base.Storage`), written once and run against
every backend: memory, a SQLite file and a PostgreSQL schema (fixtures in conftest.py).

Run one backend with its marker: `pytest -m sqlite tests/test_storage_contract.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meterware.errors import ConfigurationError, StorageError
from meterware.keys import Account, ApiKey, SecretHasher
from meterware.storage import (
    Claim,
    Grant,
    KeyTotals,
    Rollup,
    Storage,
    UsageBatch,
    UsageRow,
    storage_from_url,
)
from meterware.storage.base import SCHEMA_VERSION
from meterware.storage.memory import MemoryStorage
from meterware.storage.records import BalanceDraw, CreditGrant, Notice
from meterware.storage.sqlite import SQLiteStorage
from tests.backends import Backend

NOW = 1_776_000_000.0  # 2026-04-12, in epoch seconds
DAY = "2026-04-12"
END = 1_777_593_600.0  # 2026-05-01: the end of April's window
HASHER = SecretHasher()
_created = itertools.count()


def make_key(key_id: str, account_id: str = "acct_a", **fields: Any) -> ApiKey:
    """A key record; each one is created a second after the one before."""
    fields.setdefault("created_at", NOW + next(_created))
    fields.setdefault("name", f"{key_id} name")
    return ApiKey(id=key_id, account_id=account_id, **fields)


async def add_key(
    store: Storage, key_id: str, account_id: str = "acct_a", secret: str = "", **fields: Any
) -> tuple[ApiKey, str]:
    """Create the account if needed and a key in it; the key and its secret."""
    await store.ensure_account(Account(account_id, NOW))
    key = make_key(key_id, account_id, **fields)
    secret = secret or HASHER.new_secret()
    await store.create_key(key, HASHER.hash(secret))
    return key, secret


def rollup(
    key_id: str,
    action: str = "search",
    day: str = DAY,
    calls: int = 1,
    credits: int = 1,
    account_id: str = "acct_a",
    requests: int = 0,
    last: float | None = None,
) -> Rollup:
    return Rollup(account_id, key_id, action, day, calls, credits, requests, last)


async def reserve(
    store: Any, counter: str, want: int, limit: int, end: float = END, now: float = NOW
) -> tuple[int, int]:
    """One claim: (granted, count)."""
    (grant,) = await store.reserve([Claim(counter, want, limit, end)], now)
    assert grant.window_end == end or grant.window_end > now
    return grant.granted, grant.count


# -- lifecycle -------------------------------------------------------------------------


class TestLifecycle:
    async def test_open_is_idempotent(self, store: Storage) -> None:
        """Opening an open store again changes nothing and keeps its data."""
        await store.ensure_account(Account("acct_a", NOW))
        await store.open()
        assert store.opened
        assert [a.id for a in await store.list_accounts()] == ["acct_a"]

    async def test_concurrent_opens_of_one_store(self, backend: Backend) -> None:
        """Several concurrent `open()` calls on one object open it once and all succeed."""
        store = backend.new()
        await asyncio.gather(*(store.open() for _ in range(5)))
        assert store.opened
        assert await store.ensure_account(Account("acct_a", NOW))

    async def test_close_is_idempotent_and_reopen_works(self, store: Storage) -> None:
        """Closing twice is harmless, and the same object opens again with its data."""
        await store.ensure_account(Account("acct_a", NOW))
        await store.close()
        await store.close()
        assert not store.opened
        await store.open()
        assert [a.id for a in await store.list_accounts()] == ["acct_a"]

    async def test_async_with_opens_and_closes(self, backend: Backend) -> None:
        """`async with store` opens it and closes it on the way out."""
        store = backend.new()
        async with store as opened:
            assert opened is store
            assert store.opened
        assert not store.opened

    async def test_schema_version_is_recorded(self, store: Storage) -> None:
        """An opened store reports the current schema version."""
        assert await store.schema_version() == SCHEMA_VERSION


class TestDurability:
    async def test_reopen_keeps_data(self, durable_backend: Backend) -> None:
        """A new store object on the same file or schema sees everything the first wrote."""
        first = durable_backend.new()
        await first.open()
        key, secret = await add_key(first, "key_1", tier="pro")
        await reserve(first, "month:key_1", 5, 10)
        await reserve(first, "credits:key_1", 30, 2**62)
        await first.record(
            UsageBatch(
                rollups=[rollup("key_1", calls=2, credits=30, requests=2, last=NOW + 1)],
                labels={"search": "Search"},
            )
        )
        cursor, _ = await first.key_changes(0)
        await first.close()

        second = durable_backend.new()
        await second.open()
        assert await second.schema_version() == SCHEMA_VERSION
        assert [a.id for a in await second.list_accounts()] == ["acct_a"]
        assert await second.find_key(HASHER.hash(secret), NOW) == key.with_changes(
            last_used_at=NOW + 1
        )
        assert await second.counter("month:key_1", NOW) == 5
        assert await second.counter("credits:key_1", NOW) == 30
        assert await second.usage(
            account_id="acct_a", key_id="key_1", first_day=DAY, last_day=DAY
        ) == [UsageRow(DAY, "search", 2, 30, 2)]
        assert await second.key_totals("key_1") == KeyTotals(2, 2, 30, NOW + 1)
        assert await second.labels() == {"search": "Search"}
        assert await second.key_changes(0) == (cursor, [])
        await second.update_key("key_1", tier="free")
        assert (await second.key_changes(cursor))[1] == ["key_1"]

    async def test_racing_opens_migrate_once(self, durable_backend: Backend) -> None:
        """Several stores (processes) opening a fresh database at once all get the schema."""
        stores = [durable_backend.new() for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        assert [await s.schema_version() for s in stores] == [SCHEMA_VERSION] * 4
        assert await stores[0].ensure_account(Account("acct_a", NOW))
        assert [a.id for a in await stores[3].list_accounts()] == ["acct_a"]

    async def test_newer_schema_is_refused(self, durable_backend: Backend) -> None:
        """A database from a newer meterware is refused with StorageError, not touched."""
        async with durable_backend.new():
            pass
        await durable_backend.set_schema_version(SCHEMA_VERSION + 1)
        store = durable_backend.new()
        with pytest.raises(StorageError, match="upgrade meterware"):
            await store.open()
        assert not store.opened

    async def test_plaintext_secret_is_never_stored(
        self, durable_backend: Backend, tmp_path: Path
    ) -> None:
        """Neither the secret nor a rotated one appears in the stored bytes; hashes do."""
        secret = "mw_PLAINTEXT-secret-must-not-leak-0"
        rotated = "mw_PLAINTEXT-rotated-must-not-leak"
        store = durable_backend.new()
        await store.open()
        await add_key(store, "key_1", secret=secret)
        await store.add_secret("key_1", HASHER.hash(rotated), retire_old_at=NOW + 60)
        await store.record(UsageBatch(rollups=[rollup("key_1", requests=1, last=NOW)]))
        if durable_backend.name == "sqlite":  # the rows are in the -wal file at this point
            assert (tmp_path / "meterware.db-wal").is_file()

        for when in ("open", "closed"):
            raw = await durable_backend.raw_dump()
            assert HASHER.hash(secret).encode() in raw, when  # we are reading the right bytes
            assert HASHER.hash(rotated).encode() in raw, when
            for plaintext in (secret, rotated):
                assert plaintext.encode() not in raw, when
                assert plaintext[3:].encode() not in raw, when
            await store.close()


# -- accounts and keys -----------------------------------------------------------------


class TestAccounts:
    async def test_ensure_account_creates_once(self, store: Storage) -> None:
        """ensure_account says True when it creates the account and False after."""
        assert await store.ensure_account(Account("acct_a", NOW))
        assert not await store.ensure_account(Account("acct_a", NOW + 1))
        assert [a.id for a in await store.list_accounts()] == ["acct_a"]

    async def test_list_accounts_is_sorted(self, store: Storage) -> None:
        """list_accounts gives every account id, sorted."""
        assert [a.id for a in await store.list_accounts()] == []
        for account in ("acct_c", "acct_a", "acct_b"):
            await store.ensure_account(Account(account, NOW))
        assert [a.id for a in await store.list_accounts()] == ["acct_a", "acct_b", "acct_c"]


class TestKeys:
    async def test_create_and_get_round_trip(self, store: Storage) -> None:
        """Every field of a created key comes back unchanged from get_key."""
        key, _ = await add_key(
            store, "key_1", tier="pro", permission="site_access", website_id="site_9",
            expires_at=NOW + 86400.5, revoked_at=NOW + 7200.25, per_minute=120,
            monthly_limit=50_000, monthly_credits=1_000_000, billing_anchor_day=15,
        )  # fmt: skip
        assert await store.get_key("key_1") == key

    async def test_get_unknown_key_is_none(self, store: Storage) -> None:
        """get_key of an id never created is None."""
        assert await store.get_key("key_nope") is None

    async def test_create_key_needs_its_account(self, store: Storage) -> None:
        """A key for an account that does not exist is refused with StorageError."""
        with pytest.raises(StorageError):
            await store.create_key(make_key("key_1", "acct_nope"), HASHER.hash("mw_x"))
        assert await store.get_key("key_1") is None

    async def test_create_key_refuses_a_duplicate_id(self, store: Storage) -> None:
        """A second key with the same id is refused with StorageError."""
        key, _ = await add_key(store, "key_1")
        with pytest.raises(StorageError):
            await store.create_key(make_key("key_1"), HASHER.hash("mw_other"))
        assert await store.get_key("key_1") == key

    async def test_create_key_refuses_a_duplicate_secret(self, store: Storage) -> None:
        """A second key under the same secret hash is refused with StorageError."""
        await add_key(store, "key_1", secret="mw_same")
        with pytest.raises(StorageError):
            await store.create_key(make_key("key_2"), HASHER.hash("mw_same"))
        assert await store.get_key("key_2") is None

    async def test_list_keys_in_creation_order(self, store: Storage) -> None:
        """list_keys gives all keys or one account's, ordered by creation."""
        k1, _ = await add_key(store, "key_b1", "acct_b")
        k2, _ = await add_key(store, "key_a1", "acct_a")
        k3, _ = await add_key(store, "key_b2", "acct_b")
        assert await store.list_keys() == [k1, k2, k3]
        assert await store.list_keys("acct_b") == [k1, k3]
        assert await store.list_keys("acct_a") == [k2]
        assert await store.list_keys("acct_nope") == []

    async def test_find_key_by_secret_hash(self, store: Storage) -> None:
        """find_key gives the key whose secret has this hash."""
        key, secret = await add_key(store, "key_1")
        await add_key(store, "key_2")
        assert await store.find_key(HASHER.hash(secret), NOW) == key

    async def test_find_key_refuses_an_unknown_hash(self, store: Storage) -> None:
        """find_key of a hash no key has is None."""
        await add_key(store, "key_1")
        assert await store.find_key(HASHER.hash("mw_never_issued"), NOW) is None

    async def test_find_key_returns_revoked_and_expired_keys(self, store: Storage) -> None:
        """find_key still returns a revoked or expired key; ApiKey.active() tells."""
        _, secret = await add_key(store, "key_1", expires_at=NOW - 10)
        await store.update_key("key_1", revoked_at=NOW - 5)
        found = await store.find_key(HASHER.hash(secret), NOW)
        assert found is not None
        assert found.revoked_at == NOW - 5
        assert not found.active(NOW)

    async def test_rotation_keeps_the_old_secret_for_the_grace_period(self, store: Storage) -> None:
        """After add_secret the old secret works until retire_old_at, the new one always."""
        key, old = await add_key(store, "key_1")
        new = HASHER.new_secret()
        await store.add_secret("key_1", HASHER.hash(new), retire_old_at=NOW + 60)
        # Seen through the retiring secret, the key expires when the secret retires.
        retiring = key.with_changes(expires_at=NOW + 60)
        assert await store.find_key(HASHER.hash(old), NOW) == retiring
        assert await store.find_key(HASHER.hash(old), NOW + 59.5) == retiring
        assert await store.find_key(HASHER.hash(old), NOW + 60) is None
        assert await store.find_key(HASHER.hash(old), NOW + 3600) is None
        assert await store.find_key(HASHER.hash(new), NOW + 3600) == key

    async def test_rotation_with_past_retirement_refuses_the_old_secret(
        self, store: Storage
    ) -> None:
        """A retire_old_at in the past stops the old secret at once."""
        key, old = await add_key(store, "key_1")
        new = HASHER.new_secret()
        await store.add_secret("key_1", HASHER.hash(new), retire_old_at=NOW - 1)
        assert await store.find_key(HASHER.hash(old), NOW) is None
        assert await store.find_key(HASHER.hash(new), NOW) == key

    async def test_a_second_rotation_never_extends_an_old_secret(self, store: Storage) -> None:
        """Each secret retires at the earliest retire_old_at it was given."""
        key, first = await add_key(store, "key_1")
        second, third = HASHER.new_secret(), HASHER.new_secret()
        await store.add_secret("key_1", HASHER.hash(second), retire_old_at=NOW + 60)
        await store.add_secret("key_1", HASHER.hash(third), retire_old_at=NOW + 3600)
        assert await store.find_key(HASHER.hash(first), NOW + 59) == key.with_changes(
            expires_at=NOW + 60
        )
        assert await store.find_key(HASHER.hash(first), NOW + 61) is None
        assert await store.find_key(HASHER.hash(second), NOW + 61) == key.with_changes(
            expires_at=NOW + 3600
        )
        assert await store.find_key(HASHER.hash(second), NOW + 3600) is None
        assert await store.find_key(HASHER.hash(third), NOW + 3600) == key

    async def test_a_retiring_secret_keeps_an_earlier_key_expiry(self, store: Storage) -> None:
        """Through a retiring secret, the key expires at the earlier of the two times."""
        key, old = await add_key(store, "key_1", expires_at=NOW + 30)
        await store.add_secret("key_1", HASHER.hash(HASHER.new_secret()), retire_old_at=NOW + 60)
        assert await store.find_key(HASHER.hash(old), NOW) == key
        assert await store.get_key("key_1") == key  # the stored key is unchanged

    async def test_update_key_revokes_and_returns_the_new_key(self, store: Storage) -> None:
        """update_key changes the fields, returns the updated key, and get_key agrees."""
        key, _ = await add_key(store, "key_1")
        updated = await store.update_key("key_1", revoked_at=NOW + 1, tier="pro", per_minute=5)
        assert updated == key.with_changes(revoked_at=NOW + 1, tier="pro", per_minute=5)
        assert await store.get_key("key_1") == updated
        assert updated is not None
        assert updated.active(NOW)
        assert not updated.active(NOW + 1)

    async def test_update_key_can_clear_a_field(self, store: Storage) -> None:
        """Setting a field to None clears it."""
        key, _ = await add_key(store, "key_1", expires_at=NOW + 10, monthly_limit=9)
        updated = await store.update_key("key_1", expires_at=None, monthly_limit=None)
        assert updated == key.with_changes(expires_at=None, monthly_limit=None)

    async def test_update_of_an_unknown_key_is_none(self, store: Storage) -> None:
        """update_key of an id never created returns None and creates nothing."""
        assert await store.update_key("key_nope", tier="pro") is None
        assert await store.get_key("key_nope") is None

    @pytest.mark.parametrize("field", ["colour", "id", "account_id", "created_at", "last_used_at"])
    async def test_update_of_an_unknown_field_raises(self, store: Storage, field: str) -> None:
        """update_key of a field that is not updatable raises ValueError and changes nothing."""
        key, _ = await add_key(store, "key_1")
        with pytest.raises(ValueError, match=field):
            await store.update_key("key_1", **{field: "x"})
        assert await store.get_key("key_1") == key

    async def test_key_tiers(self, store: Storage) -> None:
        """key_tiers gives the distinct tiers stored, of keys and of accounts."""
        assert await store.key_tiers() == set()
        await store.ensure_account(Account("acct_a", NOW, tier="scale"))
        await add_key(store, "key_1", tier="free")
        await add_key(store, "key_2", tier="pro")
        await add_key(store, "key_3")
        assert await store.key_tiers() == {"free", "pro", "scale"}
        await store.update_key("key_1", tier="legacy_gold")
        await store.update_account("acct_a", tier="enterprise")
        assert await store.key_tiers() == {"legacy_gold", "pro", "enterprise"}

    async def test_a_key_follows_its_account_unless_it_names_a_tier(self, store: Storage) -> None:
        """A key with no tier of its own reads its account's as effective_tier; a key
        with one keeps it when the account's plan changes."""
        await store.ensure_account(Account("acct_a", NOW, tier="pro"))
        await add_key(store, "key_1")
        await add_key(store, "key_2", tier="scale")
        await store.update_account("acct_a", tier="enterprise")
        one, two = await store.get_key("key_1"), await store.get_key("key_2")
        assert one is not None and two is not None
        assert (one.tier, one.effective_tier) == (None, "enterprise")
        assert (two.tier, two.effective_tier) == ("scale", "scale")
        found = await store.find_key(HASHER.hash("x"), NOW)
        assert found is None
        assert [k.effective_tier for k in await store.list_keys("acct_a")] == [
            "enterprise",
            "scale",
        ]
        await store.update_key("key_2", tier=None)
        two = await store.get_key("key_2")
        assert two is not None and two.effective_tier == "enterprise"

    async def test_live_limit_counts_live_keys_only(self, store: Storage) -> None:
        """create_key with live_limit refuses (False) once the account has that many live
        keys; revoked and expired keys do not count."""
        await add_key(store, "key_1")
        await add_key(store, "key_2", expires_at=NOW - 1)
        await add_key(store, "key_3", revoked_at=NOW - 1)
        key = make_key("key_4")
        assert await store.create_key(key, HASHER.hash(HASHER.new_secret()), live_limit=2, now=NOW)
        late = make_key("key_5")
        assert not await store.create_key(
            late, HASHER.hash(HASHER.new_secret()), live_limit=2, now=NOW
        )
        assert await store.get_key("key_5") is None


class TestExpiries:
    async def test_keys_expired_in_a_span(self, store: Storage) -> None:
        """keys_expired gives the keys whose expiry is in (after, until], by expiry."""
        await add_key(store, "key_1", expires_at=NOW + 10)
        await add_key(store, "key_2", expires_at=NOW + 5)
        await add_key(store, "key_3", expires_at=NOW + 20)
        await add_key(store, "key_4")
        assert [k.id for k in await store.keys_expired(NOW + 5, NOW + 20)] == ["key_1", "key_3"]
        assert [k.id for k in await store.keys_expired(NOW, NOW + 10)] == ["key_2", "key_1"]
        assert await store.keys_expired(NOW + 20, NOW + 99) == []


class TestAccountFields:
    async def test_account_fields_round_trip(self, store: Storage) -> None:
        """Every field of an account is stored, read back, listed, and updated."""
        account = Account("acct_a", NOW, tier="pro", name="Acme", external_id="sub_1",
                          stripe_customer_id="cus_1")  # fmt: skip
        assert await store.ensure_account(account)
        assert await store.get_account("acct_a") == account
        assert await store.get_account("acct_zz") is None
        changed = await store.update_account("acct_a", name=None, stripe_customer_id="cus_2")
        assert changed == account.with_changes(name=None, stripe_customer_id="cus_2")
        assert await store.list_accounts() == [changed]
        assert await store.update_account("acct_zz", name="x") is None

    async def test_an_existing_account_is_left_as_it_is(self, store: Storage) -> None:
        """ensure_account of an id that exists changes nothing, its tier included."""
        await store.ensure_account(Account("acct_a", NOW, tier="pro"))
        assert not await store.ensure_account(Account("acct_a", NOW + 5, tier="scale"))
        assert await store.get_account("acct_a") == Account("acct_a", NOW, tier="pro")

    @pytest.mark.parametrize("field", ["id", "created_at", "version"])
    async def test_only_updatable_fields(self, store: Storage, field: str) -> None:
        """update_account of another field raises InvalidValue; a None tier too."""
        await store.ensure_account(Account("acct_a", NOW))
        with pytest.raises(ValueError, match=field):
            await store.update_account("acct_a", **{field: "x"})
        with pytest.raises(ValueError, match="tier"):
            await store.update_account("acct_a", tier=None)

    async def test_a_new_plan_is_a_change_of_every_key(self, store: Storage) -> None:
        """update_account with a tier puts each of the account's keys in key_changes;
        other fields, and other accounts' keys, do not."""
        await add_key(store, "key_1")
        await add_key(store, "key_2")
        await add_key(store, "key_3", account_id="acct_b")
        cursor, _ = await store.key_changes(0)
        await store.update_account("acct_a", name="Acme")
        assert (await store.key_changes(cursor))[1] == []
        await store.update_account("acct_a", tier="pro")
        cursor, changed = await store.key_changes(cursor)
        assert sorted(changed) == ["key_1", "key_2"]


class TestKeyChanges:
    async def test_since_zero_gives_only_a_cursor(self, store: Storage) -> None:
        """key_changes(0) returns the current cursor and no ids, even with keys stored."""
        start, ids = await store.key_changes(0)
        assert ids == []
        await add_key(store, "key_1")
        cursor, ids = await store.key_changes(0)
        assert ids == []
        assert cursor > start

    async def test_later_changes_are_listed_once(self, store: Storage) -> None:
        """Changes after the cursor are listed, each key once; the new cursor lists none."""
        await add_key(store, "key_1")
        await add_key(store, "key_2")
        await add_key(store, "key_9")
        cursor, _ = await store.key_changes(0)
        assert await store.key_changes(cursor) == (cursor, [])

        await store.update_key("key_1", tier="pro")
        after, ids = await store.key_changes(cursor)
        assert ids == ["key_1"]
        assert after > cursor
        assert await store.key_changes(after) == (after, [])

        await add_key(store, "key_3")  # created
        await store.update_key("key_2", revoked_at=NOW)  # revoked
        await store.add_secret("key_1", HASHER.hash("mw_next"), retire_old_at=NOW)  # rotated
        await store.update_key("key_2", name="renamed")  # changed twice
        last, ids = await store.key_changes(after)
        assert sorted(ids) == ["key_1", "key_2", "key_3"]
        assert last > after
        assert await store.key_changes(last) == (last, [])

    async def test_recording_usage_is_not_a_key_change(self, store: Storage) -> None:
        """Activity and rollups written by record() do not show up as key changes."""
        await add_key(store, "key_1")
        cursor, _ = await store.key_changes(0)
        await store.record(
            UsageBatch(
                rollups=[rollup("key_1", requests=3, last=NOW + 5)], labels={"search": "Search"}
            )
        )
        assert await store.key_changes(cursor) == (cursor, [])

    async def test_a_poller_never_misses_concurrent_changes(self, store: Storage) -> None:
        """A poller following the cursor while keys change concurrently sees every key."""
        ids = [f"key_{i:02}" for i in range(30)]
        for key_id in ids:
            await add_key(store, key_id)
        cursor, _ = await store.key_changes(0)
        seen: set[str] = set()
        done = asyncio.Event()

        async def poller() -> None:
            nonlocal cursor
            while not done.is_set():
                cursor, changed = await store.key_changes(cursor)
                seen.update(changed)
                await asyncio.sleep(0)

        task = asyncio.create_task(poller())
        await asyncio.gather(*(store.update_key(key_id, tier="pro") for key_id in ids))
        done.set()
        await task
        cursor, changed = await store.key_changes(cursor)
        seen.update(changed)
        assert seen == set(ids)


# -- counters --------------------------------------------------------------------------


class TestCounters:
    """Counters, against every store and Redis (where per-minute windows may live)."""

    async def test_untouched_counter_is_zero(self, counters: Any) -> None:
        """A counter never reserved reads 0."""
        assert await counters.counter("month:key_1", NOW) == 0

    async def test_reserve_grants_up_to_the_limit(self, counters: Any) -> None:
        """reserve grants (granted, count) and never takes the count past the limit."""
        assert await reserve(counters, "month:key_1", 4, 10) == (4, 4)
        assert await reserve(counters, "month:key_1", 4, 10) == (4, 8)
        assert await reserve(counters, "month:key_1", 4, 10) == (2, 10)  # only 2 left
        assert await reserve(counters, "month:key_1", 4, 10) == (0, 10)
        assert await counters.counter("month:key_1", NOW) == 10

    async def test_first_reserve_over_the_limit_is_partial(self, counters: Any) -> None:
        """A first reserve asking for more than the limit gets the limit."""
        assert await reserve(counters, "month:key_1", 25, 10) == (10, 10)

    async def test_reserve_with_nothing_left(self, counters: Any) -> None:
        """A limit of 0 grants nothing; a count above a lowered limit grants nothing."""
        assert await reserve(counters, "month:key_1", 5, 0) == (0, 0)
        assert await reserve(counters, "month:key_2", 8, 2**62) == (8, 8)
        assert await reserve(counters, "month:key_2", 5, 5) == (0, 8)
        assert await counters.counter("month:key_1", NOW) == 0
        assert await counters.counter("month:key_2", NOW) == 8

    async def test_counters_are_separate(self, counters: Any) -> None:
        """Each counter counts alone."""
        await reserve(counters, "month:key_1", 3, 10)
        await reserve(counters, "minute:key_1", 5, 10, end=NOW + 60)
        await reserve(counters, "month:key_2", 7, 10)
        assert await counters.counter("month:key_1", NOW) == 3
        assert await counters.counter("minute:key_1", NOW) == 5
        assert await counters.counter("month:key_2", NOW) == 7
        assert await counters.counter("minute:key_2", NOW) == 0

    async def test_one_round_trip_reserves_several_counters(self, counters: Any) -> None:
        """Several claims are granted in one call, each by its own limit, in order."""
        claims = [
            Claim("minute:key_1", 5, 3, NOW + 60),
            Claim("month:key_1", 5, 10, END),
            Claim("credits:key_1", 30, 100, END),
        ]
        assert await counters.reserve(claims, NOW) == [
            Grant(3, 3, NOW + 60),
            Grant(5, 5, END),
            Grant(30, 30, END),
        ]
        again = await counters.reserve(claims[::-1], NOW + 1)
        assert again == [Grant(30, 60, END), Grant(5, 10, END), Grant(0, 3, NOW + 60)]

    async def test_a_live_window_keeps_its_end(self, counters: Any) -> None:
        """A claim on a live window counts in it, whatever end the claim proposes."""
        assert await counters.reserve([Claim("minute:k", 1, 10, NOW + 60)], NOW) == [
            Grant(1, 1, NOW + 60)
        ]
        later = await counters.reserve([Claim("minute:k", 1, 10, NOW + 90)], NOW + 30)
        assert later == [Grant(1, 2, NOW + 60)]

    async def test_an_ended_window_starts_again_from_zero(self, counters: Any) -> None:
        """At or after a window's end, the next claim opens a new window at its end."""
        await reserve(counters, "minute:k", 10, 10, end=NOW + 60)
        assert await reserve(counters, "minute:k", 1, 10, end=NOW + 60) == (0, 10)
        assert await counters.counter("minute:k", NOW + 60) == 0  # ended: nothing counts
        assert await counters.reserve([Claim("minute:k", 4, 10, NOW + 120)], NOW + 60) == [
            Grant(4, 4, NOW + 120)
        ]
        assert await counters.counter("minute:k", NOW + 61) == 4

    async def test_release_gives_units_back(self, counters: Any) -> None:
        """Released units of the same window can be reserved again."""
        await reserve(counters, "month:key_1", 10, 10)
        await counters.release("month:key_1", END, 4)
        assert await counters.counter("month:key_1", NOW) == 6
        assert await reserve(counters, "month:key_1", 10, 10) == (4, 10)

    async def test_release_into_another_window_does_nothing(self, counters: Any) -> None:
        """Units of an ended window are not given back to the window that followed it."""
        await reserve(counters, "minute:k", 5, 10, end=NOW + 60)
        await reserve(counters, "minute:k", 3, 10, end=NOW + 120, now=NOW + 60)
        await counters.release("minute:k", NOW + 60, 5)
        assert await counters.counter("minute:k", NOW + 61) == 3

    async def test_release_floors_at_zero(self, counters: Any) -> None:
        """Releasing more than the count leaves 0; releasing an unknown counter is a no-op."""
        await reserve(counters, "month:key_1", 3, 10)
        await counters.release("month:key_1", END, 5)
        assert await counters.counter("month:key_1", NOW) == 0
        await counters.release("month:key_nope", END, 5)
        assert await counters.counter("month:key_nope", NOW) == 0

    async def test_a_huge_limit_counts_freely(self, counters: Any) -> None:
        """With a limit out of reach every unit is granted (a cost raised at run time)."""
        assert await reserve(counters, "credits:key_1", 5, 2**62) == (5, 5)
        assert await reserve(counters, "credits:key_1", 1_000_000, 2**62) == (1_000_000, 1_000_005)
        assert await counters.counter("credits:key_1", NOW) == 1_000_005

    async def test_concurrent_reserves_never_exceed_the_limit(self, counters: Any) -> None:
        """200 concurrent reserves (want=1, limit=50) grant exactly 50, each a distinct count."""
        results = await asyncio.gather(
            *(reserve(counters, "month:key_1", 1, 50) for _ in range(200))
        )
        granted = [count for got, count in results if got]
        assert sum(got for got, _ in results) == 50
        assert sorted(granted) == list(range(1, 51))
        assert all(count == 50 for got, count in results if not got)
        assert await counters.counter("month:key_1", NOW) == 50

    async def test_concurrent_block_reserves_split_the_remainder(self, counters: Any) -> None:
        """40 concurrent reserves of 7 against 100: 14 full grants, one of 2, none over."""
        results = await asyncio.gather(
            *(reserve(counters, "month:key_1", 7, 100) for _ in range(40))
        )
        grants = sorted(got for got, _ in results if got)
        assert grants == [2] + [7] * 14
        assert await counters.counter("month:key_1", NOW) == 100

    async def test_concurrent_multi_claims_in_opposite_orders(self, counters: Any) -> None:
        """Reservations of two counters in opposite orders, at once, neither deadlock nor
        over-grant."""
        pair = [Claim("minute:k", 1, 30, NOW + 60), Claim("month:k", 1, 40, END)]
        results = await asyncio.gather(
            *(counters.reserve(pair if i % 2 else pair[::-1], NOW) for i in range(100))
        )
        assert await counters.counter("minute:k", NOW) == 30
        assert await counters.counter("month:k", NOW) == 40
        minute = sum(g[0 if i % 2 else 1].granted for i, g in enumerate(results))
        assert minute == 30

    async def test_concurrent_reserves_across_connections(
        self, shared_counter_backend: Backend
    ) -> None:
        """Stores on separate connections (separate processes) racing grant exactly 50."""
        # Two SQLite connections on one file; two PostgreSQL pools of several connections.
        options = (
            {"min_size": 5, "max_size": 10} if shared_counter_backend.name == "postgres" else {}
        )
        stores = [shared_counter_backend.new(**options) for _ in range(2)]
        for s in stores:
            if isinstance(s, Storage):
                await s.open()
        results = await asyncio.gather(
            *(reserve(stores[i % 2], "month:key_1", 1, 50) for i in range(200))
        )
        assert sum(got for got, _ in results) == 50
        assert sorted(count for got, count in results if got) == list(range(1, 51))
        assert [await s.counter("month:key_1", NOW) for s in stores] == [50, 50]


# -- usage ledger ----------------------------------------------------------------------


class TestRecord:
    async def test_record_accumulates_rollups_and_totals(self, store: Storage) -> None:
        """Rollups add up per (key, action, day); totals are their sums; the last use is
        the latest."""
        await add_key(store, "key_1")
        await store.record(
            UsageBatch(rollups=[rollup("key_1", calls=2, credits=60, requests=2, last=NOW + 10)])
        )
        await store.record(
            UsageBatch(
                rollups=[
                    rollup("key_1", calls=1, credits=30, requests=1, last=NOW + 5),  # earlier
                    rollup("key_1", "image", credits=5),
                ]
            )
        )
        assert await store.usage(
            account_id="acct_a", key_id="key_1", first_day=DAY, last_day=DAY
        ) == [UsageRow(DAY, "image", 1, 5, 0), UsageRow(DAY, "search", 3, 90, 3)]
        assert await store.key_totals("key_1") == KeyTotals(
            requests=3, calls=4, credits=95, last_used_at=NOW + 10
        )
        key = await store.get_key("key_1")
        assert key is not None
        assert key.last_used_at == NOW + 10
        assert [k.last_used_at for k in await store.list_keys("acct_a")] == [NOW + 10]

    async def test_one_batch_writes_everything(self, store: Storage) -> None:
        """One record() writes rollups and labels together, repeats summed."""
        await add_key(store, "key_1")
        await add_key(store, "key_2")
        await store.record(
            UsageBatch(
                rollups=[
                    rollup("key_1", requests=1, last=NOW),
                    rollup("key_1", requests=1, last=NOW - 1),
                    rollup("key_2", calls=4, requests=4, last=NOW + 1),
                ],
                labels={"search": "Search"},
            )
        )
        assert await store.key_totals("key_1") == KeyTotals(2, 2, 2, NOW)
        assert await store.key_totals("key_2") == KeyTotals(4, 4, 1, NOW + 1)
        assert await store.labels() == {"search": "Search"}

    async def test_totals_between_days_and_of_an_account(self, store: Storage) -> None:
        """totals() sums a key's (or an account's) rollups between two days."""
        await add_key(store, "key_1")
        await add_key(store, "key_2")
        await store.record(
            UsageBatch(
                rollups=[
                    rollup("key_1", day="2026-03-31", requests=5, last=NOW - 86400 * 12),
                    rollup("key_1", day="2026-04-01", requests=2, last=NOW - 86400 * 11),
                    rollup("key_2", day="2026-04-12", calls=3, credits=9, requests=4, last=NOW),
                ]
            )
        )
        april = {"first_day": "2026-04-01", "last_day": "2026-04-30"}
        assert await store.totals(account_id="acct_a", key_id="key_1", **april) == KeyTotals(
            2, 1, 1, NOW - 86400 * 11
        )
        assert await store.totals(account_id="acct_a", key_id=None, **april) == KeyTotals(
            6, 4, 10, NOW
        )
        assert await store.totals(account_id="acct_a", key_id=None) == KeyTotals(11, 5, 11, NOW)
        assert await store.totals(account_id="acct_b", key_id=None) == KeyTotals()

    async def test_month_usage_for_many_subjects(self, store: Storage) -> None:
        """month_usage answers every (account, key or None, first day) in order:
        requests and credits."""
        await add_key(store, "key_1")
        await add_key(store, "key_2")
        await store.record(
            UsageBatch(
                rollups=[
                    rollup("key_1", day="2026-03-31", requests=5),
                    rollup("key_1", day="2026-04-01", requests=2),
                    rollup("key_2", day="2026-04-12", requests=4),
                ]
            )
        )
        subjects = [
            ("acct_a", "key_1", "2026-04-01"),
            ("acct_a", None, "2026-04-01"),
            ("acct_a", "key_1", "2026-03-01"),
            ("acct_b", None, "2026-03-01"),
            ("acct_a", "key_2", "2026-04-13"),
        ]
        assert await store.month_usage(subjects) == [(2, 1), (6, 2), (7, 2), (0, 0), (0, 0)]
        assert await store.month_usage([]) == []

    async def test_empty_batch_writes_nothing(self, store: Storage) -> None:
        """record() of an empty batch is a no-op."""
        await store.record(UsageBatch())
        assert await store.labels() == {}
        assert await store.usage(account_id="acct_a", key_id=None, first_day="", last_day="~") == []

    async def test_labels_upsert(self, store: Storage) -> None:
        """The label last recorded for an action wins; other actions keep theirs."""
        await store.record(UsageBatch(labels={"image": "Image", "search": "Search"}))
        await store.record(UsageBatch(labels={"image": "Image → HTML"}))
        assert await store.labels() == {"image": "Image → HTML", "search": "Search"}

    async def test_account_rollups_stay_in_their_account(self, store: Storage) -> None:
        """Rollups without a key (key_id "") of two accounts are kept apart, and no totals."""
        await store.ensure_account(Account("acct_a", NOW))
        await store.ensure_account(Account("acct_b", NOW))
        await store.record(
            UsageBatch(
                rollups=[rollup("", calls=2, credits=20), rollup("", account_id="acct_b", calls=5)]
            )
        )
        await store.record(UsageBatch(rollups=[rollup("", calls=1, credits=10)]))
        assert await store.usage(account_id="acct_a", key_id=None, first_day=DAY, last_day=DAY) == [
            UsageRow(DAY, "search", 3, 30)
        ]
        assert await store.usage(account_id="acct_b", key_id=None, first_day=DAY, last_day=DAY) == [
            UsageRow(DAY, "search", 5, 1)
        ]
        assert await store.key_totals("") == KeyTotals()

    async def test_record_is_one_transaction(self, durable_store: Storage) -> None:
        """When part of a batch fails, none of it is written."""
        await add_key(durable_store, "key_1")
        bad = UsageBatch(
            rollups=[rollup("key_1", calls=3, requests=3, last=NOW)],
            labels={"search": None},  # type: ignore[dict-item]  # NOT NULL, written last
        )
        with pytest.raises(StorageError):
            await durable_store.record(bad)
        assert (
            await durable_store.usage(
                account_id="acct_a", key_id="key_1", first_day=DAY, last_day=DAY
            )
            == []
        )
        assert await durable_store.key_totals("key_1") == KeyTotals()
        assert await durable_store.labels() == {}

    async def test_concurrent_records_all_count(self, store: Storage) -> None:
        """Concurrent flushes touching the same rows lose nothing."""
        await add_key(store, "key_1")
        await add_key(store, "key_2")
        batches = [
            UsageBatch(
                rollups=[rollup(k, a, calls=1, credits=2, requests=a == "search", last=NOW + i)
                         for k in ("key_1", "key_2")[::step] for a in ("search", "image")],
            )
            for i, step in enumerate([1, -1] * 10)
        ]  # fmt: skip
        await asyncio.gather(*(store.record(b) for b in batches))
        assert await store.key_totals("key_1") == KeyTotals(20, 40, 80, NOW + 19)
        assert await store.usage(account_id="acct_a", key_id=None, first_day=DAY, last_day=DAY) == [
            UsageRow(DAY, "image", 40, 80),
            UsageRow(DAY, "search", 40, 80, 40),
        ]


class TestUsage:
    @pytest.fixture
    async def ledger(self, store: Storage) -> Storage:
        """Two keys of acct_a and one of acct_b, with usage over four days."""
        await add_key(store, "key_1")
        await add_key(store, "key_2")
        await add_key(store, "key_3", "acct_b")
        await store.record(
            UsageBatch(
                rollups=[
                    rollup("key_1", day="2026-04-10", calls=1, credits=1),
                    rollup("key_1", day="2026-04-11", calls=2, credits=20),
                    rollup("key_1", "image", day="2026-04-11", calls=1, credits=30),
                    rollup("key_2", day="2026-04-11", calls=3, credits=30),
                    rollup("", day="2026-04-11", calls=4, credits=40),
                    rollup("key_1", day="2026-04-12", calls=5, credits=50),
                    rollup("key_2", day="2026-04-13", calls=6, credits=60),
                    rollup("key_3", day="2026-04-11", calls=7, credits=70, account_id="acct_b"),
                ]
            )
        )
        return store

    async def test_usage_of_a_key(self, ledger: Storage) -> None:
        """A key's rows, by day then action, only within its account."""
        assert await ledger.usage(
            account_id="acct_a", key_id="key_1", first_day="2026-04-01", last_day="2026-04-30"
        ) == [
            UsageRow("2026-04-10", "search", 1, 1),
            UsageRow("2026-04-11", "image", 1, 30),
            UsageRow("2026-04-11", "search", 2, 20),
            UsageRow("2026-04-12", "search", 5, 50),
        ]
        assert (
            await ledger.usage(
                account_id="acct_b", key_id="key_1", first_day="2026-04-01", last_day="2026-04-30"
            )
            == []
        )

    async def test_usage_of_an_account_sums_its_keys(self, ledger: Storage) -> None:
        """An account's rows sum all its keys (and keyless rollups) per day and action."""
        assert await ledger.usage(
            account_id="acct_a", key_id=None, first_day="2026-04-01", last_day="2026-04-30"
        ) == [
            UsageRow("2026-04-10", "search", 1, 1),
            UsageRow("2026-04-11", "image", 1, 30),
            UsageRow("2026-04-11", "search", 9, 90),
            UsageRow("2026-04-12", "search", 5, 50),
            UsageRow("2026-04-13", "search", 6, 60),
        ]
        assert await ledger.usage(
            account_id="acct_b", key_id=None, first_day="2026-04-01", last_day="2026-04-30"
        ) == [UsageRow("2026-04-11", "search", 7, 70)]

    async def test_usage_day_range_is_inclusive(self, ledger: Storage) -> None:
        """Both the first and the last day are included; days outside are not."""
        rows = await ledger.usage(
            account_id="acct_a", key_id=None, first_day="2026-04-11", last_day="2026-04-12"
        )
        assert [r.day for r in rows] == ["2026-04-11", "2026-04-11", "2026-04-12"]
        one_day = await ledger.usage(
            account_id="acct_a", key_id="key_1", first_day="2026-04-12", last_day="2026-04-12"
        )
        assert one_day == [UsageRow("2026-04-12", "search", 5, 50)]
        assert (
            await ledger.usage(
                account_id="acct_a", key_id=None, first_day="2026-04-14", last_day="2026-05-01"
            )
            == []
        )

    async def test_rollups_of_a_key_an_account_or_all(self, ledger: Storage) -> None:
        """rollups gives the stored rows within the days, of one key, one account or every
        account, by day, account, key and action."""
        everything = await ledger.rollups(first_day="2026-04-11", last_day="2026-04-12")
        assert [(r.day, r.account_id, r.key_id, r.action, r.calls) for r in everything] == [
            ("2026-04-11", "acct_a", "", "search", 4),
            ("2026-04-11", "acct_a", "key_1", "image", 1),
            ("2026-04-11", "acct_a", "key_1", "search", 2),
            ("2026-04-11", "acct_a", "key_2", "search", 3),
            ("2026-04-11", "acct_b", "key_3", "search", 7),
            ("2026-04-12", "acct_a", "key_1", "search", 5),
        ]
        assert [r.calls for r in await ledger.rollups(account_id="acct_b")] == [7]
        assert [r.day for r in await ledger.rollups(key_id="key_2")] == ["2026-04-11", "2026-04-13"]
        assert await ledger.rollups(account_id="acct_b", key_id="key_1") == []
        assert len(await ledger.rollups()) == 8

    async def test_key_totals(self, ledger: Storage) -> None:
        """key_totals sums a key's calls and credits over all days; unknown keys are zeros."""
        assert await ledger.key_totals("key_1") == KeyTotals(0, 9, 101, None)
        assert await ledger.key_totals("key_nope") == KeyTotals()


class TestOutcomes:
    async def test_refusals_are_summed_beside_requests(self, store: Storage) -> None:
        """A rollup's refusals by outcome are added up like its requests and read back."""
        await add_key(store, "key_1")
        refused = rollup("key_1", calls=0, credits=0)
        refused.rate_limited, refused.quota_exceeded, refused.failed_open = 3, 1, 2
        await store.record(UsageBatch(rollups=[refused]))
        await store.record(UsageBatch(rollups=[refused]))
        (row,) = await store.rollups(key_id="key_1")
        assert (row.rate_limited, row.quota_exceeded, row.failed_open, row.forbidden) == (
            6,
            2,
            4,
            0,
        )


class TestGrants:
    async def test_a_grant_id_adds_once(self, store: Storage) -> None:
        """add_grant stores a grant once per account and id; grants lists them in the
        order they are spent: soonest expiry first, never-expiring last."""
        await store.ensure_account(Account("acct_a", NOW))
        await store.ensure_account(Account("acct_b", NOW))
        later = CreditGrant("acct_a", "pack-2", 50, NOW + 2, expires_at=NOW + 9000)
        sooner = CreditGrant("acct_a", "trial", 10, NOW + 3, expires_at=NOW + 100)
        never = CreditGrant("acct_a", "pack-1", 100, NOW + 1)
        for grant in (never, later, sooner):
            assert await store.add_grant(grant)
        assert not await store.add_grant(CreditGrant("acct_a", "trial", 999, NOW + 5))
        assert await store.add_grant(CreditGrant("acct_b", "trial", 7, NOW))  # other account
        assert await store.grants("acct_a") == [sooner, later, never]
        assert [g.amount for g in await store.grants("acct_b")] == [7]

    async def test_draws_are_summed_per_grant_day_and_action(self, store: Storage) -> None:
        """What grants paid for is added up per grant, day and action, with the ledger."""
        await store.ensure_account(Account("acct_a", NOW))
        draws = [
            BalanceDraw("acct_a", "trial", "search", DAY, 5),
            BalanceDraw("acct_a", "trial", "search", DAY, 7),
            BalanceDraw("acct_a", "pack", "image", "2026-04-13", 30),
            BalanceDraw("acct_b", "trial", "search", DAY, 1),
        ]
        await store.record(UsageBatch(draws=draws))
        assert await store.balance_draws("acct_a") == [
            BalanceDraw("acct_a", "trial", "search", DAY, 12),
            BalanceDraw("acct_a", "pack", "image", "2026-04-13", 30),
        ]
        assert await store.balance_draws("acct_a", first_day="2026-04-13") == [
            BalanceDraw("acct_a", "pack", "image", "2026-04-13", 30)
        ]

    async def test_an_expired_window_grants_nothing(self, store: Storage) -> None:
        """A claim whose window would end by now (an expired grant) gets no units."""
        assert await reserve(store, "grant:acct_a:trial", 5, 100, end=NOW - 1) == (0, 0)
        assert await reserve(store, "grant:acct_a:trial", 5, 100, end=NOW) == (0, 0)


class TestOutbox:
    async def test_events_are_written_with_the_ledger(self, store: Storage) -> None:
        """With outbox, each rollup that counts something becomes one event, numbered in
        order, with its deltas, the flush's time and an id unique to the store."""
        await add_key(store, "key_1")
        first = [rollup("key_1", calls=2, credits=20, requests=2), rollup("key_1", "image")]
        await store.record(UsageBatch(rollups=first, outbox=True, time=NOW))
        nothing = rollup("key_1", calls=0, credits=0)
        nothing.rate_limited = 4  # refusals only: no usage to bill
        await store.record(UsageBatch(rollups=[nothing], outbox=True, time=NOW + 1))
        await store.record(UsageBatch(rollups=[rollup("key_1")], outbox=False, time=NOW + 2))
        await store.record(
            UsageBatch(rollups=[rollup("key_1", calls=5)], outbox=True, time=NOW + 3)
        )
        events = await store.outbox_after(0, 10)
        assert [(e.seq, e.action, e.calls, e.credits, e.time) for e in events] == [
            (1, "image", 1, 1, NOW), (2, "search", 2, 20, NOW), (3, "search", 5, 1, NOW + 3),
        ] or [(e.seq, e.action, e.calls, e.credits, e.time) for e in events] == [
            (1, "search", 2, 20, NOW), (2, "image", 1, 1, NOW), (3, "search", 5, 1, NOW + 3),
        ]  # fmt: skip
        assert len({e.id for e in events}) == 3
        assert all(e.id.startswith("mwu_") and e.id.endswith(f"_{e.seq}") for e in events)
        assert [e.seq for e in await store.outbox_after(1, 1)] == [2]
        assert await store.outbox_seq_before(NOW + 2) == 2
        assert await store.outbox_seq_before(NOW) == 0

    async def test_ids_differ_between_stores(self, backend: Backend) -> None:
        """Two stores number their events alike, but never with the same ids."""
        ids = []
        for _ in range(2):
            store = backend.new() if not ids else MemoryStorage()
            async with store:
                await add_key(store, "key_1")
                await store.record(UsageBatch(rollups=[rollup("key_1")], outbox=True, time=NOW))
                ids.append((await store.outbox_after(0, 1))[0].id)
        assert ids[0] != ids[1]

    async def test_cursors_move_forward_only(self, store: Storage) -> None:
        """A reader's cursor is None until it advances, then never goes back; what it gave
        up on is noted once."""
        assert await store.cursor("stripe") is None
        await store.advance_cursor("stripe", 5, rejected=[(3, "mwu_x_3", "too old")], now=NOW)
        await store.advance_cursor("stripe", 2, rejected=[(3, "mwu_x_3", "again")], now=NOW + 1)
        assert await store.cursor("stripe") == 5
        assert await store.cursor("lago") is None
        assert await store.rejections("stripe") == [(3, "mwu_x_3", "too old", NOW)]

    async def test_one_lease_holder_at_a_time(self, store: Storage) -> None:
        """A lease is held by one owner until it expires or is released; its holder
        renews it."""
        assert await store.take_lease("export", "a", now=NOW, ttl=10)
        assert not await store.take_lease("export", "b", now=NOW + 5, ttl=10)
        assert await store.take_lease("export", "a", now=NOW + 5, ttl=10)  # renewed to +15
        assert not await store.take_lease("export", "b", now=NOW + 14, ttl=10)
        assert await store.take_lease("export", "b", now=NOW + 15, ttl=10)  # expired
        await store.release_lease("export", "a")  # not a's any more: nothing happens
        assert not await store.take_lease("export", "a", now=NOW + 16, ttl=10)
        await store.release_lease("export", "b")
        assert await store.take_lease("export", "a", now=NOW + 16, ttl=10)

    async def test_notices_are_stored_once_per_id(self, store: Storage) -> None:
        """add_notice stores a notice once per id, numbered in order, data kept."""
        quota = Notice("quota.80:key_1:2026-04", "quota.threshold", "acct_a", "key_1",
                       {"percent": 80, "limit": 1000}, NOW)  # fmt: skip
        created = Notice("key.created:key_2", "key.created", "acct_a", "key_2", {}, NOW + 1)
        assert await store.add_notice(quota)
        assert not await store.add_notice(quota)
        assert await store.add_notice(created)
        stored = await store.notices_after(0, 10)
        assert [(n.seq, n.id, n.data) for n in stored] == [
            (1, quota.id, {"percent": 80, "limit": 1000}), (2, created.id, {})]  # fmt: skip
        assert [n.id for n in await store.notices_after(1, 10)] == [created.id]


# -- choosing a backend by URL -----------------------------------------------------------


class TestStorageFromUrl:
    @pytest.mark.parametrize("url", ["mongodb://localhost/db", "meterware.db", "redis+x://h"])
    def test_unknown_scheme_names_the_known_ones(self, url: str) -> None:
        """An unknown scheme is a ConfigurationError that lists the schemes there are."""
        with pytest.raises(ConfigurationError) as info:
            storage_from_url(url)
        for scheme in ("memory://", "sqlite://", "postgresql://", "postgres://"):
            assert scheme in str(info.value)

    def test_unknown_scheme_error_hides_the_password(self) -> None:
        """The error for an unknown scheme does not repeat the URL's password."""
        with pytest.raises(ConfigurationError) as info:
            storage_from_url("mysql://admin:hunter2@db.internal/meterware")
        assert "hunter2" not in str(info.value)

    def test_memory_url(self) -> None:
        """`memory://` gives a MemoryStorage."""
        assert isinstance(storage_from_url("memory://"), MemoryStorage)

    async def test_sqlite_relative_url(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`sqlite:///rel.db` is a path relative to the working directory."""
        monkeypatch.chdir(tmp_path)
        store = storage_from_url("sqlite:///data/rel.db")
        assert isinstance(store, SQLiteStorage)
        assert store.path == "data/rel.db"
        async with store:
            await store.ensure_account(Account("acct_a", NOW))
        assert (tmp_path / "data" / "rel.db").is_file()

    async def test_sqlite_absolute_url(self, tmp_path: Path) -> None:
        """`sqlite:////abs/path.db` (four slashes) is an absolute path."""
        path = tmp_path / "abs.db"
        store = storage_from_url("sqlite:////" + str(path).lstrip("/"))
        assert isinstance(store, SQLiteStorage)
        assert store.path == str(path)
        async with store:
            await store.ensure_account(Account("acct_a", NOW))
        assert path.is_file()

    @pytest.mark.parametrize("url", ["sqlite://rel.db", "sqlite://", "sqlite:///"])
    def test_bad_sqlite_url(self, url: str) -> None:
        """A sqlite URL without the third slash is a ConfigurationError."""
        with pytest.raises(ConfigurationError):
            storage_from_url(url)

    async def test_sqlite_driver_error_is_a_storage_error(self, tmp_path: Path) -> None:
        """A SQLite path inside a plain file fails to open with StorageError."""
        (tmp_path / "plain_file").write_text("not a directory")
        store = storage_from_url(f"sqlite:///{tmp_path}/plain_file/meterware.db")
        with pytest.raises(StorageError) as info:
            await store.open()
        assert isinstance(info.value.__cause__, OSError)
        assert not store.opened

    def test_postgres_url_and_options(self) -> None:
        """Both PostgreSQL schemes give a PostgresStorage; schema and pool come from options."""
        pytest.importorskip("asyncpg")
        from meterware.storage.postgres import PostgresStorage

        store = storage_from_url("postgres://mw:hunter2@db.internal:5432/app?schema=metering")
        assert isinstance(store, PostgresStorage)
        assert (store.schema, store.min_size, store.max_size) == ("metering", 1, 10)
        assert "hunter2" not in repr(store)
        store = storage_from_url(
            "postgresql://db.internal/app?schema=metering", schema="other", min_size=0, max_size=3
        )
        assert isinstance(store, PostgresStorage)
        assert (store.schema, store.min_size, store.max_size) == ("other", 0, 3)
        store = storage_from_url("postgresql://db.internal/app")
        assert isinstance(store, PostgresStorage)
        assert store.schema == "public"

    @pytest.mark.parametrize(
        "options",
        [{"schema": "no-dashes"}, {"schema": 'x"; DROP'}, {"min_size": 5, "max_size": 2},
         {"max_size": 0}, {"max_size": "10"}],
    )  # fmt: skip
    def test_bad_postgres_options(self, options: dict[str, Any]) -> None:
        """A bad schema name or pool size is a ConfigurationError."""
        pytest.importorskip("asyncpg")
        with pytest.raises(ConfigurationError):
            storage_from_url("postgresql://db.internal/app", **options)

    async def test_postgres_unreachable_is_a_storage_error(self) -> None:
        """A server that refuses connections fails open() with StorageError, no password."""
        pytest.importorskip("asyncpg")
        store = storage_from_url("postgresql://postgres:hunter2@127.0.0.1:1/test?password=pw2")
        with pytest.raises(StorageError) as info:
            await store.open()
        assert "hunter2" not in str(info.value)
        assert "pw2" not in str(info.value)
        assert not store.opened

    def test_import_does_not_load_drivers(self) -> None:
        """`import meterware` (and its storage registry) never imports asyncpg."""
        code = (
            "import sys, meterware, meterware.storage, meterware.storage.sqlite; "
            "assert 'asyncpg' not in sys.modules, 'asyncpg was imported'"
        )
        subprocess.run([sys.executable, "-c", code], check=True)


async def test_unreachable_postgres_is_storage_unavailable():
    """A PostgreSQL server that refuses connections raises StorageUnavailable on open."""
    pytest.importorskip("asyncpg")
    from meterware.errors import StorageUnavailable

    store = storage_from_url("postgresql://nobody:secret@127.0.0.1:1/x?connect_timeout=2")
    with pytest.raises(StorageUnavailable) as info:
        await store.open()
    assert "secret" not in str(info.value)
