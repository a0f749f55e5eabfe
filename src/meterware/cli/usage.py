"""`meterware usage`: what accounts and keys used over any range of days, as a table
ending with a per-day sparkline of calls, as JSON or as CSV."""

from __future__ import annotations

import argparse
import csv
import io
from typing import Any

from meterware.admin import GROUPINGS, Admin, UsageLine, UsageReport
from meterware.cli.args import day_arg, id_arg
from meterware.cli.output import table
from meterware.storage.records import OUTCOME_FIELDS

Output = tuple[Any, str]  # (what --json prints, what people read)

BARS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 62  # days per sparkline row


async def _usage(args: argparse.Namespace, admin: Admin, now: float) -> Output:
    report = await admin.usage(
        account_id=args.account,
        key_id=args.key,
        first_day=args.first,
        last_day=args.last,
        by=args.by,
    )
    if args.csv:
        return report.as_dict(), as_csv(report)
    return report.as_dict(), as_text(report)


def _columns(report: UsageReport) -> list[str]:
    return {"day": ["day"], "action": ["action"], "key": ["account_id", "key_id"],
            "account": ["account_id"]}[report.by]  # fmt: skip


def as_csv(report: UsageReport) -> str:
    """One row per line of the report, then a `total` row; refusals by outcome last."""
    out = io.StringIO()
    columns = _columns(report)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*columns, "requests", "calls", "credits", *OUTCOME_FIELDS])
    for line in report.lines:
        values = line.as_dict()
        writer.writerow([*(values[c] for c in columns), *_counts(line)])
    writer.writerow(["total", *[""] * (len(columns) - 1), *_counts(report.total)])
    return out.getvalue().rstrip("\n")


def _counts(line: UsageLine) -> list[int]:
    return [line.requests, line.calls, line.credits,
            *(line.outcomes.get(o, 0) for o in OUTCOME_FIELDS)]  # fmt: skip


def as_text(report: UsageReport) -> str:
    columns = _columns(report)
    head = f"Usage {report.first_day} to {report.last_day}, by {report.by}"
    if not report.lines:
        return f"{head}: nothing recorded."
    head_row = ["REQUESTS", "CALLS", "CREDITS", "REFUSED"]
    rows = [[c.upper().replace("_ID", "") for c in columns] + head_row]
    for line in report.lines:
        values = line.as_dict()
        rows.append([str(values[c] or "-") for c in columns] + _numbers(line))
    rows.append(["total", *[""] * (len(columns) - 1), *_numbers(report.total)])
    return f"{head}\n\n{table(rows)}\n\n{sparkline(report.daily_calls)}"


def _numbers(line: UsageLine) -> list[str]:
    refused = sum(n for o, n in line.outcomes.items() if o != "failed_open")
    return [f"{line.requests:,}", f"{line.calls:,}", f"{line.credits:,}", f"{refused:,}"]


def sparkline(daily: list[tuple[str, int]]) -> str:
    """Calls per day, one character each, rows of `SPARK_WIDTH` days led by their first
    day; the highest day is a full bar, a day with no calls a blank."""
    if not daily:
        return ""
    top = max(calls for _, calls in daily)
    lines = [f"calls per day (max {top:,})"]
    for start in range(0, len(daily), SPARK_WIDTH):
        part = daily[start : start + SPARK_WIDTH]
        bars = "".join(_bar(calls, top) for _, calls in part)
        lines.append(f"{part[0][0]}  {bars}")
    return "\n".join(lines)


def _bar(calls: int, top: int) -> str:
    if calls <= 0 or top <= 0:
        return " "
    return BARS[min(len(BARS) - 1, (calls * len(BARS) - 1) // top)]


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `usage` to the command line."""
    summary = "usage by day, action, key or account over any range of days"
    usage: argparse.ArgumentParser = commands.add_parser(
        "usage", parents=[common], help=summary, description=summary
    )
    usage.set_defaults(command=_usage)
    whose = usage.add_mutually_exclusive_group()
    whose.add_argument("--account", type=id_arg, help="one account's usage")
    whose.add_argument("--key", type=id_arg, help="one key's usage")
    usage.add_argument("--from", dest="first", type=day_arg, metavar="YYYY-MM-DD",
                       help="first day, UTC (default: the 1st of this month)")  # fmt: skip
    usage.add_argument("--to", dest="last", type=day_arg, metavar="YYYY-MM-DD",
                       help="last day, inclusive (default: today)")  # fmt: skip
    usage.add_argument("--by", choices=GROUPINGS, default="day", help="group by (default: day)")
    usage.add_argument("--csv", action="store_true", help="print CSV")
