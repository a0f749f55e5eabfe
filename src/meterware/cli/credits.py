"""`meterware credits`: grant prepaid credits to an account, show its balance."""

from __future__ import annotations

import argparse
from typing import Any

from meterware.admin import Admin
from meterware.cli.args import id_arg, number
from meterware.cli.output import pairs, short, table
from meterware.clock import DAY, MAX_DAYS

Output = tuple[Any, str]  # (what --json prints, what people read)


async def _grant(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    expires_at = None if args.expires_in is None else now + args.expires_in * DAY
    grant, added = await admin.grant_credits(
        args.account, args.amount, expires_at=expires_at, grant_id=args.id
    )
    balance = await admin.credits(grant.account_id)
    what = "Granted" if added else "Already granted (nothing added)"
    rows = [
        ("grant", grant.grant_id),
        ("credits", f"{grant.amount:,}"),
        ("expires", short(grant.expires_at)),
        ("balance now", f"{balance.balance:,}"),
    ]
    line = next(g for g in balance.grants if g.grant.grant_id == grant.grant_id)
    data = {"grant": line.as_dict(), "added": added, "balance": balance.balance}
    return data, f"{what} to account {grant.account_id}:\n{pairs(rows)}"


async def _show(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    balance = await admin.credits(args.account)
    text = f"Account {balance.account_id}: balance {balance.balance:,} credits"
    if balance.grants:
        rows = [["GRANT", "AMOUNT", "USED", "REMAINING", "EXPIRES", "STATE"]]
        rows += [[g.grant.grant_id, f"{g.grant.amount:,}", f"{g.used:,}", f"{g.remaining:,}",
                  short(g.grant.expires_at), g.state] for g in balance.grants]  # fmt: skip
        text += "\n\n" + table(rows)
    if balance.movements:
        rows = [["DAY", "WHAT", "GRANT", "ACTION", "CREDITS"]]
        rows += [[m.day, m.kind, m.grant_id, m.action or "-", f"{m.credits:+,}"]
                 for m in balance.movements]  # fmt: skip
        text += "\n\n" + table(rows)
    return balance.as_dict(), text


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `credits` and its subcommands to the command line."""
    credits = commands.add_parser("credits", help="grant prepaid credits, show a balance")
    group = credits.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, run: Any, summary: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=summary, description=summary
        )
        sub.set_defaults(command=run)
        return sub

    grant = command("grant", _grant, "give an account prepaid credits (idempotent by --id)")
    grant.add_argument("account", type=id_arg)
    grant.add_argument("amount", type=number(int, 1, 2**53, "an integer > 0"))
    grant.add_argument(
        "--expires-in",
        type=number(float, 0.001, MAX_DAYS, f"0.001 to {MAX_DAYS} days"),
        metavar="DAYS",
        help="the credits expire after this many days (default: never)",
    )
    grant.add_argument("--id", type=id_arg, metavar="GRANT_ID",
                       help="the grant's id: granting it again adds nothing")  # fmt: skip
    show = command("show", _show, "an account's balance, grants and movements")
    show.add_argument("account", type=id_arg)
