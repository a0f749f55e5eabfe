"""`meterware webhooks`: deliver the stored notices to the webhook endpoint, beside the
app rather than in it; test the endpoint; list the notices given up on.

```
meterware webhooks deliver [--follow] [--owner NAME] [--lease-ttl SECONDS]
                           [--timeout SECONDS] [--retries N] [--storage URL] [--json]
meterware webhooks test [--timeout SECONDS] [--json]
meterware webhooks rejected [--name NAME] [--storage URL] [--json]
```

The endpoint comes from the environment only: `METERWARE_WEBHOOK_URL` and
`METERWARE_WEBHOOK_SECRET` (never an argument, never printed), with
`METERWARE_WEBHOOK_NAME` and `METERWARE_WEBHOOK_TYPES` if set (see
`meterware.webhooks`); the store from `--storage` or `METERWARE_STORAGE`.

`deliver` sends what is pending and stops, retrying a failing endpoint with backoff up
to `--retries` consecutive failed attempts (default 5: about 30 s). With `--follow` it
runs as a sidecar until SIGTERM or SIGINT: the notice in flight is finished, the lease
released. One process delivers to an endpoint at a time (a lease in the store); a second
one stands by. Give a sidecar a stable `--owner` (its pod's name, say) and a restart
resumes at once instead of waiting out its old lease. It prints a summary; progress and
trouble are logged on stderr. `test` sends one signed `meterware.test` notice (not
stored) and prints the answer. `rejected` lists the notices given up on (`--name`: an
endpoint other than the environment's).

Exit status: 0 everything pending was delivered (or a follow was stopped); 1 the endpoint
or the store stayed unavailable, or `test` got no 2xx; 2 a bad command line; 3 a value
refused; 6 notices were given up on during the run (listed by `rejected`); 7 another
sender holds the endpoint's lease. When several apply, the first in the order 1, 7, 6.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
from typing import Any

from meterware.admin import Admin
from meterware.cli.args import Parser, id_arg, number
from meterware.cli.output import pairs, short, table
from meterware.cli.sidecar import GaveUp, LeaseHeld, Rejected, log_to_stderr, stopping
from meterware.errors import ConfigurationError, InvalidValue, MeterwareError
from meterware.storage.base import redact
from meterware.storage.records import Notice
from meterware.webhooks import (
    EndpointStatus,
    WebhookEndpoint,
    WebhookSender,
    endpoints_from_env,
    retry_delay,
    send_once,
)

Output = tuple[Any, str]


def _endpoint() -> WebhookEndpoint:
    endpoints = endpoints_from_env()
    if not endpoints:
        raise ConfigurationError(
            "no webhook endpoint: set METERWARE_WEBHOOK_URL and METERWARE_WEBHOOK_SECRET"
        )
    return endpoints[0]


async def _deliver(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    endpoint = _endpoint()
    if not args.lease_ttl > 2 * args.timeout + 1:
        raise InvalidValue("--lease-ttl must be more than 2 × --timeout + 1 seconds")
    sender = WebhookSender(
        admin.store, [endpoint], owner=args.owner, lease_ttl=args.lease_ttl, timeout=args.timeout
    )
    with log_to_stderr(), stopping() as stop:
        if args.follow:
            await sender.run(stop)
            gave_up = None
        else:
            try:
                gave_up = await _until_done(sender, stop, args.retries)
            finally:
                await sender.aclose()
    (status,) = sender.status
    data = {"reader": endpoint.reader, **status.as_dict(), "gave_up": gave_up}
    text = _summary(endpoint, status, gave_up)
    failure = _failure(args, endpoint, status, gave_up)
    if failure is None:
        return data, text
    print(json.dumps(data, indent=2) if args.json else text, flush=True)
    raise failure


async def _until_done(sender: WebhookSender, stop: asyncio.Event, retries: int) -> str | None:
    """Rounds until every endpoint is caught up (or held elsewhere), with backoff between
    failed ones; why it gave up after `retries` consecutive failures, or None."""
    store_failures = 0
    while not stop.is_set():
        await sender.run_once()
        waits = []
        for status in sender.status:
            if status.store_error is not None:
                store_failures += 1
                if store_failures > retries:
                    return status.store_error
                waits.append(retry_delay(store_failures, 0.5))
                continue
            store_failures = 0
            if status.failing > retries:
                return str(status.last_error)
            if status.failing:
                waits.append(status.next_try - sender.clock())
            elif status.holding and not status.caught_up:
                waits.append(0.0)
        if not waits:
            return None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, min(waits)))
    return None


def _summary(endpoint: WebhookEndpoint, status: EndpointStatus, gave_up: str | None) -> str:
    lease = "held by this run" if status.holding else "another sender holds it"
    if not status.holding and not status.delivered and status.position is None:
        lease = "another sender holds it (nothing was sent)"
    rows = [
        ("delivered", f"{status.delivered} notices"),
        ("given up", f"{status.rejected} notices"),
        ("skipped", f"{status.skipped} notices (types not taken, or older than a new reader)"),
        ("cursor", "not read" if status.position is None else f"after notice {status.position}"),
        ("lease", f"{endpoint.reader}: {lease}"),
        ("retried", f"{status.failures} failed attempts"),
    ]
    if status.last_error is not None:
        rows.append(("last error", status.last_error))
    if gave_up is not None:
        rows.append(("gave up", gave_up))
    return f"Webhooks to {redact(endpoint.url)}:\n\n{pairs(rows)}"


def _failure(
    args: argparse.Namespace, endpoint: WebhookEndpoint, status: EndpointStatus, gave_up: str | None
) -> MeterwareError | None:
    """The error the command exits with, if the run did not deliver everything."""
    if gave_up is not None:
        return GaveUp(
            f"{gave_up} (gave up after {args.retries + 1} attempts; run again, or with --follow)"
        )
    if not status.holding and not args.follow:
        return LeaseHeld(f"another sender holds the lease {endpoint.reader}: nothing more was sent")
    if status.rejected:
        n = status.rejected
        return Rejected(
            f"{n} notice{'s' * (n != 1)} GIVEN UP, never to be sent again "
            "(`meterware webhooks rejected` lists them)"
        )
    return None


async def _test(args: argparse.Namespace, now: float) -> Output:
    endpoint = _endpoint()
    notice = Notice(
        id=f"mw_test_{secrets.token_hex(8)}",
        type="meterware.test",
        account_id=None,
        key_id=None,
        data={"message": "a test notice from `meterware webhooks test`"},
        created_at=now,
    )
    attempt = await send_once(endpoint, notice, timeout=args.timeout)
    url = redact(endpoint.url)
    data = {"url": url, "webhook_id": notice.id, "status": attempt.status, "error": attempt.error}
    if not attempt.ok:
        raise GaveUp(f"the test notice {notice.id} to {url}: {attempt.describe()}")
    return (
        data,
        f"Sent a signed meterware.test notice ({notice.id}) to {url}: {attempt.describe()}.",
    )


async def _rejected(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    reader = f"webhook:{args.name}" if args.name else _endpoint().reader
    found = await admin.store.rejections(reader)
    data = [{"seq": seq, "id": id, "reason": reason, "at": at} for seq, id, reason, at in found]
    if not found:
        return data, f"No notices given up on for {reader}."
    rows = [["SEQ", "ID", "WHEN", "REASON"]]
    rows += [[str(seq), id, short(at), reason] for seq, id, reason, at in found]
    return data, f"Given up on for {reader}:\n\n{table(rows)}"


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `webhooks` and its subcommands to the command line."""
    webhooks = commands.add_parser(
        "webhooks", help="deliver notices to the webhook endpoint, test it, list rejections"
    )
    group = webhooks.add_subparsers(title="commands", metavar="COMMAND", required=True)
    env = (
        "The endpoint comes from METERWARE_WEBHOOK_URL and METERWARE_WEBHOOK_SECRET "
        "(never from an argument)."
    )
    timeout = {
        "type": number(float, 0.1, 300, "0.1 to 300 seconds"),
        "default": 10.0,
        "metavar": "SECONDS",
        "help": "the bound of each HTTP and store call (default: 10)",
    }

    summary = "deliver the stored notices to the webhook endpoint"
    deliver = group.add_parser(
        "deliver",
        parents=[common],
        help=summary,
        description=f"{summary}, in order, signed as Standard Webhooks. {env} Exit status: "
        "0 all delivered, 1 the endpoint stayed unavailable, 6 notices given up on, "
        "7 another sender holds the lease.",
    )
    deliver.set_defaults(command=_deliver)
    deliver.add_argument(
        "--follow", action="store_true", help="keep delivering as notices arrive, until SIGTERM"
    )
    deliver.add_argument(
        "--owner", type=id_arg, metavar="NAME",
        help="who holds the lease: a stable name resumes at once after a restart "
        "(default: host:pid:random); never two running senders with one owner",
    )  # fmt: skip
    deliver.add_argument(
        "--lease-ttl", type=number(float, 1, 3600, "1 to 3600 seconds"), default=30.0,
        metavar="SECONDS", help="how long the lease outlives a crashed sender (default: 30)",
    )  # fmt: skip
    deliver.add_argument("--timeout", **timeout)
    deliver.add_argument(
        "--retries", type=number(int, 0, 1000, "an integer from 0 to 1000"), default=5,
        metavar="N", help="without --follow, failed attempts retried before giving up "
        "(default: 5)",
    )  # fmt: skip

    only_json = Parser(add_help=False)
    only_json.add_argument("--json", action="store_true", help="print JSON")
    summary = "send one signed meterware.test notice to the webhook endpoint"
    test = group.add_parser(
        "test", parents=[only_json], help=summary, description=f"{summary} (not stored). {env}"
    )
    test.set_defaults(command=_test, standalone=True)
    test.add_argument("--timeout", **timeout)

    summary = "list the notices given up on"
    rejected = group.add_parser(
        "rejected", parents=[common], help=summary, description=f"{summary}, with the reasons."
    )
    rejected.set_defaults(command=_rejected)
    rejected.add_argument(
        "--name", type=id_arg, metavar="NAME",
        help="the endpoint's name (default: the environment's endpoint)",
    )  # fmt: skip
