"""Copy one store into another: `meterware copy SOURCE_URL DEST_URL`.

Every backend can be read whole (the `Transferable` capability: `dump()` gives a
`Snapshot`). `copy` writes a snapshot into any destination through the storage contract
only:

- `ensure_account(account)` for each account (every field kept: creation time, plan,
  names);
- `create_key` with the key's *oldest-ending* secret, then `add_secret` for the others in
  order of their end, each with `retire_old_at` = the end of the secret added before it.
  `add_secret` lowers the other secrets' ends to `min(end, retire_old_at)`, so this order
  rebuilds every secret's end exactly, the current one (no end) last;
- `record(UsageBatch(...))` for rollups (from which every total and last use is summed),
  action labels and what prepaid grants paid for; `add_grant` for the grants;
- `reserve` for the counters' live windows (with no limit: each gets its count back).

What is copied: accounts, keys with every field, every secret hash with its end (those in
a rotation grace period, and expired ones, which stay inert), the counters' live windows
(ended ones are nothing to carry), daily rollups (so lifetime totals, last use and
refusals), action labels, prepaid grants and what they paid for. Not copied: the usage
outbox, the exporters' and webhook senders' places in it, and notices (export and
deliver what is pending from the source first: event ids name their store, so events
copied to another would be new events to a billing system).

Rules:

- The destination must be empty (no account, key, secret, counter, rollup or label):
  copying twice would double every count. With `merge=True` the destination may hold
  data: the source's accounts are added (an existing account keeps its fields),
  its keys and secrets are added and must not exist there yet (a conflict refuses the
  whole copy before anything is written), and its counters and rollups are *added* to
  the destination's. Labels the destination already has are kept. This is
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
from dataclasses import dataclass
from typing import Any

from meterware.errors import MeterwareError
from meterware.storage.base import Storage, Transferable
from meterware.storage.records import Claim, Snapshot, UsageBatch

__all__ = ["CopyReport", "TransferError", "copy", "copy_urls", "export"]

BATCH = 2000
"""Rows per `record` or `reserve` call (each is one transaction)."""
UNLIMITED = 2**62


class TransferError(MeterwareError):
    """A copy that cannot be done, or whose result differs from what was expected."""


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


async def export(store: Storage) -> Snapshot:
    """Everything an open store holds."""
    if not isinstance(store, Transferable):
        raise TransferError(f"cannot export from {type(store).__name__}: it cannot be read whole")
    return await store.dump()


# -- copy -------------------------------------------------------------------------------


async def copy(
    source: Storage, destination: Storage, *, merge: bool = False, now: float
) -> CopyReport:
    """Copy everything `source` holds into `destination` (both open); see the module doc."""
    src = await export(source)
    before = await export(destination)
    plans = _plan(src, before, merge=merge)
    await _write(destination, src, before, plans, now)
    after = await export(destination)
    expected = _combine(before, src, now)
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
    if any(dest.grants.get(k, grant) != grant for k, grant in src.grants.items()):
        raise TransferError(
            "a grant id exists in both stores with other values: nothing was copied"
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
    return plans


async def _write(
    dest: Storage,
    src: Snapshot,
    before: Snapshot,
    plans: dict[str, list[tuple[str, float | None]]],
    now: float,
) -> None:
    for _, account in sorted(src.accounts.items()):
        await dest.ensure_account(account)
    for key in sorted(src.keys.values(), key=lambda k: (k.created_at, k.id)):
        (first, end), *others = plans[key.id]
        await dest.create_key(key, first)
        for hash_, next_end in others:
            assert end is not None  # only the last secret has no end
            await dest.add_secret(key.id, hash_, retire_old_at=end)
            end = next_end
    for _, grant in sorted(src.grants.items()):
        await dest.add_grant(grant)
    rollups = [src.rollups[k] for k in sorted(src.rollups)]
    draws = [src.draws[k] for k in sorted(src.draws)]
    if draws:
        await dest.record(UsageBatch(draws=draws))
    labels = {a: label for a, label in src.labels.items() if a not in before.labels}
    for start in range(0, max(1, len(rollups)), BATCH):
        batch = UsageBatch(
            rollups=rollups[start : start + BATCH], labels=labels if not start else {}
        )
        await dest.record(batch)
    claims = [
        Claim(name, count, UNLIMITED, end) for name, (end, count) in sorted(_live(src, now).items())
    ]
    for start in range(0, len(claims), BATCH):
        await dest.reserve(claims[start : start + BATCH], now)


def _live(snap: Snapshot, now: float) -> dict[str, tuple[float, int]]:
    """The counters whose window is live at `now`."""
    return {name: window for name, window in snap.counters.items() if window[0] > now}


def _combine(before: Snapshot, src: Snapshot, now: float) -> Snapshot:
    """What the destination should hold after the copy: `before` plus the source."""
    out = Snapshot(
        accounts={**src.accounts, **before.accounts},
        keys={**before.keys, **src.keys},
        secrets={**before.secrets, **src.secrets},
        counters=dict(before.counters),
        rollups={k: dataclasses.replace(r) for k, r in before.rollups.items()},
        labels={**src.labels, **before.labels},
        grants={**src.grants, **before.grants},
        draws={k: dataclasses.replace(d) for k, d in before.draws.items()},
    )
    for k, draw in src.draws.items():
        if k in out.draws:
            out.draws[k].credits += draw.credits
        else:
            out.draws[k] = dataclasses.replace(draw)
    for name, (end, count) in _live(src, now).items():
        window = out.counters.get(name)
        live = window is not None and window[0] > now
        out.counters[name] = (window[0], window[1] + count) if window and live else (end, count)
    for k, rollup in src.rollups.items():
        if k in out.rollups:
            out.rollups[k].add(rollup)
        else:
            out.rollups[k] = dataclasses.replace(rollup)
    return out


def _compare(expected: Snapshot, actual: Snapshot) -> list[str]:
    problems = []
    parts = ("accounts", "keys", "secrets", "counters", "rollups", "labels", "grants", "draws")
    for part in parts:
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
        if actual.totals(key_id) != expected.totals(key_id):
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
        calls=sum(r.calls for r in src.rollups.values()),
        credits=sum(r.credits for r in src.rollups.values()),
        requests=sum(r.requests for r in src.rollups.values()),
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
    if not isinstance(source, Transferable) or not isinstance(destination, Transferable):
        raise TransferError("both stores must be readable whole")
    if source.location() == destination.location():
        raise TransferError("the source and the destination are the same store")
    if not await source.exists():
        raise TransferError(f"no meterware store at {source!r}")
    async with source, destination:
        return await copy(source, destination, merge=merge, now=now)
