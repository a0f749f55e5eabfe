"""The file sinks: JSON Lines and CSV on a local disk, written once per event id (see
`meterware.export.sinks` for what every sink promises)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import csv
import dataclasses
import io
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from meterware.errors import ConfigurationError
from meterware.export.events import EVENT_FIELDS, UsageEvent
from meterware.export.sinks import Delivery, Sink, SinkUnavailable

__all__ = ["CsvSink", "FileSink", "JsonLinesSink"]


class FileSink(Sink):
    """Appends records to a file, each batch flushed and fsynced before it is accepted.

    Idempotent by id: the sink knows the ids in the file (it reads the file once, then
    only what was appended since, by itself or another process) and writes only new
    ones. The cost is one read of the whole file when the sink first writes, and a set of
    its ids in memory (about 100 bytes an event). Writers are serialized by an exclusive
    `flock` on the file (POSIX). A record a crashed writer left half written was never
    acknowledged: it is cut off before the next write. Without the ids this would be
    at-least-once (a crash between the write and the exporter's acknowledgement writes
    the batch again); with them, a resent event is not written twice.
    """

    max_batch = 1000

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._ids: set[str] = set()
        self._read_to = 0  # bytes of the file whose ids are in _ids
        self._inode = -1
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    async def aclose(self) -> None:
        """Nothing to release: each batch opens and closes the file."""

    async def send(self, events: Sequence[UsageEvent]) -> Delivery:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._append, list(events))
            except OSError as exc:
                raise SinkUnavailable(f"{self.name}: {self.path}: {exc.strerror or exc}") from exc

    def _append(self, events: list[UsageEvent]) -> Delivery:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as file, _locked(file):
            self._catch_up(file)
            fresh: dict[str, UsageEvent] = {}
            for event in events:
                if event.id not in self._ids:
                    fresh.setdefault(event.id, event)
            if fresh:
                new_file = self._read_to == 0
                file.write(self._encode(list(fresh.values()), new_file))
                file.flush()
                os.fsync(file.fileno())
                if new_file:
                    _fsync_directory(self.path.parent)
                self._read_to = file.tell()
                self._ids.update(fresh)
        return Delivery(accepted=[event.id for event in events])

    def _catch_up(self, file: IO[bytes]) -> None:
        """Read the ids appended since the last look (the whole file if it is new or was
        replaced); cut off a torn last record."""
        stat = os.fstat(file.fileno())
        if stat.st_ino != self._inode or stat.st_size < self._read_to:
            self._inode, self._read_to, self._ids = stat.st_ino, 0, set()
        if stat.st_size == self._read_to:
            return
        file.seek(self._read_to)
        chunk = file.read()
        end = self._complete(chunk)
        if end < len(chunk):
            file.truncate(self._read_to + end)
        self._ids.update(self._ids_in(chunk[:end], self._read_to == 0))
        self._read_to += end

    @abc.abstractmethod
    def _encode(self, events: list[UsageEvent], new_file: bool) -> bytes: ...

    @abc.abstractmethod
    def _complete(self, chunk: bytes) -> int:
        """How many bytes of `chunk` are whole records."""

    @abc.abstractmethod
    def _ids_in(self, chunk: bytes, from_start: bool) -> Iterator[str]: ...


@contextlib.contextmanager
def _locked(file: IO[bytes]) -> Iterator[None]:
    if sys.platform == "win32":
        yield
        return
    import fcntl

    fcntl.flock(file.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _fsync_directory(path: Path) -> None:
    """Make a new file's directory entry durable too (POSIX; a no-op elsewhere)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class JsonLinesSink(FileSink):
    """One JSON object a line, every field of the event (see `FileSink`)."""

    name = "jsonl"

    def _encode(self, events: list[UsageEvent], new_file: bool) -> bytes:
        return b"".join(
            json.dumps(dataclasses.asdict(event), separators=(",", ":")).encode() + b"\n"
            for event in events
        )

    def _complete(self, chunk: bytes) -> int:
        return chunk.rfind(b"\n") + 1

    def _ids_in(self, chunk: bytes, from_start: bool) -> Iterator[str]:
        for line in chunk.splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                yield str(json.loads(line)["id"])


class CsvSink(FileSink):
    """CSV with a header row (the event's field names), one row an event (see `FileSink`);
    an absent external id or Stripe customer is an empty cell."""

    name = "csv"

    def _encode(self, events: list[UsageEvent], new_file: bool) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if new_file:
            writer.writerow(EVENT_FIELDS)
        writer.writerows([getattr(event, name) for name in EVENT_FIELDS] for event in events)
        return out.getvalue().encode()

    def _complete(self, chunk: bytes) -> int:
        # A record ends at a newline outside quotes: where the quotes before it are even.
        end = chunk.rfind(b"\n")
        while end >= 0 and chunk.count(b'"', 0, end) % 2:
            end = chunk.rfind(b"\n", 0, end)
        return end + 1

    def _ids_in(self, chunk: bytes, from_start: bool) -> Iterator[str]:
        rows = csv.reader(io.StringIO(chunk.decode(errors="replace"), newline=""))
        if from_start and next(rows, None) != list(EVENT_FIELDS):
            raise ConfigurationError(
                f"{self.path} is not a usage CSV written by meterware (its header differs)"
            )
        for row in rows:
            if len(row) == len(EVENT_FIELDS):
                yield row[0]
