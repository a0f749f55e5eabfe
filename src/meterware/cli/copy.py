"""`meterware copy`: move a deployment's data from one store to another (see
`meterware.storage.transfer` for what it copies and when it refuses)."""

from __future__ import annotations

import argparse
from typing import Any

from meterware.cli.args import Parser
from meterware.cli.output import pairs
from meterware.storage.base import redact
from meterware.storage.transfer import copy_urls

Output = tuple[Any, str]


async def _copy(args: argparse.Namespace, now: float) -> Output:
    """Copy one store into another, and check the result."""
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
        f"{verb} {source} into {destination}, and checked it.\n\n{pairs(rows)}\n\n"
        "Secrets were copied as hashes: serve the destination with the same METERWARE_PEPPER."
    )
    return data, text


def register(commands: Any) -> None:
    """Add `copy` to the command line."""
    only_json = Parser(add_help=False)
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
    copying.set_defaults(command=_copy, standalone=True)
