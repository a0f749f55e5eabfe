"""Where the time goes on meterware's hot path: `python bench/profile.py`.

Runs one in-process variant (default: the full pipeline on SQLite, 100 keys) under
pyinstrument for ~2 s of requests, after the same warm-up as bench/inproc.py, and prints:

1. the top of the call tree (meterware's own frames expanded, libraries grouped);
2. the functions with the most self time (everything, libraries included);
3. meterware's functions by total time (time with the function on the stack);
4. micro-timings of each step of the request path, called directly (ns per call).

The whole tree goes to bench/profile.txt (not committed). pyinstrument samples the main
thread only: time spent in aiosqlite's thread shows up as the event loop waiting
(`select`), which is where the loop sits when a request awaits the store.

    python bench/profile.py [--variant sqlite|memory|memory-cost|pg] [--keys 100]
                            [--seconds 2] [--out bench/profile.txt]
"""

from __future__ import annotations

import os
import sys

# `python bench/profile.py` puts bench/ first on sys.path, where this file would shadow
# the standard library's `profile` and bench/http.py its `http`: use the root instead.
_BENCH = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or ".") == _BENCH:
    sys.path[0] = os.path.dirname(_BENCH)
elif os.path.dirname(_BENCH) not in sys.path:
    sys.path.insert(0, os.path.dirname(_BENCH))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402


def _pyinstrument() -> Any:
    try:
        import pyinstrument
    except ImportError:
        sys.exit("pyinstrument is missing: pip install pyinstrument")
    return pyinstrument


async def build(variant: str, keys: int, stores: Any) -> tuple[Any, list[str]]:
    from bench import apps

    if variant == "sqlite":
        url, secrets = await stores.sqlite(keys)
        return apps.meterware_app(url), secrets
    if variant in ("memory", "memory-cost"):
        store, secrets = await stores.memory(keys)
        return apps.meterware_app(store, metered_route=variant == "memory-cost"), secrets
    if variant == "pg":
        url, secrets = await stores.postgres(keys)
        return apps.meterware_app(url, rate_limit_storage=stores.redis_url), secrets
    if variant == "pg-alone":
        url, secrets = await stores.postgres(keys)
        return apps.meterware_app(url), secrets
    raise SystemExit(f"unknown variant {variant!r}")


async def profile(a: argparse.Namespace) -> tuple[Any, dict[str, float], Any, list[str]]:
    from bench import apps
    from bench.fixtures import Stores
    from bench.inproc import Driver, Lifespan

    pyinstrument = _pyinstrument()
    stores = Stores()
    try:
        app, secrets = await build(a.variant, a.keys, stores)
        async with Lifespan(app):
            driver = Driver(app, apps.PATH, secrets)
            await driver.touch_all()
            await driver.run(2000)
            profiler = pyinstrument.Profiler(interval=a.interval, async_mode="disabled")
            count, started = 0, time.perf_counter()
            profiler.start()
            while time.perf_counter() - started < a.seconds:
                await driver.run(1000)
                count += 1000
            profiler.stop()
            elapsed = time.perf_counter() - started
            stats = {"requests": count, "us_per_request": elapsed / count * 1e6}
            mw = apps.runtime_of(app)
            parts = await micro(mw, secrets[0])
    finally:
        await stores.close()
    return profiler, stats, mw, parts


# -- micro-timings ---------------------------------------------------------------------


def _sync(coro: Any) -> Any:
    """Run a coroutine that does not suspend, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the coroutine suspended")


async def micro(mw: Any, secret: str) -> list[str]:
    """ns per call of each step of the request path, on the warm middleware."""
    from bench import apps
    from bench.inproc import scope_for

    scope = scope_for(apps.PATH, secret)
    headers = scope["headers"]
    now = time.time()
    out: list[str] = []

    def t(name: str, make: Callable[[], Callable[[], Any]], number: int = 20000) -> None:
        try:
            fn = make()
            fn()
            ns = min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9
            out.append(f"{ns:9.0f} ns  {name}")
        except Exception as exc:  # the internals changed: say so, do not fail
            out.append(f"{'n/a':>9}     {name} ({type(exc).__name__}: {exc})")

    from meterware.metering import Cost

    rt = mw  # the app's Runtime
    caller = _sync(rt.keys.resolve(secret, now))
    plan = rt.plan(caller)
    route = rt.costs.lookup(scope)
    needs = rt.admission._needs(plan, route.cost.credits, now)
    _, leases, first, _ = needs[0]

    t("KeyExtractor: the secret from the headers", lambda: lambda: rt.extract(headers))
    t(
        "KeyCache.resolve: a cached key (salted SHA-256 + dict)",
        lambda: lambda: _sync(rt.keys.resolve(secret, now)),
    )
    t(
        "SecretHasher.hash (HMAC-SHA-256, only on a cache miss)",
        lambda: lambda: rt.hasher.hash(secret),
    )
    t("Runtime.plan (one dict lookup)", lambda: lambda: rt.plan(caller))
    t("RouteCosts.lookup (cached per path)", lambda: lambda: rt.costs.lookup(scope))
    t("Admission._needs: the units a request needs (cached per plan)", lambda: lambda: (
        rt.admission._needs(plan, route.cost.credits, now)))  # fmt: skip

    def take() -> Callable[[], Any]:
        def go() -> None:
            if not leases.hand_out(first, now):
                raise RuntimeError("no units at hand")
            leases.give_back(first.counter, first.amount, now)

        return go

    t("Leases.hand_out + give_back (units at hand)", take)
    t("Admission.headers: the rate-limit headers", lambda: lambda: rt.admission.headers(plan, now))

    def admit() -> Callable[[], Any]:
        def go() -> None:
            hold = _sync(rt.admission.admit(plan, route.cost, now))
            hold.settle(200, route.cost.credits)

        return go

    t("Admission.admit + Hold.settle (every step above, and the ledger)", admit, number=5000)
    zero = Cost(0, "bench", "Bench call")
    t("Meter.admitted", lambda: lambda: rt.meter.admitted(caller.account_id, caller.key_id,
                                                           zero, now))  # fmt: skip

    def merge() -> Callable[[], Any]:
        from meterware.responses import merge_headers

        extra = rt.admission.headers(plan, now)
        app_headers = [(b"content-length", b"5"), (b"content-type", b"text/plain; charset=utf-8")]
        return lambda: merge_headers(app_headers, extra)

    t("merge_headers into the response's", merge)

    def call() -> Callable[[], Any]:
        from meterware.runtime import Call

        return lambda: Call(caller, rt)

    t("Call(caller, runtime) per request", call)
    if route.cost.credits:
        t(
            "Meter.charge",
            lambda: (
                lambda: rt.meter.charge(
                    caller.account_id, caller.key_id, route.cost, route.cost.credits, now
                )
            ),
        )
    await mw.meter.flush()
    return out


# -- output ----------------------------------------------------------------------------


def meterware_totals(root: Any, top: int = 25) -> list[str]:
    """meterware functions by total time on the stack (counted once per stack)."""
    import meterware

    package = os.path.dirname(os.path.abspath(meterware.__file__ or ""))
    totals: dict[tuple[str, str], float] = {}

    def walk(frame: Any, on_stack: frozenset[tuple[str, str]]) -> None:
        path = frame.file_path or ""
        mine = bool(path) and path.startswith(package)
        key = (frame.function, f"{os.path.relpath(path, package)}:{frame.line_no}" if mine else "")
        if mine and key not in on_stack:
            totals[key] = totals.get(key, 0.0) + frame.time
            on_stack = on_stack | {key}
        for child in frame.children:
            walk(child, on_stack)

    walk(root, frozenset())
    whole = root.time or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [f"{t / whole * 100:5.1f}%  {fn}  ({where})" for (fn, where), t in ranked]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Profile one in-process variant.")
    p.add_argument("--variant", default="sqlite", help="sqlite | memory | memory-cost | pg")
    p.add_argument("--keys", type=int, default=100)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--interval", type=float, default=0.0001, help="sampling interval (s)")
    p.add_argument("--out", default=os.path.join(_BENCH, "profile.txt"))
    p.add_argument("--lines", type=int, default=70, help="lines of the tree to print")
    a = p.parse_args(argv)
    profiler, stats, _, parts = asyncio.run(profile(a))
    tree = profiler.output_text(unicode=True, color=False, show_all=False)
    flat = profiler.output_text(unicode=True, color=False, show_all=True, flat=True)
    root = profiler.last_session.root_frame()
    totals = meterware_totals(root)
    head = (
        f"variant {a.variant}, {a.keys} keys: {stats['requests']:,} requests, "
        f"{stats['us_per_request']:.1f} µs/request under the profiler"
    )
    with open(a.out, "w") as f:
        f.write(head + "\n\n== call tree ==\n" + tree + "\n== self time ==\n" + flat)
        f.write("\n== meterware functions, total time ==\n" + "\n".join(totals) + "\n")
        f.write("\n== micro-timings ==\n" + "\n".join(parts) + "\n")
    print(head)
    print("\n== call tree (top) ==")
    print("\n".join(tree.splitlines()[: a.lines]))
    print("\n== self time, top 30 (libraries included) ==")
    print("\n".join(flat.splitlines()[:36]))
    print("\n== meterware functions by total time (% of all samples) ==")
    print("\n".join(totals))
    print("\n== micro-timings of the request path's steps (best of 5) ==")
    print("\n".join(parts))
    print(f"\n(the whole profile: {os.path.relpath(a.out)})")


if __name__ == "__main__":
    main()
