"""Per-minute rate limits: fixed windows of 60 s per subject (a key, or an account).

A window starts at the subject's first hit, the algorithm of `limits`'
`FixedWindowRateLimiter`. At most `limit` requests are admitted in a window; across a
window edge a client can send up to 2 × `limit` within a short time (the known burst of
fixed windows).

- `LocalWindows` (the default) keeps one small entry per active subject in process: O(1)
  per request, no I/O, per process.
- `SharedWindows` keeps them in a `limits` async storage (`async+redis://…`), shared by
  every process: one round trip per request. When that storage fails, requests pass
  (fail open) or get `StorageUnavailable` (fail closed), and a warning is logged once per
  outage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from meterware.errors import ConfigurationError, StorageUnavailable

__all__ = ["LocalWindows", "MinuteResult", "SharedWindows", "Windows", "windows_from"]

log = logging.getLogger("meterware")

WINDOW = 60


@dataclass(slots=True)
class MinuteResult:
    """The outcome of one hit on a per-minute window."""

    allowed: bool
    remaining: int
    reset_at: float


class LocalWindows:
    """In-process fixed windows: a dict of `[window_end, count]`, O(1) per hit."""

    window = WINDOW

    def __init__(self) -> None:
        self._windows: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._windows)

    async def hit(self, subject: str, limit: int, now: float) -> MinuteResult:
        """Count one request of `subject` at `now` if the window has room."""
        entry = self._windows.get(subject)
        if entry is None or now >= entry[0]:
            entry = self._windows[subject] = [now + self.window, 0]
        if entry[1] >= limit:
            return MinuteResult(False, 0, entry[0])
        entry[1] += 1
        return MinuteResult(True, limit - int(entry[1]), entry[0])

    def peek(self, subject: str, limit: int, now: float) -> MinuteResult:
        """The window's state at `now` without counting a hit."""
        entry = self._windows.get(subject)
        if entry is None or now >= entry[0]:
            return MinuteResult(True, limit, now + self.window)
        return MinuteResult(entry[1] < limit, max(0, limit - int(entry[1])), entry[0])

    def sweep(self, now: float) -> int:
        """Forget windows that have ended; how many were dropped."""
        ended = [s for s, e in self._windows.items() if now >= e[0]]
        for subject in ended:
            del self._windows[subject]
        return len(ended)

    async def close(self) -> None:
        self._windows.clear()


class SharedWindows:
    """Fixed windows in a `limits` async storage (`async+redis://…`), shared by processes.

    One round trip per request (`incr`); the window's end is learnt from the first hit or,
    when another process opened the window, from one `get_expiry`, then cached.
    """

    window = WINDOW

    def __init__(self, uri: str, *, fail_open: bool = True) -> None:
        from limits.aio.storage import Storage as LimitsAsyncStorage
        from limits.errors import ConfigurationError as LimitsConfigurationError
        from limits.storage import storage_from_string

        wrong = (
            f"rate_limit_storage must be an async limits storage, such as "
            f"'async+redis://host:6379' or 'async+memory://', not {uri.split('://')[0]}://"
        )
        if not uri.startswith("async+"):
            raise ConfigurationError(wrong)
        try:
            storage = storage_from_string(uri)
        except LimitsConfigurationError as exc:
            raise ConfigurationError(f"rate_limit_storage: {exc}") from None
        if not isinstance(storage, LimitsAsyncStorage):
            raise ConfigurationError(wrong)
        self.storage = storage
        self.fail_open = fail_open
        self._resets: dict[str, float] = {}
        self._failing = False

    def __len__(self) -> int:
        return len(self._resets)

    async def hit(self, subject: str, limit: int, now: float) -> MinuteResult:
        """Count one request of `subject` at `now` in the shared window."""
        key = f"meterware/minute/{subject}"
        try:
            count = await self.storage.incr(key, self.window)
            reset_at = self._resets.get(subject)
            if count == 1 or reset_at is None or reset_at <= now:
                if count == 1:
                    reset_at = now + self.window
                else:
                    reset_at = now + max(0.0, await self.storage.get_expiry(key) - now)
                self._resets[subject] = reset_at
        except Exception as exc:
            if not self._failing:
                self._failing = True
                what = "admitting requests" if self.fail_open else "refusing requests"
                log.warning("rate limit storage failed, %s: %s", what, exc)
            if not self.fail_open:
                raise StorageUnavailable(f"rate limit storage: {exc}") from exc
            return MinuteResult(True, limit, now + self.window)
        if self._failing:
            self._failing = False
            log.warning("rate limit storage is back")
        return MinuteResult(count <= limit, max(0, limit - count), reset_at)

    def peek(self, subject: str, limit: int, now: float) -> MinuteResult:
        """What this process last saw of the window (no round trip)."""
        return MinuteResult(True, limit, self._resets.get(subject, now + self.window))

    def sweep(self, now: float) -> int:
        ended = [s for s, r in self._resets.items() if r <= now]
        for subject in ended:
            del self._resets[subject]
        return len(ended)

    async def close(self) -> None:
        self._resets.clear()


Windows = LocalWindows | SharedWindows


def windows_from(uri: str | None, *, fail_open: bool = True) -> Windows:
    """The per-minute windows for a `rate_limit_storage` setting (None: in process)."""
    if uri is None or uri in ("", "memory://", "local://"):
        return LocalWindows()
    return SharedWindows(uri, fail_open=fail_open)
