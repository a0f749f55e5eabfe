"""Usage export: the events the outbox hands out, the sinks that deliver them, and the
exporter that moves one to the other.

`UsageEvent` is one immutable delta of the ledger with a deterministic id; a `Sink`
sends a batch of them to a billing system or a file and answers with a `Delivery` (the
ids it holds, the ids it will never take), or raises `SinkUnavailable` when the batch
should be sent again later. `sink_from(name, url=...)` builds one by name. `Exporter`
reads the store's outbox after its cursor, sends, and moves the cursor past what the
sink acknowledged (see `meterware.export.exporter`); `meterware export` runs it.

| name | class | needs |
| --- | --- | --- |
| `stripe` | `StripeSink` | `pip install 'meterware[billing]'`, `STRIPE_API_KEY` |
| `cloudevents` | `CloudEventsSink` | `pip install 'meterware[billing]'`, `OPENMETER_API_KEY` |
| `lago` | `LagoSink` | `pip install 'meterware[billing]'`, `LAGO_API_KEY` |
| `jsonl` | `JsonLinesSink` | nothing |
| `csv` | `CsvSink` | nothing |
"""

from __future__ import annotations

from meterware.export.events import EVENT_FIELDS, UsageEvent
from meterware.export.exporter import Exporter
from meterware.export.files import CsvSink, JsonLinesSink
from meterware.export.http import CloudEventsSink, LagoSink
from meterware.export.registry import sink_from
from meterware.export.results import Progress, Rejection, Summary
from meterware.export.sinks import SINK_NAMES, Delivery, Sink, SinkUnavailable
from meterware.export.stripe import StripeSink

__all__ = [
    "EVENT_FIELDS",
    "SINK_NAMES",
    "CloudEventsSink",
    "CsvSink",
    "Delivery",
    "Exporter",
    "JsonLinesSink",
    "LagoSink",
    "Progress",
    "Rejection",
    "Sink",
    "SinkUnavailable",
    "StripeSink",
    "Summary",
    "UsageEvent",
    "sink_from",
]
