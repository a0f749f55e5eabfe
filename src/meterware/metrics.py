"""Prometheus metrics, cheap on the request path and correct with several workers.

An optional extra: `pip install 'meterware[metrics]'` (prometheus_client). `import
meterware` never needs it; `Metrics()` raises `ConfigurationError` when it is missing.

| metric | type | labels | what |
| --- | --- | --- | --- |
| `meterware_requests_total` | counter | `outcome`, `tier`, `action` | requests by outcome |
| `meterware_credits_total` | counter | `tier`, `action` | credits charged |
| `meterware_ledger_pending` | gauge | | ledger aggregates not yet written (1) |
| `meterware_flush_seconds` | histogram | | ledger flush durations, failures included |
| `meterware_flush_failures_total` | counter | | ledger flushes that failed |
| `meterware_store_errors_total` | counter | `concern` | store failures by concern (2) |
| `meterware_exporter_lag_seconds` | gauge | | billing exporter's lag, once set (3) |

(1) the sum over live workers; (2) `keys`, `counters`, `ledger` or `rate_limit`; (3) the
maximum over live workers, exported only once a billing exporter has set it.

Labels are bounded: `outcome` is one of `OUTCOMES` (another is a `ValueError`, checked
the first time a label set is seen), `tier` a name of the tier table, `action` a route's
`@cost` action; an unknown tier or action ("") is exported as `none`. Never key or account
ids. As a safety net, past `label_cap` distinct label sets per metric a new action is
counted as `other` (logged once).

The request path calls `count` once, and `charge` for a charged call: a tuple and a dict
update, no lock, no file. `publish()` moves what was counted since the last publish into
prometheus_client's metrics. Those dicts are only touched from the event loop's thread
(the middleware and the background task that publishes both run there), and `publish`
swaps each for a new one without awaiting: nothing is lost or counted twice. Run
`publish_every(1.0)` as a task; it publishes once more when cancelled, so a graceful
shutdown loses nothing (a killed worker loses what it counted since its last publish).
`MetricsApp` publishes this process's counts before it serves a scrape; other workers'
counts are as of their last publish (at most a second old).

Several workers use prometheus_client's multiprocess mode: set `PROMETHEUS_MULTIPROC_DIR`
to an empty directory in the server's environment (prometheus_client chooses its mode
when first imported, so the variable must be there before the process starts), and empty
it before each server start (gunicorn's `on_starting` hook can), never while one runs.
Each process writes its values to its own files there; a scrape served by any worker
adds up every file. Counters of workers that exited stay in their files, so totals never
go back; the gauges are kept for live workers only, which needs gunicorn's `child_exit`
hook in the gunicorn config file:

    from prometheus_client import multiprocess

    def child_exit(server, worker):
        multiprocess.mark_process_dead(worker.pid)

(`uvicorn --workers` has no such hook: a dead worker's gauges stay until the restart.)
In that mode the metric objects are shared by the whole process: create one `Metrics`
per process, in the worker (`metrics_from_env()` does). Without the variable, each
`Metrics` has a registry of its own and exports its own process's values.

| variable | what |
| --- | --- |
| `METERWARE_METRICS` | when set (not 0, false, no, off), `metrics_from_env()` gives one |
| `PROMETHEUS_MULTIPROC_DIR` | prometheus_client's multiprocess mode (see above) |
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from typing import TYPE_CHECKING, Any

from meterware import config
from meterware.errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["OUTCOMES", "STORE_CONCERNS", "Metrics", "metrics_from_env"]

log = logging.getLogger("meterware")

OUTCOMES = (
    "admitted",
    "unauthorized",
    "forbidden",
    "rate_limited",
    "quota_exceeded",
    "insufficient_credits",
    "unavailable",
    "failed_open",
)
"""What meterware did with a request: the values of the `outcome` label."""
STORE_CONCERNS = ("keys", "counters", "ledger", "rate_limit")
"""What a store failure was about: the values of the `concern` label."""
NONE = "none"  # the label value of an unknown tier or action
OTHER = "other"  # the action of new label sets past the cap
LABEL_CAP = 10_000
FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_OUTCOMES = frozenset(OUTCOMES)
_FALSE = ("0", "false", "no", "off")

Labels = tuple[str, ...]


class Metrics:
    """meterware's metrics: counted in plain dicts, published to prometheus_client.

    `registry` - where the metrics are registered and what `MetricsApp` serves; in
    multiprocess mode a `MultiProcessCollector` of the directory is added to it. Defaults
    to a new `CollectorRegistry` (not prometheus_client's global one).
    `label_cap` - distinct label sets per metric before new actions count as `other`.
    Defaults to 10,000.
    """

    def __init__(
        self, *, registry: CollectorRegistry | None = None, label_cap: int = LABEL_CAP
    ) -> None:
        try:
            from prometheus_client import CollectorRegistry
        except ImportError as exc:
            raise ConfigurationError(
                "metrics need prometheus_client: pip install 'meterware[metrics]'"
            ) from exc
        self.multiprocess_dir = _multiprocess_dir()
        self.registry = CollectorRegistry() if registry is None else registry
        self.label_cap = label_cap
        if self.multiprocess_dir is None:
            try:
                self._family = _Family(self.registry)
            except ValueError as exc:  # prometheus_client's "Duplicated timeseries"
                raise ConfigurationError(
                    "this registry already holds meterware's metrics: give each Metrics its own"
                ) from exc
        else:
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(self.registry, self.multiprocess_dir)  # type: ignore[no-untyped-call]
            self._family = _process_family()
        self._requests: dict[Labels, int] = {}
        self._credits: dict[Labels, int] = {}
        self._errors: dict[str, int] = {}
        self._known: tuple[dict[Labels, Labels], dict[Labels, Labels]] = ({}, {})
        self._children: tuple[dict[Labels, Counter], dict[Labels, Counter]] = ({}, {})
        self._capped = False
        _instances.add(self)

    def __repr__(self) -> str:
        mode = f"multiprocess_dir={self.multiprocess_dir!r}" if self.multiprocess_dir else ""
        return f"Metrics({mode})"

    # -- the request path (and store errors, one a request in an outage): dicts ---------

    def count(self, outcome: str, tier: str, action: str) -> None:
        """Count one request: `outcome` one of `OUTCOMES`, "" for an unknown tier or action."""
        key: Labels = (outcome, tier, action)
        try:
            self._requests[key] += 1
        except KeyError:
            if key not in self._known[0] and outcome not in _OUTCOMES:
                raise ValueError(f"outcome must be one of {OUTCOMES}, not {outcome!r}") from None
            key = self._admit(key, 0)
            self._requests[key] = self._requests.get(key, 0) + 1

    def charge(self, tier: str, action: str, credits: int) -> None:
        """Count the credits charged to one call (not negative)."""
        if credits < 0:
            raise ValueError(f"credits charged cannot be negative, not {credits}")
        key: Labels = (tier, action)
        try:
            self._credits[key] += credits
        except KeyError:
            key = self._admit(key, 1)
            self._credits[key] = self._credits.get(key, 0) + credits

    def store_error(self, concern: str) -> None:
        """Count one store failure about `concern` (one of `STORE_CONCERNS`)."""
        try:
            self._errors[concern] += 1
        except KeyError:
            if concern not in STORE_CONCERNS:
                raise ValueError(
                    f"concern must be one of {STORE_CONCERNS}, not {concern!r}"
                ) from None
            self._errors[concern] = 1

    def _admit(self, key: Labels, metric: int) -> Labels:
        """`key`, or past the cap its stand-in with action `other`; its label values noted."""
        known = self._known[metric]
        if key in known:
            return key
        if len(known) >= self.label_cap:
            if not self._capped:
                self._capped = True
                log.warning("metrics: label cap reached, new actions are counted as 'other'")
            key = (*key[:-1], OTHER)
            if key in known:
                return key
        known[key] = tuple(value or NONE for value in key)
        return key

    # -- the background: prometheus_client's metrics set directly ------------------------

    def ledger_pending(self, n: int) -> None:
        """Set how many ledger aggregates this process has waiting to be written."""
        self._family.pending.set(n)

    def flush(self, duration_s: float, ok: bool) -> None:
        """Record one ledger flush: how long it took, and whether it failed."""
        self._family.flush_seconds.observe(duration_s)
        if not ok:
            self._family.flush_failures.inc()

    def exporter_lag(self, seconds: float) -> None:
        """Set how far behind this process's billing exporter is, in seconds."""
        self._family.lag().set(seconds)

    def publish(self) -> None:
        """Move what was counted since the last publish into prometheus_client's metrics."""
        requests, self._requests = self._requests, {}
        credits, self._credits = self._credits, {}
        errors, self._errors = self._errors, {}
        family = self._family
        for metric, (counter, counts) in enumerate(
            ((family.requests, requests), (family.credits, credits))
        ):
            known, children = self._known[metric], self._children[metric]
            for key, n in counts.items():
                child = children.get(key)
                if child is None:
                    child = children[key] = counter.labels(*known[key])
                child.inc(n)
        for concern, n in errors.items():
            family.store_errors.labels(concern).inc(n)

    async def publish_every(self, interval: float = 1.0) -> None:
        """Publish every `interval` seconds until cancelled, and once more then."""
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    self.publish()
                except Exception:
                    log.exception("metrics: publish failed")
        finally:
            self.publish()

    def retire(self) -> None:
        """This process is done (an exporter run ending): its live gauges leave the
        multiprocess directory, as gunicorn's `child_exit` does for a worker."""
        self.publish()
        if self.multiprocess_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)  # type: ignore[no-untyped-call]

    def _forget(self) -> None:
        """Drop the counts not yet published (in a forked child: they are the parent's)."""
        self._requests, self._credits, self._errors = {}, {}, {}


_process_metrics: Metrics | None = None


def metrics_from_env() -> Metrics | None:
    """This process's `Metrics` when `METERWARE_METRICS` is set (not 0/false/no/off), else None."""
    global _process_metrics
    flag = config.env("METRICS")
    if flag is None or flag.strip().lower() in _FALSE:
        return None
    if _process_metrics is None:
        _process_metrics = Metrics()
    return _process_metrics


class _Family:
    """prometheus_client's metrics behind `Metrics` (see the module doc for each)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        self.requests = Counter(
            "meterware_requests", "Requests, by what meterware did with them.",
            ("outcome", "tier", "action"), registry=registry,
        )  # fmt: skip
        self.credits = Counter(
            "meterware_credits", "Credits charged.", ("tier", "action"), registry=registry
        )
        self.pending: Gauge = Gauge(
            "meterware_ledger_pending", "Ledger aggregates waiting to be written.",
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.flush_seconds: Histogram = Histogram(
            "meterware_flush_seconds", "Ledger flush durations, failed flushes included.",
            buckets=FLUSH_BUCKETS, registry=registry,
        )  # fmt: skip
        self.flush_failures = Counter(
            "meterware_flush_failures", "Ledger flushes that failed.", registry=registry
        )
        self.store_errors = Counter(
            "meterware_store_errors", "Store failures, by concern.", ("concern",),
            registry=registry,
        )  # fmt: skip
        for concern in STORE_CONCERNS:  # exported at 0 from the start
            self.store_errors.labels(concern)
        self._lag: Gauge | None = None

    def lag(self) -> Gauge:
        """The exporter lag gauge, created on first use (only a billing exporter sets it)."""
        if self._lag is None:
            from prometheus_client import Gauge

            self._lag = Gauge(
                "meterware_exporter_lag_seconds", "How far behind the billing exporter is.",
                registry=self.registry, multiprocess_mode="livemax",
            )  # fmt: skip
        return self._lag


_shared: _Family | None = None  # multiprocess mode: one set of metric objects per process


def _process_family() -> _Family:
    """The process's metrics in multiprocess mode (values live in its files)."""
    global _shared
    if _shared is None:
        _shared = _Family(None)
    return _shared


def _multiprocess_dir() -> str | None:
    """`PROMETHEUS_MULTIPROC_DIR` when prometheus_client is in multiprocess mode, else None."""
    from prometheus_client import values

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    on: Any = getattr(values.ValueClass, "_multiprocess", False)
    if not on:
        if path:
            raise ConfigurationError(
                "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported: "
                "set it in the environment the server starts with"
            )
        return None
    if not path or not os.path.isdir(path):
        raise ConfigurationError(
            f"PROMETHEUS_MULTIPROC_DIR must be an existing directory, not {path!r}"
        )
    return path


_instances: weakref.WeakSet[Metrics] = weakref.WeakSet()


def _after_fork() -> None:
    for metrics in _instances:
        metrics._forget()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork)
