"""`meterware tiers`: the tier table in force (`METERWARE_TIERS`, or the default)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from meterware.cli.output import count, table
from meterware.tiers import TierTable

Output = tuple[Any, str]


async def _tiers(args: argparse.Namespace, now: float) -> Output:
    """The tier table and the legacy names."""
    tiers = TierTable.from_env()
    header = ["TIER", "MONTHLY REQUESTS", "PER MINUTE", "MONTHLY CREDITS"]
    rows = [
        [t.name, count(t.monthly_requests), count(t.per_minute), count(t.monthly_credits)]
        for t in tiers
    ]
    legacy = "\n".join(f"{old} -> {new}" for old, new in tiers.aliases.items())
    text = table([header, *rows]) + (f"\n\nLegacy names:\n{legacy}" if legacy else "")
    return {"tiers": [dataclasses.asdict(t) for t in tiers], "aliases": tiers.aliases}, text


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `tiers` to the command line."""
    summary = "the tier table and the legacy tier names (--storage is not read)"
    tiers = commands.add_parser("tiers", parents=[common], help=summary, description=summary)
    tiers.set_defaults(command=_tiers, standalone=True)
