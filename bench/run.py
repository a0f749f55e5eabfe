"""meterware's benchmark suite, one command: `python bench/run.py [--quick]`.

Runs the parts (in process, memory, round trips, usage report, ledger flush, over HTTP
with 1 and 2 workers, uvicorn's and gunicorn's 2 workers), prints progress on stderr and
one table on stdout, with PASS/MISS against the targets; `--json FILE` saves every
number. See bench/README.md for what each number means.
"""

from __future__ import annotations

import os
import sys

# `python bench/run.py` puts bench/ first on sys.path, where bench/http.py would shadow
# the standard library's `http`: put the repository root there instead.
_BENCH = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _BENCH:
    sys.path[0] = os.path.dirname(_BENCH)
elif os.path.dirname(_BENCH) not in sys.path:
    sys.path.insert(0, os.path.dirname(_BENCH))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import asdict  # noqa: E402
from typing import Any  # noqa: E402

PARTS = ("inproc", "memory", "metrics", "trips", "report", "flush", "http", "http2", "workers")
INCLUDES = {"inproc": ("memory", "metrics"), "http": ("http2", "workers")}  # brought along


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="meterware benchmarks; one table at the end.")
    p.add_argument("--quick", action="store_true", help="a ~1 min smoke run (CI): 100 keys only")
    p.add_argument("--keys", help="key counts for the in-process part (default 100,10000)")
    p.add_argument("--rounds", type=int, help="in-process rounds (default 5; quick 2)")
    p.add_argument("--batch", type=int, help="timed requests per variant and round (20000)")
    p.add_argument(
        "--max-seconds", type=float, help="cap on one timed batch, in seconds (4; quick 1)"
    )
    p.add_argument(
        "--only",
        help=f"comma-separated parts of {','.join(PARTS)} (inproc includes memory; http "
        "includes http2 and workers)",
    )
    p.add_argument("--variants", help="in-process variants to run (bare is always kept)")
    p.add_argument("--memory-keys", type=int, help="distinct keys for memory (100000)")
    p.add_argument("--http-seconds", type=float, help="seconds per HTTP run (10; quick 1)")
    p.add_argument("--http-rounds", type=int, help="HTTP rounds (2; quick 1)")
    p.add_argument("--http-keys", type=int, default=1000, help="API keys wrk rotates (1000)")
    p.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL and Redis")
    p.add_argument("--json", metavar="FILE", help="also save every number as JSON")
    a = p.parse_args(argv)
    q = a.quick
    a.keys = [int(k) for k in (a.keys or ("100" if q else "100,10000")).split(",")]
    a.rounds = a.rounds or (2 if q else 5)
    a.batch = a.batch or (2000 if q else 20000)
    a.warmup = min(a.batch, 500 if q else 2000)
    a.max_seconds = a.max_seconds or (0.5 if q else 4.0)
    a.memory_keys = a.memory_keys or (5_000 if q else 100_000)
    a.http_seconds = a.http_seconds or (1.0 if q else 10.0)
    a.http_warm = 1.0 if q else 2.0
    a.http_rounds = a.http_rounds or (1 if q else 2)
    a.report_calls = 50 if q else 200
    a.flush_batches = 10 if q else 50
    a.parts = set(PARTS) if not a.only else set(a.only.split(","))
    for part, brought in INCLUDES.items():
        if part in a.parts:
            a.parts.update(brought)
    unknown = a.parts - set(PARTS)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    a.variants = None if not a.variants else {"bare", *a.variants.split(",")}
    return a


async def main(a: argparse.Namespace) -> dict[str, Any]:
    from bench import flush, http, inproc, report, trips
    from bench.fixtures import Stores, say

    results: dict[str, Any] = {
        "config": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(a).items()},
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_start": os.getloadavg(),
        },
        "source": source(),
    }
    stores = Stores(postgres=not a.no_postgres)
    started = time.perf_counter()
    try:
        if "inproc" in a.parts:
            measured = await inproc.run(
                stores, keys=a.keys, rounds=a.rounds, batch=a.batch, warmup=a.warmup,
                max_seconds=a.max_seconds, only=a.variants,
            )  # fmt: skip
            results["inproc"] = [asdict(m) for m in measured]
        if "trips" in a.parts:
            results["trips"] = await trips.run(stores)
        if "report" in a.parts:
            results["report"] = await report.run(stores, calls=a.report_calls)
            say(f"report: {results['report']}")
        if "flush" in a.parts:
            results["flush"] = await flush.run(stores, batches=a.flush_batches)
        if "metrics" in a.parts:
            from bench import metrics_cost

            path = metrics_cost.request_path(200_000 if a.quick else 1_000_000, a.rounds)
            results["metrics"] = {
                "added_ns": path["  added per request"],
                "added_ns_publishing": path["  added per request, publish included"],
            }
            say(f"metrics: {results['metrics']}")
        if "memory" in a.parts:
            results["memory"] = await inproc.measure_memory(a.memory_keys)
            say(f"memory: {results['memory']}")
        for part, servers, rounds, baseline in (
            ("http", http.ONE_WORKER, a.http_rounds, "bare"),
            ("http2", http.TWO_WORKERS, a.http_rounds, "bare"),
            ("workers", http.WORKER_MODES, 1, "gunicorn"),  # once
        ):
            if part not in a.parts:
                continue
            runs, setup = await http.run(
                stores, servers, keys=a.http_keys, rounds=rounds, seconds=a.http_seconds,
                warm_seconds=a.http_warm,
            )  # fmt: skip
            results[part] = {
                "setup": {**setup, "baseline": baseline},
                "runs": [asdict(r) for r in runs],
                "ratios": http.ratios(runs, baseline),
            }
    finally:
        await stores.close()
    results["seconds"] = time.perf_counter() - started
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["targets"] = targets(results)
    return results


def source() -> dict[str, Any]:
    """Which meterware was measured: its path, and the git commit with a dirty flag."""
    import subprocess

    import meterware

    path = os.path.dirname(os.path.abspath(meterware.__file__ or ""))
    out: dict[str, Any] = {"meterware": path}
    if not path.startswith(os.path.join(os.path.dirname(_BENCH), "src")):
        out["commit"] = None  # not this checkout's src/: say where it came from instead
        return out
    try:
        git = ["git", "-C", os.path.dirname(_BENCH)]
        out["commit"] = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True
        ).stdout
        out["dirty"] = bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        out["commit"] = None
    return out


# -- the targets -----------------------------------------------------------------------


def _inproc(results: dict[str, Any], keys: int, variant: str) -> dict[str, Any] | None:
    for m in results.get("inproc", ()):
        if m["keys"] == keys and m["variant"] == variant and m["us"] and m["added"]:
            return dict(m)
    return None


def _ratio_of_added(results: dict[str, Any], keys: int, a: str, b: str) -> float | None:
    ma, mb = _inproc(results, keys, a), _inproc(results, keys, b)
    if ma is None or mb is None:
        return None
    return statistics.median(
        float(x) / float(y) for x, y in zip(ma["added"], mb["added"], strict=False)
    )


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what, the measured value, the limit, and PASS/MISS (n/a if not run)."""
    from bench.trips import BACKENDS

    out: list[dict[str, Any]] = []
    tests = {"<=": float.__le__, "<": float.__lt__, ">=": float.__ge__}

    def check(what: str, value: float | None, op: str, limit: float, unit: str) -> None:
        ok = None if value is None else tests[op](float(value), float(limit))
        out.append(
            {"target": what, "value": value, "op": op, "limit": limit, "unit": unit,
             "result": "n/a" if ok is None else ("PASS" if ok else "MISS")}
        )  # fmt: skip

    check(
        "in process, 100 keys: meterware SQLite adds ≤ 1/3 of what slowapi adds",
        _ratio_of_added(results, 100, "mw-sqlite", "slowapi"), "<=", 1 / 3, "×",
    )  # fmt: skip
    for variant, label in (("mw-pg", "PostgreSQL alone"), ("mw-pg-redis", "PostgreSQL + Redis")):
        check(
            f"in process, 100 keys: {label} adds ≤ 2× what SQLite adds",
            _ratio_of_added(results, 100, variant, "mw-sqlite"), "<=", 2, "×",
        )  # fmt: skip
    check(
        "in process, 10,000 keys: meterware SQLite adds ≤ 1/2 of what slowapi adds",
        _ratio_of_added(results, 10_000, "mw-sqlite", "slowapi"), "<=", 1 / 2, "×",
    )  # fmt: skip

    def http_ratio(part: str, variant: str, measure: str) -> float | None:
        ratio = results.get(part, {}).get("ratios", {}).get(variant)
        return None if ratio is None else float(ratio[measure])

    one = (
        ("mw-sqlite", "SQLite", 0.85),
        ("mw-pg", "PostgreSQL alone", 0.8),
        ("mw-pg-redis", "PostgreSQL + Redis", 0.8),
    )
    for variant, label, limit in one:
        check(
            f"HTTP, 1 worker: meterware {label} ≥ {limit:g}× bare's requests/s",
            http_ratio("http", variant, "rps"), ">=", limit, "×",
        )  # fmt: skip
    for variant, label, _ in one:
        check(
            f"HTTP, 1 worker: meterware {label} p99 ≤ 1.5× bare's p99",
            http_ratio("http", variant, "p99"), "<=", 1.5, "×",
        )  # fmt: skip
    for variant, label in (("mw-sqlite", "SQLite"), ("mw-pg", "PostgreSQL alone")):
        check(
            f"HTTP, 2 workers (gunicorn): meterware {label} ≥ 0.8× bare's requests/s",
            http_ratio("http2", variant, "rps"), ">=", 0.8, "×",
        )  # fmt: skip
    for backend in BACKENDS:
        trip = results.get("trips", {}).get(backend.name, {})
        check(
            f"store round trips ≤ 5 per 100 admitted requests, {backend.label}",
            trip.get("per_100"), "<=", 5, "per 100",
        )  # fmt: skip
    rep = results.get("report")
    for stat in ("median", "p99"):
        check(
            f"usage report (1M calls, 90 days) {stat} ≤ 20 ms",
            None if rep is None else rep[f"{stat}_ms"], "<=", 20, "ms",
        )  # fmt: skip
    added = results.get("metrics", {}).get("added_ns_publishing")
    check(
        "metrics on: the request path's count + charge ≤ 1 µs per request",
        None if not added else statistics.median(added) / 1000, "<=", 1, "µs",
    )  # fmt: skip
    fl = results.get("flush", {}).get("sqlite")
    check(
        "ledger flush (SQLite) ≤ 6 µs/event",
        None if fl is None else fl["flush_us_per_event"], "<=", 6, "µs",
    )  # fmt: skip
    return out


# -- the table -------------------------------------------------------------------------


def _spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return ""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(min(values))}–{fmt.format(max(values))}"


def _limit(limit: float, unit: str) -> str:
    """A target's limit as written: 1/3 rather than 0.333, then its unit."""
    if 0 < limit < 1 and abs(1 / limit - round(1 / limit)) < 1e-9:
        return f"1/{round(1 / limit)}"
    return f"{limit:g} {unit}"


def _http_rows(part: str, title: str, h: dict[str, Any]) -> list[tuple[str, ...] | str]:
    s = h["setup"]
    rounds = max((len(r["rounds"]) for r in h["runs"]), default=0)
    rows: list[tuple[str, ...] | str] = [
        f"{title}: {s['server']}, load from {s['tool']}, {s['threads']} threads, "
        f"{s['connections']} connections, {s['seconds']:g} s per run, {rounds} round(s), "
        f"{s['keys']:,} keys; medians of rounds"
    ]
    baseline = "gunicorn's" if s["baseline"] == "gunicorn" else "bare's"
    for r in h["runs"]:
        if r["skip"]:
            rows.append((part, f"{s['keys']:,}", r["label"], "skipped", r["skip"], ""))
            continue
        rps = statistics.median(x["rps"] for x in r["rounds"])
        p50 = statistics.median(x["p50_us"] for x in r["rounds"]) / 1000
        p99 = statistics.median(x["p99_us"] for x in r["rounds"]) / 1000
        cpu = statistics.median(x["server_cpu_us"] for x in r["rounds"])
        ratio = h["ratios"].get(r["name"])
        tries = max(x.get("tries", 1) for x in r["rounds"])
        idle = sum(x.get("busy_processes", 1) < r["workers"] for x in r["rounds"])
        spread = f", {tries} runs to get every worker busy" if tries > 1 else ""
        spread += f", a worker idle in {idle} round(s)" if idle else ""
        vs = "—" if r["name"] == s["baseline"] or ratio is None else (
            f"{ratio['rps']:.2f}× {baseline} req/s, p99 {ratio['p99']:.2f}×"
        )  # fmt: skip
        rows.append(
            (part, f"{s['keys']:,}", r["label"], f"{rps:,.0f} req/s",
             f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, server CPU {cpu:.0f} µs/req{spread}", vs)
        )  # fmt: skip
    return rows


def table(results: dict[str, Any]) -> str:
    from bench.trips import REQUESTS, STEP

    head = ("part", "keys", "measure", "value", "min–max / detail", "vs bare / result")
    rows: list[tuple[str, ...] | str] = []
    c = results["config"]
    if "inproc" in results:
        rows.append(
            f"in process: wall-clock µs per request over {c['batch']:,}-request batches, "
            f"median of {c['rounds']} interleaved rounds [min–max]; added = variant − bare "
            "of the same round"
        )
        for m in results["inproc"]:
            if m["skip"]:
                rows.append(("inproc", f"{m['keys']:,}", m["label"], "skipped", m["skip"], ""))
                continue
            us = statistics.median(m["us"])
            if m["variant"] == "bare":
                vs = "—"
                added = ""
            else:
                bare = _inproc(results, m["keys"], "bare")
                ratio = statistics.median(bare["us"]) / us if bare else float("nan")
                added = f"+{statistics.median(m['added']):.1f} µs [{_spread(m['added'])}]"
                vs = f"{ratio:.2f}× throughput"
            fewer = min(m["requests"]) < c["batch"]
            count = f" (n={min(m['requests']):,})" if fewer else ""
            rows.append(
                ("inproc", f"{m['keys']:,}", m["label"], f"{us:.1f} µs/req",
                 f"[{_spread(m['us'])}] {added}{count}".strip(), vs)
            )  # fmt: skip
    if "memory" in results:
        mem = results["memory"]
        rows.append(
            "memory: after one metered request from each of N distinct keys (memory:// store), "
            "ledger flushed; tracemalloc split by the innermost meterware frame"
        )
        minutes = mem.get("minute_leases")
        held = f"{mem['leases']:,} leases" + ("" if minutes is None else f" + {minutes:,}")
        rows.append(
            ("memory", f"{mem['keys']:,}", "middleware: key cache + leases + month views",
             f"{mem['middleware_per_key']:.0f} B/key",
             f"{mem['cached_keys']:,} cached keys, {held}, {mem['month_views']:,} views", "")
        )  # fmt: skip
        rows.append(
            ("memory", f"{mem['keys']:,}", "memory:// store's own growth (counters, totals)",
             f"{mem['store_per_key']:.0f} B/key", "", "")
        )  # fmt: skip
        rows.append(
            ("memory", f"{mem['keys']:,}", "process RSS growth (all of it, no tracemalloc)",
             f"{mem['rss_per_key']:.0f} B/key", "", "")
        )  # fmt: skip
    if "metrics" in results:
        mt = results["metrics"]
        rows.append(
            ("metrics", "20 label sets", "count + charge per request (every request charged)",
             f"{statistics.median(mt['added_ns']):.0f} ns/req",
             f"[{_spread(mt['added_ns'], '{:.0f}')}]; with publish every 10,000: "
             f"{statistics.median(mt['added_ns_publishing']):.0f} ns", "")
        )  # fmt: skip
    if "trips" in results:
        rows.append(
            f"round trips: one key (1,000/minute, 1,000,000/month), one request at a time, "
            f"fake clock +{STEP} s per request (800/minute), {REQUESTS:,} requests; reserve and "
            "release calls on the counter stores"
        )
        for trip in results["trips"].values():
            if "skip" in trip:
                rows.append(("trips", "1", trip["label"], "skipped", trip["skip"], ""))
                continue
            detail = f"{trip['main_reserves']} reserve + {trip['main_releases']} release"
            if trip["window_reserves"] is not None:
                detail = (
                    f"main store {detail}; windows {trip['window_reserves']} reserve + "
                    f"{trip['window_releases']} release"
                )
            rows.append(
                ("trips", "1", trip["label"], f"{trip['per_100']:.2f} per 100 req",
                 f"{trip['round_trips']} for {trip['admitted']:,} requests: {detail}", "")
            )  # fmt: skip
    if "report" in results:
        rep = results["report"]
        rows.append(
            "usage report: GET /usage?days=90 (credits) through the app, SQLite, a key with "
            f"1,000,000 calls in 273 rollups + 100 noisy keys; {rep['calls']} calls"
        )
        rows.append(
            ("report", "101", "credits report, 90 days", f"{rep['median_ms']:.2f} ms median",
             f"p99 {rep['p99_ms']:.2f} ms, max {rep['max_ms']:.2f} ms", "")
        )  # fmt: skip
    if "flush" in results:
        rows.append(
            "ledger: Meter.flush() of 1,000 events (500 requests × admitted + charge) over "
            "100 keys × 3 actions = 300 rollups; median of batches"
        )
        for backend, fl in results["flush"].items():
            if "skip" in fl:
                rows.append(("flush", "100", f"Meter.flush() {backend}", "skipped", fl["skip"], ""))
                continue
            rows.append(
                ("flush", "100", f"Meter.flush() {backend}",
                 f"{fl['flush_us_per_event']:.2f} µs/event",
                 f"recording {fl['record_us_per_event']:.2f} µs/event in memory; "
                 f"store.record {fl['store_record_us_per_rollup']:.2f} µs/rollup row", "")
            )  # fmt: skip
    titles = {
        "http": "over HTTP, 1 worker",
        "http2": "over HTTP, 2 workers",
        "workers": "bare Starlette with 2 workers, each way once; ratios to gunicorn's",
    }
    for part, title in titles.items():
        if part in results:
            rows += _http_rows(part, title, results[part])
    rows.append("targets")
    for t in results["targets"]:
        v = t["value"]
        value = "n/a" if v is None else f"{v:.{1 if t['unit'] == 'µs' else 2}f} {t['unit']}"
        shown = _limit(t["limit"], t["unit"])
        limit = f"{t['op'].replace('<=', '≤').replace('>=', '≥')} {shown}"
        rows.append(("target", "", t["target"], value, limit, t["result"]))
    widths = [len(h) for h in head]
    for row in rows:
        if isinstance(row, tuple):
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    total = sum(widths) + 2 * (len(widths) - 1)
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    out = [line.rstrip(), "=" * total]
    for row in rows:
        if isinstance(row, str):
            out.append(f"-- {row} ".ljust(total, "-")[: max(total, len(row) + 4)])
        else:
            out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    out.append("=" * total)
    m, src = results["machine"], results["source"]
    commit = src.get("commit") or f"from {src['meterware']}"
    out.append(
        f"meterware {commit}{' + uncommitted changes in src/' if src.get('dirty') else ''}, "
        f"python {m['python']}, {m['cpus']} CPUs, load average {m['loadavg_start'][0]:.2f} at "
        f"start, {m['loadavg_end'][0]:.2f} at end, {results['seconds']:.0f} s in all"
    )
    return "\n".join(out)


def cli(argv: Sequence[str] | None = None) -> int:
    a = parse(argv)
    results = asyncio.run(main(a))
    print(table(results), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
