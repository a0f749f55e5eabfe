"""`meterware export`: send the usage outbox to a billing system or a file.

```
meterware export --sink stripe|cloudevents|lago|jsonl|csv [--url URL] [--since YYYY-MM-DD]
                 [--follow] [--batch N] [--poll SECONDS] [--retries N] [--lease-ttl SECONDS]
                 [--reader NAME] [sink options] [--storage URL] [--json]
meterware export --sink NAME --rejections [--reader NAME] [--storage URL] [--json]
```

Sink options, none of them a secret: `--event-name`, `--value credits|calls|requests`
and `--customer-key` (stripe); `--source`, `--type` and `--subject account|external_id`
(cloudevents); `--code` and `--subscription account|external_id` (lago). `--url` is the
service's URL (Stripe and Lago have defaults), or the file of `jsonl` and `csv`.
Credentials come from the environment only (`STRIPE_API_KEY`, `OPENMETER_API_KEY`,
`LAGO_API_KEY`) and are never printed; the store from `--storage` or
`METERWARE_STORAGE`. Run the middleware with `outbox=True` (or `METERWARE_OUTBOX=1`) so
that there is something to export.

Without `--follow` it sends what is pending and stops, giving up after `--retries`
consecutive failures (default 5: about 30 s of backoff). With `--follow` it runs as a
sidecar, one per deployment (a second one stands by: a lease in the store), until
SIGTERM or SIGINT: the batch in flight gets a few seconds to finish, what it had not
acknowledged is sent again by the next run, and the lease is released. It prints a
summary (sent, rejected with the reasons, the cursor, what remains); `--rejections`
lists what the sink gave up on. Progress and trouble are logged on stderr.

Exit status: 0 everything pending was sent (or a follow was stopped); 1 the sink or the
store stayed unavailable (or any other failure); 2 a bad command line; 3 a value refused;
6 events were rejected (loud: listed on stdout, logged, kept in the store); 7 another
exporter holds the lease. When several apply, the first in the order 1, 7, 6. See
`meterware.export.exporter` for the delivery guarantees.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import date
from typing import Any

from meterware.admin import Admin
from meterware.cli.args import UsageError, day_arg, number
from meterware.cli.output import pairs, short, table
from meterware.cli.sidecar import GaveUp, LeaseHeld, Rejected, log_to_stderr, stopping
from meterware.clock import isoformat_ms, midnight
from meterware.errors import MeterwareError
from meterware.export.exporter import Exporter, Summary
from meterware.export.registry import sink_from
from meterware.export.sinks import SINK_NAMES
from meterware.metrics import Metrics, metrics_from_env
from meterware.storage.base import redact

Output = tuple[Any, str]

SINK_OPTIONS = {
    "event_name": "stripe", "value": "stripe", "customer_key": "stripe",
    "source": "cloudevents", "type": "cloudevents", "subject": "cloudevents",
    "code": "lago", "subscription": "lago",
}  # fmt: skip
"""Each sink option and the sink it belongs to."""

REQUIRED = {"stripe": "event_name", "cloudevents": "url", "lago": "code", "jsonl": "url",
            "csv": "url"}  # fmt: skip
"""The option each sink cannot do without."""


async def _export(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    reader = args.reader or f"export:{args.sink}"
    if args.rejections:
        return await _rejections(admin, reader)
    options = {name: getattr(args, name) for name in SINK_OPTIONS if getattr(args, name)}
    for name in options:
        if SINK_OPTIONS[name] != args.sink:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"meterware export: error: {flag} is an option of the "
                             f"{SINK_OPTIONS[name]} sink, not of {args.sink}")  # fmt: skip
    needed = REQUIRED[args.sink]
    if not getattr(args, needed):
        flag = "--" + needed.replace("_", "-")
        raise UsageError(f"meterware export: error: the {args.sink} sink needs {flag} (see --help)")
    since = None if args.since is None else midnight(date.fromisoformat(args.since))
    with log_to_stderr():
        async with sink_from(args.sink, url=args.url, **options) as sink:
            metrics = metrics_from_env()  # the lag gauge, beside the workers' metrics
            exporter = Exporter(
                admin.store, sink, name=reader, batch=args.batch, since=since,
                lease_ttl=args.lease_ttl,
                on_lag=None if metrics is None else _lag_to(metrics),
            )  # fmt: skip
            with stopping() as stop:
                try:
                    summary = await exporter.run(
                        follow=args.follow, poll=args.poll, stop=stop, retries=args.retries
                    )
                finally:
                    if metrics is not None:
                        metrics.retire()
    data = {"sink": args.sink, "url": redact(str(args.url or getattr(sink, "url", ""))),
            **summary.as_dict()}  # fmt: skip
    text = _text(args.sink, summary)
    failure = _failure(args, summary)
    if failure is None:
        return data, text
    print(json.dumps(data, indent=2) if args.json else text, flush=True)
    raise failure


def _failure(args: argparse.Namespace, summary: Summary) -> MeterwareError | None:
    """The error the command exits with, if the run did not send everything."""
    if summary.unavailable is not None:
        return GaveUp(f"{summary.unavailable} (gave up after {args.retries + 1} attempts; "
                      "run again, or with --follow)")  # fmt: skip
    if summary.lease_held and not args.follow:
        return LeaseHeld(f"another exporter holds the lease {summary.reader}: nothing more "
                         "was sent")  # fmt: skip
    if summary.rejected:
        return Rejected(
            f"{_events(len(summary.rejected))} REJECTED by {args.sink}, never to be sent again "
            f"(listed above; `meterware export --sink {args.sink} --rejections` lists them all)"
        )
    return None


def _text(sink: str, summary: Summary) -> str:
    remaining = "unknown" if summary.remaining is None else _events(summary.remaining)
    rows = [
        ("reader", summary.reader),
        ("sent", f"{_events(summary.sent)} in {summary.batches} batch(es)"),
        ("rejected", _events(len(summary.rejected))),
        ("cursor", f"after outbox event {summary.position}"),
        ("remaining", remaining),
        ("retried", f"{summary.failures} failed attempt(s)"),
    ]
    if summary.lease_held:
        rows.append(("lease", "held by another exporter"))
    if summary.unavailable is not None:
        rows.append(("gave up", summary.unavailable))
    text = f"Export to {sink}:\n\n{pairs(rows)}"
    if summary.rejected:
        lines = [["SEQ", "ID", "ACCOUNT", "REASON"]]
        lines += [[str(r.seq), r.id, r.account_id, r.reason] for r in summary.rejected]
        text += (f"\n\nREJECTED by {sink}: these events will never be sent again.\n\n"
                 f"{table(lines)}")  # fmt: skip
    return text


def _events(n: int) -> str:
    return f"{n} event{'s' * (n != 1)}"


async def _rejections(admin: Admin, reader: str) -> Output:
    found = await admin.store.rejections(reader)
    data = [
        {"seq": seq, "id": id, "reason": reason, "at": isoformat_ms(at)}
        for seq, id, reason, at in found
    ]
    if not found:
        return data, f"No rejections for {reader}."
    rows = [["SEQ", "ID", "WHEN", "REASON"]]
    rows += [[str(seq), id, short(at), reason] for seq, id, reason, at in found]
    return data, f"Rejected for {reader}:\n\n{table(rows)}"


def _lag_to(metrics: Metrics) -> Callable[[float], None]:
    """`on_lag` for the exporter: set the gauge and publish it at once (this process
    serves no scrape: the workers' `/metrics` reads it from the multiprocess directory)."""

    def lag(seconds: float) -> None:
        metrics.exporter_lag(seconds)
        metrics.publish()

    return lag


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `export` to the command line."""
    summary = "send the usage outbox to a billing system or a file"
    parser = commands.add_parser(
        "export",
        parents=[common],
        help=summary,
        description=(
            f"{summary}, in order, each event acknowledged once the sink has it. "
            "Credentials come from the environment: STRIPE_API_KEY, OPENMETER_API_KEY, "
            "LAGO_API_KEY. Exit status: 0 all sent, 1 the sink stayed unavailable, "
            "6 events rejected, 7 another exporter holds the lease."
        ),
    )
    parser.set_defaults(command=_export)
    parser.add_argument("--sink", required=True, choices=SINK_NAMES, help="where usage goes")
    parser.add_argument(
        "--url", help="the service's URL, or the file of jsonl and csv (a path or file:// URL)"
    )
    parser.add_argument(
        "--since", type=day_arg, metavar="YYYY-MM-DD",
        help="where a new reader starts (UTC); one that has a cursor keeps it",
    )  # fmt: skip
    parser.add_argument(
        "--follow", action="store_true", help="keep sending as usage arrives, until SIGTERM"
    )
    parser.add_argument(
        "--batch", type=number(int, 1, 10_000, "an integer from 1 to 10000"), metavar="N",
        help="events a batch (default: the sink's, 100 or 1000 for files)",
    )  # fmt: skip
    parser.add_argument(
        "--poll", type=number(float, 0.01, 3600, "0.01 to 3600 seconds"), default=1.0,
        metavar="SECONDS", help="with --follow, how often to look for new usage (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=number(int, 0, 1000, "an integer from 0 to 1000"), default=5,
        metavar="N", help="without --follow, failed attempts retried before giving up "
        "(default: 5)",
    )  # fmt: skip
    parser.add_argument(
        "--lease-ttl", type=number(float, 1, 3600, "1 to 3600 seconds"), default=30.0,
        metavar="SECONDS", help="how long the lease outlives a crashed exporter (default: 30)",
    )  # fmt: skip
    parser.add_argument(
        "--reader", metavar="NAME",
        help="the cursor and lease name (default: export:SINK); one per destination",
    )  # fmt: skip
    parser.add_argument(
        "--rejections", action="store_true", help="list what the sink gave up on, and stop"
    )
    stripe = parser.add_argument_group("stripe")
    stripe.add_argument("--event-name", help="the meter's event name (required)")
    stripe.add_argument(
        "--value", choices=("credits", "calls", "requests"), help="what a meter event counts "
        "(default: credits)",
    )  # fmt: skip
    stripe.add_argument(
        "--customer-key", help="the meter's payload key for the customer "
        "(default: stripe_customer_id)",
    )  # fmt: skip
    cloudevents = parser.add_argument_group("cloudevents")
    cloudevents.add_argument("--source", help="the events' source (default: meterware)")
    cloudevents.add_argument("--type", help="the events' type (default: api-usage)")
    cloudevents.add_argument(
        "--subject", choices=("account", "external_id"),
        help="the account's external id (falling back to its id), or always its id",
    )  # fmt: skip
    lago = parser.add_argument_group("lago")
    lago.add_argument("--code", help="the billable metric's code (required)")
    lago.add_argument(
        "--subscription", choices=("account", "external_id"),
        help="the external subscription id: the account's external id (default) or its id",
    )  # fmt: skip
