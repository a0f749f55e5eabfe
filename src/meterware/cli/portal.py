"""`meterware portal-link`: a signed, short-lived link to an account's usage page."""

from __future__ import annotations

import argparse
from typing import Any

from meterware.admin import Admin
from meterware.cli.args import id_arg, number
from meterware.cli.output import pairs
from meterware.views import iso

Output = tuple[Any, str]  # (what --json prints, what people read)


async def _link(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    await admin.get_account(args.account)  # an unknown account: no link
    url, expires_at = admin.portal_link(
        args.account, args.base_url, expires_in=args.expires_in * 60
    )
    data = {"url": url, "expires_at": iso(expires_at)}
    return data, pairs([("link", url), ("expires", iso(expires_at) or "")])


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `portal-link` to the command line."""
    summary = "a signed link to an account's usage page ($METERWARE_PORTAL_SECRET)"
    link: argparse.ArgumentParser = commands.add_parser(
        "portal-link", parents=[common], help=summary, description=summary
    )
    link.set_defaults(command=_link)
    link.add_argument("account", type=id_arg)
    link.add_argument(
        "--base-url", required=True, metavar="URL",
        help="where the page is served (https://api.example.com/portal)",
    )  # fmt: skip
    link.add_argument(
        "--expires-in", type=number(float, 0.1, 1440, "0.1 to 1440 minutes"), default=15.0,
        metavar="MINUTES", help="how long the link works (default: 15)",
    )  # fmt: skip
