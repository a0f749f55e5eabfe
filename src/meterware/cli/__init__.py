"""The `meterware` command: manage accounts and API keys, read usage, show the tiers, copy
one store into another.

```
meterware keys create --name NAME [--account ID] [--tier TIER] [--permission P] ...
meterware keys list [--account ID]
meterware keys show ID
meterware keys update ID [--name N] [--tier T|none] [--per-minute N|none] ...
meterware keys revoke ID
meterware keys rotate ID [--grace SECONDS]
meterware accounts create|list|show ID|set-tier ID TIER|update ID ...
meterware credits grant ACCOUNT AMOUNT [--expires-in DAYS] [--id GRANT_ID]
meterware credits show ACCOUNT
meterware usage [--account ID | --key ID] [--from DAY] [--to DAY] [--by B] [--csv]
meterware export --sink stripe|cloudevents|lago|jsonl|csv [--url URL] [--follow] ...
meterware portal-link ACCOUNT --base-url URL [--expires-in MINUTES]
meterware webhooks deliver [--follow] | test | rejected
meterware tiers
meterware copy SOURCE_URL DEST_URL [--merge]
```

Every command on a store takes `--storage URL` (default `$METERWARE_STORAGE`, else
`sqlite:///meterware.db`), `--key-prefix` and `--json`; `copy` takes `--merge` and
`--json`. Secrets are hashed with `$METERWARE_PEPPER`, as the middleware hashes them,
and printed only by `create` and `rotate`. A failure is one line on stderr, and the exit
status says which: 2 a bad command line, 3 an invalid value (in an argument, or one the
operation refuses), 4 no such account or key,
5 a conflict with what is stored (a revoked key, an id taken), 6 usage events a billing
system rejected (`export`), 7 another exporter holds the lease (`export`), 1 anything
else.

The commands are thin: they parse, call `meterware.Admin` (or the storage transfer),
and print. Each module of this package adds its commands with `register`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from meterware.admin import Admin
from meterware.cli import accounts, copy, credits, export, keys, portal, tiers, usage, webhooks
from meterware.cli.args import Parser, UsageError, store_options
from meterware.cli.output import fail
from meterware.errors import InvalidValue, MeterwareError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default `sys.argv[1:]`); the exit status."""
    try:
        args = parser().parse_args(argv)
        data, text = asyncio.run(_run(args))
    except UsageError as exc:
        return fail(str(exc), exc.status)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except MeterwareError as exc:
        return fail(f"meterware: error: {exc or type(exc).__name__}", exc.exit_status)
    except ValueError as exc:  # a value the command itself refused
        return fail(f"meterware: error: {exc}", InvalidValue.exit_status)
    except (OSError, ImportError) as exc:
        return fail(f"meterware: error: {exc or type(exc).__name__}", 1)
    except KeyboardInterrupt:
        return fail("meterware: interrupted", 130)
    print(json.dumps(data, indent=2) if args.json and not getattr(args, "csv", False) else text)
    return 0


async def _run(args: argparse.Namespace) -> tuple[Any, str]:
    now = time.time()  # one instant for the whole command
    if getattr(args, "standalone", False):
        result: tuple[Any, str] = await args.command(args, now)
        return result
    async with Admin(args.storage, key_prefix=args.key_prefix, clock=lambda: now) as admin:
        result = await args.command(args, admin, now)
        return result


def parser() -> argparse.ArgumentParser:
    """The whole command line."""
    common = store_options()
    top = Parser(prog="meterware", description="Manage meterware accounts and API keys.")
    commands = top.add_subparsers(title="commands", metavar="COMMAND", required=True)
    keys.register(commands, common)
    accounts.register(commands, common)
    credits.register(commands, common)
    usage.register(commands, common)
    export.register(commands, common)
    portal.register(commands, common)
    webhooks.register(commands, common)
    tiers.register(commands, common)
    copy.register(commands)
    return top
