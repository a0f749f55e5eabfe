"""Copy one store into another: `meterware copy SOURCE_URL DEST_URL`.

The storage contract has no bulk export of secret hashes, counters or raw rollups, so
`export` reads each backend directly (SQL for SQLite and PostgreSQL, the dicts of the
in-memory store) into a `Snapshot`. `copy` writes a snapshot into any destination through
the public contract only:

- `ensure_account(id, created_at)` for each account (its creation time is kept);
- `create_key` with the key's *oldest-ending* secret, then `add_secret` for the others in
  order of their end, each with `retire_old_at` = the end of the secret added before it.
  `add_secret` lowers the other secrets' ends to `min(end, retire_old_at)`, so this order
  rebuilds every secret's end exactly, the current one (no end) last;
- `record(UsageBatch(...))` for rollups (which also rebuilds the keys' lifetime calls and
  credits), key activity (lifetime requests and last use), counters and action labels.

What is copied: accounts, keys with every field, every secret hash with its end (those in
a rotation grace period, and expired ones, which stay inert), monthly counters, daily
rollups, lifetime totals and last use, and action labels. Nothing else exists in a store.

Rules:

- The destination must be empty (no account, key, secret, counter, rollup or label):
  copying twice would double every count. With `merge=True` the destination may hold
  data: the source's accounts are added (an existing account keeps its creation time),
  its keys and secrets are added and must not exist there yet (a conflict refuses the
  whole copy before anything is written), and its counters, rollups and totals are
  *added* to the destination's. Labels the destination already has are kept. This is
  for folding several stores (one SQLite file per host, say) into one.
- Stop the services using the source first: a running process holds reserved quota
  units it returns to the source at shutdown, and buffers usage it writes there.
- After writing, the destination is read back and compared with what was expected (all
  of it for a copy; the copied keys, their secrets and totals for a merge, as other
  writers may be using the destination). A difference raises `TransferError`.
- The copy is not one transaction (the contract has none spanning calls): if it fails
  midway, the destination holds part of the data and a new copy is refused as non-empty;
  empty the destination (drop the schema, delete the file) and run it again.
- Secrets are copied as hashes: serve the destination with the same `METERWARE_PEPPER`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meterware.errors import MeterwareError
from meterware.keys import ApiKey
from meterware.storage.base import (
    KeyActivity,
    KeyTotals,
    Rollup,
    Storage,
    UsageBatch,
    redact,
    wrap_error,
)
from meterware.storage.memory import MemoryStorage

__all__ = ["CopyReport", "Snapshot", "TransferError", "copy", "copy_urls", "export"]

BATCH = 2000
"""Rows per `record` call (each is one transaction)."""

RollupKey = tuple[str, str, str, str]  # (account_id, key_id, action, day)


class TransferError(MeterwareError):
    """A copy that cannot be done, or whose result differs from what was expected."""


@dataclass
class Snapshot:
    """Everything a store holds, in plain dicts.

    `keys` hold every stored field but `last_used_at` (None here): a key's last use is
    in `totals`, with its lifetime requests, calls and credits.
    """

    accounts: dict[str, float] = field(default_factory=dict)
    keys: dict[str, ApiKey] = field(default_factory=dict)
    totals: dict[str, KeyTotals] = field(default_factory=dict)
    secrets: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    rollups: dict[RollupKey, tuple[int, int]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (
            self.accounts
            or self.keys
            or self.secrets
            or self.counters
            or self.rollups
            or self.labels
        )


@dataclass(frozen=True)
class CopyReport:
    """What a copy wrote (the source's numbers) and checked."""

    accounts: int
    keys: int
    secrets: int
    current_secrets: int
    retiring_secrets: int
    expired_secrets: int
    counters: int
    rollups: int
    labels: int
    calls: int
    credits: int
    requests: int
    merged: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- export ---------------------------------------------------------------------------


async def export(store: Storage) -> Snapshot:
    """Read everything `store` (open) holds: memory, SQLite or PostgreSQL."""
    if isinstance(store, MemoryStorage):
        return _export_memory(store)
    if "sqlite" in store.schemes:
        from meterware.storage.sqlite import SQLiteStorage

        assert isinstance(store, SQLiteStorage)
        return await _guarded(store, _export_sqlite(store))
    if "postgresql" in store.schemes:
        from meterware.storage.postgres import PostgresStorage

        assert isinstance(store, PostgresStorage)
        return await _guarded(store, _export_postgres(store))
    raise TransferError(f"cannot export from {type(store).__name__}: no bulk reader for it")


async def _guarded(store: Storage, reading: Any) -> Snapshot:
    """Await `reading`, raising the driver's errors as `StorageError` like the store does."""
    try:
        snapshot: Snapshot = await reading
    except store.driver_errors as exc:
        raise wrap_error(store, exc) from exc
    return snapshot


def _export_memory(store: MemoryStorage) -> Snapshot:
    # The in-memory store's private dicts (see memory.py); nothing else can reach them.
    snap = Snapshot(accounts=dict(store._accounts), labels=dict(store._labels))
    for key_id, key in store._keys.items():
        snap.keys[key_id] = replace(key, last_used_at=None)
        totals = store._totals.get(key_id)
        if totals is None:  # never used: the key's own field is its last use, as get_key
            totals = KeyTotals(last_used_at=key.last_used_at)
        snap.totals[key_id] = replace(totals)  # a copy: the store updates its own in place
    snap.secrets = dict(store._secrets)
    snap.counters = dict(store._counters)
    snap.rollups = {k: (v[0], v[1]) for k, v in store._daily.items()}
    return snap


_KEY_COLUMNS = (
    "id, account_id, name, tier, permission, website_id, created_at, expires_at, revoked_at, "
    "per_minute, monthly_limit, monthly_credits, billing_anchor_day, "
    "total_requests, total_calls, total_credits, last_used_at"
)


def _key_row(snap: Snapshot, row: Sequence[Any]) -> None:
    key = ApiKey(
        id=row[0], account_id=row[1], name=row[2], tier=row[3], permission=row[4],
        website_id=row[5], created_at=row[6], expires_at=row[7], revoked_at=row[8],
        per_minute=row[9], monthly_limit=row[10], monthly_credits=row[11],
        billing_anchor_day=row[12],
    )  # fmt: skip
    snap.keys[key.id] = key
    snap.totals[key.id] = KeyTotals(int(row[13]), int(row[14]), int(row[15]), row[16])


def _fill(snap: Snapshot, tables: dict[str, list[Sequence[Any]]]) -> Snapshot:
    snap.accounts = {str(r[0]): float(r[1]) for r in tables["accounts"]}
    for row in tables["keys"]:
        _key_row(snap, row)
    snap.secrets = {str(r[0]): (str(r[1]), r[2]) for r in tables["secrets"]}
    snap.counters = {(str(r[0]), str(r[1])): int(r[2]) for r in tables["counters"]}
    snap.rollups = {
        (str(r[0]), str(r[1]), str(r[2]), str(r[3])): (int(r[4]), int(r[5]))
        for r in tables["rollups"]
    }
    snap.labels = {str(r[0]): str(r[1]) for r in tables["labels"]}
    return snap


def _queries(s: str) -> dict[str, str]:
    """One SELECT per table; `s` is the table prefix (`""` or `"schema".`)."""
    return {
        "accounts": f"SELECT id, created_at FROM {s}accounts",
        "keys": f"SELECT {_KEY_COLUMNS} FROM {s}keys",
        "secrets": f"SELECT hash, key_id, expires_at FROM {s}key_secrets",
        "counters": f"SELECT subject, period, count FROM {s}counters",
        "rollups": (f"SELECT account_id, key_id, action, day, calls, credits FROM {s}usage_daily"),
        "labels": f"SELECT action, label FROM {s}actions",
    }


async def _export_sqlite(store: Any) -> Snapshot:
    # One read transaction on the store's connection: a consistent snapshot even while
    # other processes write the file (WAL). Nothing else may use this store object
    # meanwhile (the CLI's store is its own).
    db = store.db
    tables: dict[str, list[Sequence[Any]]] = {}
    await db.execute("BEGIN")
    try:
        for table, sql in _queries("").items():
            async with db.execute(sql) as cursor:
                tables[table] = list(await cursor.fetchall())
    finally:
        await db.execute("COMMIT")
    return _fill(Snapshot(), tables)


async def _export_postgres(store: Any) -> Snapshot:
    # The schema name was validated by the store (A-Za-z0-9_), so quoting is enough.
    prefix = f'"{store.schema}".'
    tables: dict[str, list[Sequence[Any]]] = {}
    async with (
        store.pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        for table, sql in _queries(prefix).items():
            tables[table] = list(await conn.fetch(sql))
    return _fill(Snapshot(), tables)


# -- copy -------------------------------------------------------------------------------


async def copy(
    source: Storage, destination: Storage, *, merge: bool = False, now: float
) -> CopyReport:
    """Copy everything `source` holds into `destination` (both open); see the module doc."""
    src = await export(source)
    before = await export(destination)
    plans = _plan(src, before, merge=merge)
    await _write(destination, src, before, plans)
    after = await export(destination)
    expected = _combine(before, src)
    if merge:
        problems = _compare_keys(expected, after, set(src.keys), set(src.secrets))
    else:
        problems = _compare(expected, after)
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if problems[5:] else ""
        )
        raise TransferError(f"the destination differs from the source after the copy: {shown}")
    return _report(src, now=now, merged=merge)


def _plan(
    src: Snapshot, dest: Snapshot, *, merge: bool
) -> dict[str, list[tuple[str, float | None]]]:
    """Check the copy can be done; each key's secrets in the order they must be written."""
    if not merge and not dest.empty():
        raise TransferError(
            "the destination is not empty "
            f"({len(dest.accounts)} accounts, {len(dest.keys)} keys, "
            f"{len(dest.counters)} counters, {len(dest.rollups)} rollups): copy into an "
            "empty store, or pass --merge to add the source's data to it"
        )
    clashing = sorted(set(src.keys) & set(dest.keys))
    if clashing:
        raise TransferError(
            f"{len(clashing)} keys exist in both stores (e.g. {clashing[0]}): a key can be "
            "merged only into a store that does not have it"
        )
    if set(src.secrets) & set(dest.secrets):
        raise TransferError("some secret hashes exist in both stores: nothing was copied")
    plans: dict[str, list[tuple[str, float | None]]] = {key_id: [] for key_id in src.keys}
    for hash_, (key_id, expires_at) in src.secrets.items():
        if key_id not in plans:
            raise TransferError(f"a secret belongs to a key that does not exist: {key_id}")
        plans[key_id].append((hash_, expires_at))
    for key_id, key in src.keys.items():
        if key.account_id not in src.accounts:
            raise TransferError(f"key {key_id} belongs to a missing account {key.account_id}")
        secrets = plans[key_id]
        current = [h for h, end in secrets if end is None]
        if len(current) != 1:
            raise TransferError(
                f"key {key_id} has {len(current)} secrets without an end (expected 1): the "
                "storage contract cannot write that"
            )
        # By end, the current secret (no end) last; ties by hash, to be deterministic.
        secrets.sort(key=lambda s: (s[1] is None, s[1] or 0.0, s[0]))
        totals = src.totals.get(key_id, KeyTotals())
        if totals.requests and totals.last_used_at is None:
            raise TransferError(f"key {key_id} has {totals.requests} requests but no last use")
    return plans


async def _write(
    dest: Storage,
    src: Snapshot,
    before: Snapshot,
    plans: dict[str, list[tuple[str, float | None]]],
) -> None:
    for account_id, created_at in sorted(src.accounts.items()):
        await dest.ensure_account(account_id, created_at)
    for key in sorted(src.keys.values(), key=lambda k: (k.created_at, k.id)):
        (first, end), *others = plans[key.id]
        await dest.create_key(key, first)
        for hash_, next_end in others:
            assert end is not None  # only the last secret has no end
            await dest.add_secret(key.id, hash_, retire_old_at=end)
            end = next_end
    rollups = [
        Rollup(a, k, act, day, calls, credits)
        for (a, k, act, day), (calls, credits) in sorted(src.rollups.items())
    ]
    activity = [
        KeyActivity(key_id, t.requests, t.last_used_at)
        for key_id, t in sorted(src.totals.items())
        if t.last_used_at is not None
    ]
    counters = [(s, p, n) for (s, p), n in sorted(src.counters.items())]
    labels = {a: label for a, label in src.labels.items() if a not in before.labels}
    for batch in _batches(rollups, activity, counters, labels):
        await dest.record(batch)


def _batches(
    rollups: list[Rollup],
    activity: list[KeyActivity],
    counters: list[tuple[str, str, int]],
    labels: dict[str, str],
) -> Iterator[UsageBatch]:
    parts = max(1, -(-max(len(rollups), len(activity), len(counters)) // BATCH))
    for i in range(parts):
        part = slice(i * BATCH, (i + 1) * BATCH)
        yield UsageBatch(
            rollups=rollups[part],
            activity=activity[part],
            counters=counters[part],
            labels=labels if i == 0 else {},
        )


def _combine(before: Snapshot, src: Snapshot) -> Snapshot:
    """What the destination should hold after the copy: `before` plus the source."""
    out = Snapshot(
        accounts={**src.accounts, **before.accounts},
        keys={**before.keys, **src.keys},
        totals={**before.totals, **src.totals},
        secrets={**before.secrets, **src.secrets},
        counters=dict(before.counters),
        rollups=dict(before.rollups),
        labels={**src.labels, **before.labels},
    )
    for name, count in src.counters.items():
        out.counters[name] = out.counters.get(name, 0) + count
    for row, (calls, credits) in src.rollups.items():
        c, cr = out.rollups.get(row, (0, 0))
        out.rollups[row] = (c + calls, cr + credits)
    # Rollups of copied keys rebuild their totals; rollups written for keys that already
    # were in the destination would add to theirs (key ids are disjoint, so none do).
    return out


def _compare(expected: Snapshot, actual: Snapshot) -> list[str]:
    problems = []
    for part in ("accounts", "keys", "totals", "secrets", "counters", "rollups", "labels"):
        want, got = getattr(expected, part), getattr(actual, part)
        if want != got:
            missing = [k for k in want if want.get(k) != got.get(k)]
            extra = [k for k in got if k not in want]
            problems.append(
                f"{part}: {len(missing)} missing or different (e.g. {missing[:1]}), "
                f"{len(extra)} unexpected"
            )
    return problems


def _compare_keys(
    expected: Snapshot, actual: Snapshot, key_ids: set[str], hashes: set[str]
) -> list[str]:
    problems = []
    for key_id in sorted(key_ids):
        if actual.keys.get(key_id) != expected.keys[key_id]:
            problems.append(f"key {key_id} differs")
        if actual.totals.get(key_id) != expected.totals[key_id]:
            problems.append(f"totals of key {key_id} differ")
    wrong = [h for h in hashes if actual.secrets.get(h) != expected.secrets[h]]
    if wrong:
        problems.append(f"{len(wrong)} secrets missing or with another end")
    return problems


def _report(src: Snapshot, *, now: float, merged: bool) -> CopyReport:
    ends = [end for _, end in src.secrets.values()]
    return CopyReport(
        accounts=len(src.accounts),
        keys=len(src.keys),
        secrets=len(ends),
        current_secrets=sum(1 for end in ends if end is None),
        retiring_secrets=sum(1 for end in ends if end is not None and end > now),
        expired_secrets=sum(1 for end in ends if end is not None and end <= now),
        counters=len(src.counters),
        rollups=len(src.rollups),
        labels=len(src.labels),
        calls=sum(calls for calls, _ in src.rollups.values()),
        credits=sum(credits for _, credits in src.rollups.values()),
        requests=sum(t.requests for t in src.totals.values()),
        merged=merged,
    )


# -- by URL ---------------------------------------------------------------------------


async def copy_urls(
    source_url: str, destination_url: str, *, merge: bool = False, now: float
) -> CopyReport:
    """`copy` between two stores named by URL (opened and closed here).

    The source must exist already: opening a store creates it, so a mistyped SQLite path
    or PostgreSQL schema would otherwise be copied as an empty store.
    """
    from meterware.storage import storage_from_url

    source = storage_from_url(source_url)
    destination = storage_from_url(destination_url)
    if _same_place(source, destination):
        raise TransferError("the source and the destination are the same store")
    await _check_exists(source)
    async with source, destination:
        return await copy(source, destination, merge=merge, now=now)


def _place(store: Storage) -> tuple[str, ...]:
    path = getattr(store, "path", None)
    if "sqlite" in store.schemes and isinstance(path, str) and path != ":memory:":
        return ("sqlite", str(Path(path).resolve()))
    if "postgresql" in store.schemes:
        from meterware.storage.postgres import _split_schema

        return ("postgresql", _split_schema(store.url)[0], str(getattr(store, "schema", "")))
    return ("other", str(id(store)))


def _same_place(a: Storage, b: Storage) -> bool:
    return _place(a) == _place(b)


def _check_file(store: Storage) -> None:
    path = getattr(store, "path", ":memory:")
    if path != ":memory:" and not os.path.isfile(path):
        raise TransferError(f"no SQLite database at {path!r}")


async def _check_exists(store: Storage) -> None:
    if "sqlite" in store.schemes:
        _check_file(store)
    elif "postgresql" in store.schemes:
        import asyncpg

        from meterware.storage.postgres import _split_schema

        schema = str(getattr(store, "schema", "public"))
        try:
            conn = await asyncpg.connect(_split_schema(store.url)[0], timeout=10)
            try:
                found = await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".meta')
            finally:
                await conn.close()
        except store.driver_errors as exc:
            raise wrap_error(store, exc) from exc
        if found is None:
            raise TransferError(f"no meterware store in schema {schema!r} of {redact(store.url)}")
