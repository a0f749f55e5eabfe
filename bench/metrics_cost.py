"""What metrics cost: `Metrics.count` + `Metrics.charge` per request, and `publish()`.

```
python bench/metrics_cost.py                 # ~20 s
python bench/metrics_cost.py --calls 200000  # quicker
```

The request path: 1,000,000 requests over 20 label sets (8 outcomes, 3 tiers, 5 actions),
each `count(...)` then `charge(...)` (every request charged: the upper bound), against
the same loop calling empty methods in their place; the difference is the cost per
request. Also with `publish()` every 10,000 requests (a one-second interval at 10,000
requests a second per worker), which adds the first sight of each label set after a
publish. Best and median of `--rounds` rounds, in ns per request.

`publish()` with 1,000 distinct label sets counted since the last: the first publish
(prometheus_client's children are created) and later ones, in µs, in a process-local
registry and in prometheus_client's multiprocess mode (a child process started with
`PROMETHEUS_MULTIPROC_DIR` set, values written to mmap files).
"""

from __future__ import annotations

import os
import sys

# `python bench/metrics_cost.py` puts bench/ first on sys.path, where bench/http.py would
# shadow the standard library's `http`: put the repository root there instead.
_BENCH = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _BENCH:
    sys.path[0] = os.path.dirname(_BENCH)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from meterware.metrics import OUTCOMES, Metrics  # noqa: E402

TIERS = ("free", "pro", "enterprise")
ACTIONS = ("search", "export", "summarize", "image", "")


class Empty:
    """The baseline: the same calls, to methods that do nothing."""

    def count(self, outcome: str, tier: str, action: str) -> None:
        pass

    def charge(self, tier: str, action: str, credits: int) -> None:
        pass

    def publish(self) -> None:
        pass


def calls(n: int) -> list[tuple[str, str, str, int]]:
    """`n` requests cycling over 20 label sets, each charged 1-5 credits."""
    sets = [
        (OUTCOMES[i % len(OUTCOMES)], TIERS[i % len(TIERS)], ACTIONS[i % len(ACTIONS)])
        for i in range(20)
    ]
    return [(*sets[i % 20], i % 5 + 1) for i in range(n)]


def run(target: Any, requests: list[tuple[str, str, str, int]], publish_every: int = 0) -> int:
    """ns for the whole loop (the request path as the middleware would call it)."""
    count, charge = target.count, target.charge
    publish = target.publish if publish_every else None
    started = time.perf_counter_ns()
    if publish is None:
        for outcome, tier, action, credits in requests:
            count(outcome, tier, action)
            if credits:
                charge(tier, action, credits)
    else:
        for i, (outcome, tier, action, credits) in enumerate(requests):
            count(outcome, tier, action)
            if credits:
                charge(tier, action, credits)
            if i % publish_every == 0:
                publish()
    return time.perf_counter_ns() - started


def request_path(n: int, rounds: int) -> dict[str, list[float]]:
    """ns per request, per round, of each loop and of what metrics add to it."""
    requests = calls(n)
    out: dict[str, list[float]] = {
        "empty methods (baseline)": [],
        "count + charge": [],
        "  added per request": [],
        "same, publish every 10,000": [],
        "  added per request, publish included": [],
    }
    empty, metrics = Empty(), Metrics()
    for _ in range(rounds):
        base = run(empty, requests) / n
        plain = run(metrics, requests) / n
        metrics.publish()
        base_publishing = run(empty, requests, 10_000) / n
        publishing = run(metrics, requests, 10_000) / n
        metrics.publish()
        for name, value in zip(
            out, (base, plain, plain - base, publishing, publishing - base_publishing), strict=True
        ):
            out[name].append(value)
    return out


def publish_cost(repeats: int = 50, distinct: int = 1000) -> dict[str, float]:
    """µs per publish of `distinct` label sets: the first, and the median of the rest."""
    metrics = Metrics(label_cap=10 * distinct)
    sets = [
        (OUTCOMES[i % len(OUTCOMES)], TIERS[i % len(TIERS)], f"action{i}") for i in range(distinct)
    ]
    times = []
    for _ in range(repeats + 1):
        for outcome, tier, action in sets:
            metrics.count(outcome, tier, action)
            metrics.charge(tier, action, 2)
        started = time.perf_counter_ns()
        metrics.publish()
        times.append((time.perf_counter_ns() - started) / 1000)
    return {"first": times[0], "later": statistics.median(times[1:])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--publish-only", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.publish_only:  # the multiprocess child
        print(json.dumps(publish_cost()))
        return
    path = request_path(a.calls, a.rounds)
    local = publish_cost()
    with tempfile.TemporaryDirectory(prefix="mw-prom-") as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        child = subprocess.run(
            [sys.executable, __file__, "--publish-only"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        shared = json.loads(child.stdout)
    print(f"request path, {a.calls:,} requests x {a.rounds} rounds, 20 label sets:")
    print(f"  {'ns per request':<40}{'best':>8}{'median':>8}")
    for name, values in path.items():
        print(f"  {name:<40}{min(values):>8.1f}{statistics.median(values):>8.1f}")
    print("publish(), 1,000 label sets (requests and credits), µs:")
    print(f"  {'registry':<40}{'first':>8}{'later':>8}")
    print(f"  {'process-local':<40}{local['first']:>8.0f}{local['later']:>8.0f}")
    print(f"  {'multiprocess (mmap files)':<40}{shared['first']:>8.0f}{shared['later']:>8.0f}")
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
