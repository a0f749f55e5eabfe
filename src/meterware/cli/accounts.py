"""`meterware accounts`: create, list and show accounts, change their plan and names."""

from __future__ import annotations

import argparse
from typing import Any

from meterware.admin import Admin
from meterware.cli.args import id_arg, tier_arg
from meterware.cli.output import account_rows, key_rows, pairs, table
from meterware.views import account_json, key_json

Output = tuple[Any, str]  # (what --json prints, what people read)

_FIELDS = ("name", "tier", "external_id", "stripe_customer_id")


async def _create(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    given = {f: getattr(args, f) for f in _FIELDS if getattr(args, f) is not None}
    account = await admin.create_account(account_id=args.id, **given)
    return account_json(account), pairs(account_rows(account, 0))


async def _list(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    accounts = await admin.list_accounts()
    keys: dict[str, int] = {}
    for key in await admin.list_keys():
        keys[key.account_id] = keys.get(key.account_id, 0) + 1
    rows = [["ID", "NAME", "TIER", "EXTERNAL ID", "KEYS"]]
    rows += [[a.id, a.name or "-", a.tier, a.external_id or "-", str(keys.get(a.id, 0))]
             for a in accounts]  # fmt: skip
    data = [{**account_json(a), "keys": keys.get(a.id, 0)} for a in accounts]
    return data, table(rows) if accounts else "No accounts."


async def _show(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    account = await admin.get_account(args.id)
    keys = await admin.list_keys(account.id)
    text = pairs(account_rows(account, len(keys)))
    if keys:
        columns = ("id", "name", "tier", "status", "last used")
        rows = [[c.upper() for c in columns]]
        rows += [[dict(key_rows(k, now))[c] for c in columns] for k in keys]
        text += "\n\n" + table(rows)
    return {**account_json(account), "keys": [key_json(k, now) for k in keys]}, text


async def _set_tier(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    account = await admin.set_tier(args.id, args.tier)
    return account_json(account), f"Account {account.id} is on the {account.tier} plan."


async def _update(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    changes: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(args, name)
        if value is not None:
            changes[name] = None if value == "" and name != "tier" else value
    if not changes:
        raise ValueError(
            "nothing to change: give --name, --tier, --external-id or --stripe-customer"
        )
    account = await admin.update_account(args.id, **changes)
    return account_json(account), pairs(
        account_rows(account, len(await admin.list_keys(account.id)))
    )


def _naming(parser: argparse.ArgumentParser, clear: bool) -> None:
    hint = " ('' clears it)" if clear else ""
    parser.add_argument("--name", help=f"a name for people{hint}")
    parser.add_argument("--external-id", help=f"the account's id in your own systems{hint}")
    parser.add_argument(
        "--stripe-customer", dest="stripe_customer_id", help=f"its Stripe customer id{hint}"
    )


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `accounts` and its subcommands to the command line."""
    accounts = commands.add_parser("accounts", help="create, list, show or change accounts")
    group = accounts.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, run: Any, summary: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=summary, description=summary
        )
        sub.set_defaults(command=run)
        return sub

    create = command("create", _create, "create an account")
    create.add_argument("--id", type=id_arg, help="its id (default: a new one)")
    create.add_argument("--tier", type=tier_arg, help="its plan (default: free)")
    _naming(create, clear=False)
    command("list", _list, "list accounts")
    command("show", _show, "an account and its keys").add_argument("id", type=id_arg)
    set_tier = command("set-tier", _set_tier, "move an account to another plan")
    set_tier.add_argument("id", type=id_arg)
    set_tier.add_argument("tier", type=tier_arg)
    update = command("update", _update, "change an account's plan or names")
    update.add_argument("id", type=id_arg)
    update.add_argument("--tier", type=tier_arg, help="its plan")
    _naming(update, clear=True)
