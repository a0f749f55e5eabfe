"""Counters with windows in a dict, for one process: the in-memory store's counters, and
the per-minute windows of `rate_limit_storage="local://"` (see `meterware.windows`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from meterware.storage.records import Claim, Grant

__all__ = ["LocalCounters"]


class LocalCounters:
    """Counters with windows in a dict: for one process (and the in-memory store)."""

    def __init__(self) -> None:
        self._windows: dict[str, list[float]] = {}  # counter -> [window end, count]

    def __len__(self) -> int:
        return len(self._windows)

    def __iter__(self) -> Iterator[tuple[str, list[float]]]:
        return iter(self._windows.items())

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[Grant]:
        grants = []
        for claim in claims:
            window = self._windows.get(claim.counter)
            if window is None or window[0] <= now:
                window = self._windows[claim.counter] = [claim.window_end, 0]
            want = claim.want if claim.window_end > now else 0  # (an expired grant's)
            granted = min(want, max(0, claim.limit - int(window[1])))
            window[1] += granted
            grants.append(Grant(granted, int(window[1]), window[0]))
        return grants

    async def release(self, counter: str, window_end: float, amount: int) -> None:
        window = self._windows.get(counter)
        if window is not None and window[0] == window_end:
            window[1] = max(0, window[1] - amount)

    async def close(self) -> None:
        return None

    def count(self, counter: str, now: float) -> int:
        window = self._windows.get(counter)
        return 0 if window is None or window[0] <= now else int(window[1])
