"""The `meterware` command: create, list, show, revoke and rotate API keys; show the tiers;
copy one store into another.

```
meterware keys create --name NAME [--account ID] [--tier TIER] [--permission P] ...
meterware keys list [--account ID]
meterware keys show ID
meterware keys revoke ID
meterware keys rotate ID [--grace SECONDS]
meterware tiers
meterware copy SOURCE_URL DEST_URL [--merge]
```

Every `keys` command takes `--storage URL` (default `$METERWARE_STORAGE`, else
`sqlite:///meterware.db`), `--key-prefix` and `--json`; `copy` takes `--merge` and
`--json` (see `meterware.storage.transfer` for what it copies and when it refuses).
Secrets are hashed with `$METERWARE_PEPPER`, as the middleware hashes them, and printed
only by `create` and `rotate`. A failure is one line on stderr: exit status 1, or 2 for
a bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from meterware.clock import isoformat_ms
from meterware.errors import MeterwareError
from meterware.keys import PERMISSIONS, ApiKey, Caller, SecretHasher, create_key, rotate_key
from meterware.keys import valid_id as _valid_id
from meterware.limits import quota_status
from meterware.storage import Storage, storage_from_url
from meterware.storage.base import redact
from meterware.storage.transfer import copy_urls
from meterware.tiers import TierTable

__all__ = ["main"]

DEFAULT_STORAGE = "sqlite:///meterware.db"
DAY = 86_400

Output = tuple[Any, str]  # (what --json prints, what people read)
Command = Callable[[argparse.Namespace, Storage, float], Awaitable[Output]]


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default `sys.argv[1:]`); the exit status."""
    try:
        args = _parser().parse_args(argv)
        data, text = asyncio.run(_run(args))
    except _UsageError as exc:
        return _fail(str(exc), 2)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except (MeterwareError, ValueError, OSError, ImportError) as exc:
        return _fail(f"meterware: error: {exc or type(exc).__name__}", 1)
    except KeyboardInterrupt:
        return _fail("meterware: interrupted", 130)
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


async def _run(args: argparse.Namespace) -> Output:
    if getattr(args, "copy", False):
        return await _copy(args, time.time())
    if args.command is None:
        return _tiers()
    url = args.storage or os.environ.get("METERWARE_STORAGE") or DEFAULT_STORAGE
    async with storage_from_url(url) as store:
        command: Command = args.command
        return await command(args, store, time.time())


# -- the commands ------------------------------------------------------------------------


async def _create(args: argparse.Namespace, store: Storage, now: float) -> Output:
    key, secret = await create_key(
        store,
        _hasher(args),
        name=args.name,
        now=now,
        account_id=args.account,
        tier=args.tier,
        permission=args.permission,
        website_id=args.website_id or None,
        expires_at=None if args.expires_in is None else now + args.expires_in * DAY,
        per_minute=args.per_minute,
        monthly_limit=args.monthly_limit,
        monthly_credits=args.monthly_credits,
        billing_anchor_day=args.billing_anchor_day,
    )
    text = _pairs([*_key_rows(key, now), ("secret", secret)])
    return {**_key_json(key, now), "key": secret}, f"{text}\n\n{_ONCE}"


async def _list(args: argparse.Namespace, store: Storage, now: float) -> Output:
    keys = await store.list_keys(args.account)
    columns = ("id", "name", "account", "tier", "permission", "website", "created", "last used")
    rows = [[c.upper() for c in (*columns, "status")]]
    rows += [[dict(_key_rows(k, now))[c] for c in (*columns, "status")] for k in keys]
    return [_key_json(k, now) for k in keys], _table(rows) if keys else "No keys."


async def _show(args: argparse.Namespace, store: Storage, now: float) -> Output:
    key = await _get(store, args.id)
    limits = TierTable.from_env().limits_for(Caller.from_key(key))
    status = await quota_status(
        store,
        subject=key.id,
        key_id=key.id,
        limits=limits,
        now=now,
    )
    quota = status.as_dict(isoformat_ms)
    rows = [
        *_key_rows(key, now),
        ("per minute", _count(status.per_minute)),
        (
            "this month",
            f"{status.monthly_requests} of {_count(status.monthly_limit)} requests"
            f" ({_count(status.monthly_remaining)} left)",
        ),
        ("credits", f"{status.monthly_credits} of {_count(status.monthly_credits_limit)}"),
        ("resets", _short(status.monthly_reset_at)),
        ("total requests", str(status.total_requests)),
    ]
    return {**_key_json(key, now), "quota": quota}, _pairs(rows)


async def _revoke(args: argparse.Namespace, store: Storage, now: float) -> Output:
    key = await _get(store, args.id)
    if key.revoked_at is not None and key.revoked_at <= now:
        return _key_json(key, now), f"Key {key.id} was already revoked ({_short(key.revoked_at)})."
    key = await store.update_key(key.id, revoked_at=now) or key
    return _key_json(key, now), f"Revoked key {key.id} ({key.name})."


async def _rotate(args: argparse.Namespace, store: Storage, now: float) -> Output:
    key = await _get(store, args.id)
    if not key.active(now):
        raise ValueError(f"key {key.id} is {_status(key, now)}: create a new key instead")
    secret = await rotate_key(store, _hasher(args), key.id, now=now, grace=args.grace)
    if secret is None:
        raise ValueError(f"no key {key.id!r}")
    old_until = isoformat_ms(now + args.grace)
    data = {**_key_json(key, now), "key": secret, "previous_secret_expires_at": old_until}
    rows = [
        ("id", key.id),
        ("name", key.name),
        ("old secret works until", old_until),
        ("secret", secret),
    ]
    return data, f"{_pairs(rows)}\n\n{_ONCE}"


async def _copy(args: argparse.Namespace, now: float) -> Output:
    report = await copy_urls(args.source, args.destination, merge=args.merge, now=now)
    source, destination = redact(args.source), redact(args.destination)
    data = {"source": source, "destination": destination, **report.as_dict()}
    verb = "Merged" if args.merge else "Copied"
    rows = [
        ("accounts", str(report.accounts)),
        ("keys", str(report.keys)),
        (
            "secrets",
            f"{report.secrets} ({report.current_secrets} current, {report.retiring_secrets} "
            f"in a grace period, {report.expired_secrets} expired)",
        ),
        ("counters", str(report.counters)),
        ("rollups", f"{report.rollups} ({report.calls} calls, {report.credits} credits)"),
        ("requests", str(report.requests)),
        ("labels", str(report.labels)),
    ]
    text = (
        f"{verb} {source} into {destination}, and checked it.\n\n{_pairs(rows)}\n\n"
        "Secrets were copied as hashes: serve the destination with the same METERWARE_PEPPER."
    )
    return data, text


def _tiers() -> Output:
    table = TierTable.from_env()
    tiers = [dataclasses.asdict(t) for t in table]
    header = ["TIER", "MONTHLY REQUESTS", "PER MINUTE", "MONTHLY CREDITS"]
    rows = [
        [t.name, _count(t.monthly_requests), _count(t.per_minute), _count(t.monthly_credits)]
        for t in table
    ]
    legacy = "\n".join(f"{old} -> {new}" for old, new in table.aliases.items())
    text = _table([header, *rows]) + (f"\n\nLegacy names:\n{legacy}" if legacy else "")
    return {"tiers": tiers, "aliases": table.aliases}, text


def _hasher(args: argparse.Namespace) -> SecretHasher:
    """Secrets hashed as the middleware hashes them: same prefix, same pepper."""
    return SecretHasher(prefix=args.key_prefix, pepper=os.environ.get("METERWARE_PEPPER"))


async def _get(store: Storage, key_id: str) -> ApiKey:
    key = await store.get_key(key_id)
    if key is None:
        raise ValueError(f"no key {key_id!r}")
    return key


# -- output --------------------------------------------------------------------------------

_ONCE = "Store the secret now: it will not be shown again."


def _status(key: ApiKey, now: float) -> str:
    if key.active(now):
        return "active"
    return "revoked" if key.revoked_at is not None and key.revoked_at <= now else "expired"


def _key_json(key: ApiKey, now: float) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "account": key.account_id,
        "tier": key.tier,
        "permission": key.permission,
        "website_id": key.website_id,
        "status": _status(key, now),
        "created_at": _iso(key.created_at),
        "expires_at": _iso(key.expires_at),
        "revoked_at": _iso(key.revoked_at),
        "last_used_at": _iso(key.last_used_at),
        "overrides": _overrides(key),
    }


def _overrides(key: ApiKey) -> dict[str, int | None]:
    return {
        "per_minute": key.per_minute,
        "monthly_limit": key.monthly_limit,
        "monthly_credits": key.monthly_credits,
        "billing_anchor_day": key.billing_anchor_day,
    }


def _key_rows(key: ApiKey, now: float) -> list[tuple[str, str]]:
    overrides = ", ".join(f"{k} {v}" for k, v in _overrides(key).items() if v is not None)
    return [
        ("id", key.id),
        ("name", key.name),
        ("account", key.account_id),
        ("tier", key.tier),
        ("permission", key.permission),
        ("website", key.website_id or "-"),
        ("status", _status(key, now)),
        ("created", _short(key.created_at)),
        ("expires", _short(key.expires_at)),
        ("last used", _short(key.last_used_at)),
        ("overrides", overrides or "-"),
    ]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else isoformat_ms(ts)


def _short(ts: float | None) -> str:
    """A time for people: `2026-04-12 14:30Z`, or `never`."""
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%MZ", time.gmtime(ts))


def _count(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _pairs(rows: list[tuple[str, str]]) -> str:
    return _table([[f"{name}:", value] for name, value in rows])


def _fail(message: str, status: int) -> int:
    print(" ".join(message.split()), file=sys.stderr)  # one line, whatever the message
    return status


# -- the command line ----------------------------------------------------------------------


class _UsageError(Exception):
    """A bad command line, reported in one line instead of argparse's usage block."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message} (see --help)")


def _checked(check: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse `type` from a converter that raises `ValueError`."""

    def convert(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc) or f"not {what}: {text!r}") from None

    convert.__name__ = what
    return convert


def _number(kind: type[float], low: float, high: float, expect: str) -> Callable[[str], Any]:
    def check(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:  # also refuses nan
            raise ValueError(f"must be {expect}, not {text!r}")
        return value

    return _checked(check, "number")


def _id(text: str) -> str:
    if not _valid_id(text):
        raise ValueError(f"{text!r} is not an id (1-128 characters of A-Za-z0-9_.:-)")
    return text


_count_arg = _number(int, 0, 2**62, "an integer >= 0")
_id_arg = _checked(_id, "id")
_tier_arg = _checked(lambda text: TierTable.from_env().check(text), "tier")
_prefix_arg = _checked(lambda text: SecretHasher(prefix=text).prefix, "key prefix")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--storage",
        metavar="URL",
        help=f"the store (default: $METERWARE_STORAGE, else {DEFAULT_STORAGE})",
    )
    common.add_argument(
        "--key-prefix", type=_prefix_arg, default="mw_", help="secret prefix (default: mw_)"
    )
    common.add_argument("--json", action="store_true", help="print JSON")

    parser = _Parser(prog="meterware", description="Manage meterware API keys.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    keys = commands.add_parser("keys", help="create, list, show, revoke or rotate keys")
    key_commands = keys.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, run: Command | None, summary: str) -> argparse.ArgumentParser:
        group = key_commands if run is not None else commands
        sub = group.add_parser(name, parents=[common], help=summary, description=summary)
        sub.set_defaults(command=run)
        return sub

    create = command("create", _create, "create a key and print its secret once")
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument("--account", type=_id_arg, help="account id (default: a new account)")
    create.add_argument("--tier", type=_tier_arg, default="free", help="tier (default: free)")
    create.add_argument("--permission", choices=PERMISSIONS, default="full_access")
    create.add_argument("--website-id", help="the one website of a site_access key")
    create.add_argument("--per-minute", type=_count_arg, metavar="N", help="override the tier's")
    create.add_argument("--monthly-limit", type=_count_arg, metavar="N", help="override the tier's")
    create.add_argument(
        "--monthly-credits", type=_count_arg, metavar="N", help="override the tier's"
    )
    create.add_argument(
        "--billing-anchor-day",
        type=_number(int, 1, 31, "a day of the month (1-31)"),
        metavar="D",
        help="day of the month the quota resets (default: 1)",
    )
    create.add_argument(
        "--expires-in",
        type=_number(float, 0.001, 100 * 366, "a number of days > 0"),
        metavar="DAYS",
        help="expire after this many days (default: never)",
    )

    listing = command("list", _list, "list keys (never their secrets)")
    listing.add_argument("--account", type=_id_arg, help="only this account's keys")
    command("show", _show, "a key and its current quota").add_argument("id", type=_id_arg)
    command("revoke", _revoke, "revoke a key now").add_argument("id", type=_id_arg)
    rotate = command("rotate", _rotate, "give a key a new secret and print it once")
    rotate.add_argument("id", type=_id_arg)
    rotate.add_argument(
        "--grace",
        type=_number(float, 0, 366 * DAY, "0 to 366 days in seconds"),
        default=0.0,
        metavar="SECONDS",
        help="how long the old secret keeps working (default: 0)",
    )
    command("tiers", None, "the tier table and the legacy tier names (--storage is not read)")

    only_json = _Parser(add_help=False)
    only_json.add_argument("--json", action="store_true", help="print JSON")
    summary = "copy every account, key, secret hash, counter and usage row into another store"
    copying = commands.add_parser(
        "copy",
        parents=[only_json],
        help=summary,
        description=(
            f"{summary}. The destination must be empty, unless --merge. Stop the services "
            "using the source first. Secrets are copied as hashes: serve the destination "
            "with the same METERWARE_PEPPER."
        ),
    )
    copying.add_argument("source", metavar="SOURCE_URL", help="e.g. sqlite:///meterware.db")
    copying.add_argument(
        "destination", metavar="DEST_URL", help="e.g. postgresql://user@host/db?schema=meterware"
    )
    copying.add_argument(
        "--merge",
        action="store_true",
        help="add to a destination that holds data: new accounts, keys and secrets (a key "
        "in both stores refuses the copy), counters and usage added to its own",
    )
    copying.set_defaults(command=None, copy=True)
    return parser


if __name__ == "__main__":
    sys.exit(main())
