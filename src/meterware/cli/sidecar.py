"""What the long-running commands (`export`, `webhooks deliver`) share: stopping on
SIGTERM or SIGINT, a log on stderr, and the exit statuses they add."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

from meterware.errors import MeterwareError

__all__ = ["GaveUp", "LeaseHeld", "Rejected", "log_to_stderr", "stopping"]


class Rejected(MeterwareError):
    """The receiving end refused some items for good: reported, recorded, never resent."""

    exit_status = 6


class LeaseHeld(MeterwareError):
    """Another process holds the lease of this reader."""

    exit_status = 7


class GaveUp(MeterwareError):
    """The receiving end or the store stayed unavailable through every retry."""


@contextlib.contextmanager
def stopping() -> Iterator[asyncio.Event]:
    """An event set by SIGTERM or SIGINT while the block runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        yield stop
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def log_to_stderr() -> Iterator[None]:
    """meterware's log on stderr while the block runs, unless the host configured it."""
    logger = logging.getLogger("meterware")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
