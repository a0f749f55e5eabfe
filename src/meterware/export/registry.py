"""Sinks by name: `sink_from("stripe", ...)`, as the `meterware export` command builds them.

Every sink module imports `meterware.export.sinks` (the contract); this one imports them
all, so none of them needs to import it back.
"""

from __future__ import annotations

import inspect
from typing import Any
from urllib.parse import unquote, urlsplit

from meterware.errors import ConfigurationError
from meterware.export.files import CsvSink, FileSink, JsonLinesSink
from meterware.export.http import CloudEventsSink, LagoSink
from meterware.export.sinks import SINK_NAMES, Sink
from meterware.export.stripe import StripeSink

__all__ = ["sink_from"]


_CLASSES: dict[str, type[Sink]] = {
    "stripe": StripeSink,
    "cloudevents": CloudEventsSink,
    "lago": LagoSink,
    "jsonl": JsonLinesSink,
    "csv": CsvSink,
}


def sink_from(name: str, *, url: str | None = None, **options: Any) -> Sink:
    """The sink called `name` (stripe, cloudevents, lago, jsonl, csv): `url` is the
    service's URL, or for a file sink a path or `file://` URL; `options` its other
    constructor arguments."""
    cls = _CLASSES.get(name)
    if cls is None:
        raise ConfigurationError(f"unknown sink {name!r} (known: {', '.join(SINK_NAMES)})")
    if issubclass(cls, FileSink):
        if not url:
            raise ConfigurationError(f"the {name} sink needs a path (or a file:// URL)")
        options["path"] = _file_path(url)
    elif url is not None:
        options["url"] = url
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        raise ConfigurationError(f"the {name} sink: {exc}") from None
    return cls(**options)


def _file_path(url: str) -> str:
    if not url.startswith("file:"):
        return url
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ConfigurationError(f"a file:// URL names a local path, not host {parts.netloc!r}")
    return unquote(parts.path)
