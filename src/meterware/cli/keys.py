"""`meterware keys`: create, list, show, update, revoke and rotate API keys."""

from __future__ import annotations

import argparse
from typing import Any

from meterware.admin import Admin
from meterware.admin.keys import MAX_GRACE
from meterware.cli.args import (
    count_arg,
    days_arg,
    id_arg,
    limit_arg,
    number,
    tier_arg,
    tier_or_none_arg,
)
from meterware.cli.output import ONCE, count, key_rows, pairs, short, table
from meterware.clock import DAY, MAX_DAYS, isoformat_ms
from meterware.errors import Conflict
from meterware.keys import PERMISSIONS
from meterware.views import key_json, key_status

Output = tuple[Any, str]  # (what --json prints, what people read)


async def _create(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    key, secret = await admin.create_key(
        name=args.name,
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
    text = pairs([*key_rows(key, now), ("secret", secret)])
    return {**key_json(key, now), "key": secret}, f"{text}\n\n{ONCE}"


async def _list(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    keys = await admin.list_keys(args.account)
    columns = ("id", "name", "account", "tier", "permission", "website", "created", "last used")
    rows = [[c.upper() for c in (*columns, "status")]]
    rows += [[dict(key_rows(k, now))[c] for c in (*columns, "status")] for k in keys]
    return [key_json(k, now) for k in keys], table(rows) if keys else "No keys."


async def _update(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    changes: dict[str, Any] = {}
    for option in ("name", "tier", "per_minute", "monthly_limit", "monthly_credits"):
        value = getattr(args, option)
        if value is not None:
            changes[option] = None if value == "none" else value
    if args.expires_in is not None:
        changes["expires_at"] = None if args.expires_in == "never" else now + args.expires_in * DAY
    if not changes:
        raise ValueError("nothing to change: give --name, --tier, a limit or --expires-in")
    key = await admin.update_key(args.id, **changes)
    return key_json(key, now), pairs(key_rows(key, now))


async def _show(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    key = await admin.get_key(args.id)
    status = await admin.key_status(key.id)
    quota = status.as_dict(isoformat_ms)
    rows = [
        *key_rows(key, now),
        ("per minute", count(status.per_minute)),
        (
            "this month",
            f"{status.monthly_requests} of {count(status.monthly_limit)} requests"
            f" ({count(status.monthly_remaining)} left)",
        ),
        ("credits", f"{status.monthly_credits} of {count(status.monthly_credits_limit)}"),
        ("resets", short(status.monthly_reset_at)),
        ("total requests", str(status.total_requests)),
    ]
    return {**key_json(key, now), "quota": quota}, pairs(rows)


async def _revoke(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    key = await admin.get_key(args.id)
    if key.revoked_at is not None and key.revoked_at <= now:
        return key_json(key, now), f"Key {key.id} was already revoked ({short(key.revoked_at)})."
    key = await admin.revoke_key(key.id)
    return key_json(key, now), f"Revoked key {key.id} ({key.name})."


async def _rotate(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    key = await admin.get_key(args.id)
    if not key.active(now):
        raise Conflict(f"key {key.id} is {key_status(key, now)}: create a new key instead")
    key, secret = await admin.rotate_key(key.id, grace=args.grace)
    old_until = isoformat_ms(now + args.grace)
    data = {**key_json(key, now), "key": secret, "previous_secret_expires_at": old_until}
    rows = [
        ("id", key.id),
        ("name", key.name),
        ("old secret works until", old_until),
        ("secret", secret),
    ]
    return data, f"{pairs(rows)}\n\n{ONCE}"


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `keys` and its subcommands to the command line."""
    keys = commands.add_parser("keys", help="create, list, show, update, revoke or rotate keys")
    group = keys.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, run: Any, summary: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=summary, description=summary
        )
        sub.set_defaults(command=run)
        return sub

    create = command("create", _create, "create a key and print its secret once")
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument("--account", type=id_arg, help="account id (default: a new account)")
    create.add_argument(
        "--tier",
        type=tier_arg,
        help="a new account's plan, or the key's own tier in an existing account "
        "(default: free for a new account, else the account's)",
    )
    create.add_argument("--permission", choices=PERMISSIONS, default="full_access")
    create.add_argument("--website-id", help="the one website of a site_access key")
    create.add_argument("--per-minute", type=count_arg, metavar="N", help="override the tier's")
    create.add_argument("--monthly-limit", type=count_arg, metavar="N", help="override the tier's")
    create.add_argument(
        "--monthly-credits", type=count_arg, metavar="N", help="override the tier's"
    )
    create.add_argument(
        "--billing-anchor-day",
        type=number(int, 1, 31, "a day of the month (1-31)"),
        metavar="D",
        help="day of the month the quota resets (default: 1)",
    )
    create.add_argument(
        "--expires-in",
        type=number(float, 0.001, MAX_DAYS, f"0.001 to {MAX_DAYS} days"),
        metavar="DAYS",
        help="expire after this many days (default: never)",
    )

    update = command("update", _update, "change a key's name, tier, limits or expiry")
    update.add_argument("id", type=id_arg)
    update.add_argument("--name", help="a new name")
    update.add_argument(
        "--tier", type=tier_or_none_arg, help="the key's own tier, or none to follow its account"
    )
    for option in ("--per-minute", "--monthly-limit", "--monthly-credits"):
        update.add_argument(
            option, type=limit_arg, metavar="N|none", help="override the tier's (none: the tier's)"
        )
    update.add_argument(
        "--expires-in", type=days_arg, metavar="DAYS|never", help="expire DAYS from now, or never"
    )

    listing = command("list", _list, "list keys (never their secrets)")
    listing.add_argument("--account", type=id_arg, help="only this account's keys")
    command("show", _show, "a key and its current quota").add_argument("id", type=id_arg)
    command("revoke", _revoke, "revoke a key now").add_argument("id", type=id_arg)
    rotate = command("rotate", _rotate, "give a key a new secret and print it once")
    rotate.add_argument("id", type=id_arg)
    rotate.add_argument(
        "--grace",
        type=number(float, 0, MAX_GRACE, "0 to 366 days in seconds"),
        default=0.0,
        metavar="SECONDS",
        help="how long the old secret keeps working (default: 0)",
    )
