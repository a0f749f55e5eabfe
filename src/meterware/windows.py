"""Where per-minute windows live (`rate_limit_storage`), as counter stores for the lease
engine (`meterware.leases`).

A window is 60 s long and starts at its subject's first request (the algorithm of
`limits`' fixed window): a store keeps one window per counter, and the first
reservation after it ends starts the next one. Every process sharing the store shares
the window: its end is the store's, never a process's own guess.

- None (the default): in the main store (SQLite, PostgreSQL), shared by every process
  using it;
- `async+redis://…` (`rediss`, `valkey`): in Redis, one Lua script per reservation,
  shared by every process;
- another `limits` async URI (`async+memcached://`, `async+mongodb://`,
  `async+memory://`): in that storage, through `limits`' atomic increment;
- `local://`: in this process only (each process has its own windows).

Redis connections (URIs, TLS, sentinel, cluster) are made by the `limits` package.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meterware.errors import ConfigurationError, StorageError, StorageUnavailable
from meterware.leases import CounterStore
from meterware.storage.local import LocalCounters
from meterware.storage.records import Claim, Grant

__all__ = ["WINDOW", "LimitsCounters", "LocalCounters", "RedisCounters", "window_store"]

WINDOW = 60


# The window's end is kept as the string the caller sent, so that the float it returns
# is exactly the one it gave (Lua's numbers print with 14 digits).
_RESERVE = """
local now = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local at = 1 + (i - 1) * 3
  local want, limit, fresh = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), ARGV[at + 3]
  local window = redis.call('HMGET', key, 'end', 'count')
  local ends, count = window[1], tonumber(window[2])
  if not ends or tonumber(ends) <= now then ends, count = fresh, 0 end
  local granted = math.max(0, math.min(want, limit - count))
  count = count + granted
  redis.call('HSET', key, 'end', ends, 'count', count)
  redis.call('PEXPIRE', key, math.ceil((tonumber(ends) - now) * 1000) + 60000)
  out[#out + 1] = granted
  out[#out + 1] = count
  out[#out + 1] = ends
end
return out
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'end') == ARGV[1] then
  local count = tonumber(redis.call('HGET', KEYS[1], 'count')) - tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'count', math.max(0, count))
end
return 0
"""


class RedisCounters:
    """Windows in Redis: one hash per counter (`end`, `count`), reserved by a Lua script
    in one round trip; a window's key expires a minute after the window ends (counted
    from the caller's clock, as the window is)."""

    def __init__(self, uri: str) -> None:
        storage = _limits_storage(uri)
        bridge = getattr(storage, "bridge", None)
        if bridge is None or not hasattr(bridge, "get_connection"):
            raise ConfigurationError(f"rate_limit_storage {uri.split('://')[0]}:// is not Redis")
        self.limits = storage
        client = self._client = bridge.get_connection()
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)
        self._errors: tuple[type[BaseException], ...] = (
            *_as_tuple(storage.base_exceptions),
            OSError,
        )

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[Grant]:
        args: list[Any] = [repr(now)]
        for c in claims:
            args += (c.want, c.limit, repr(c.window_end))
        try:
            out = await self._reserve(keys=[_key(c.counter) for c in claims], args=args)
        except self._errors as exc:
            raise StorageUnavailable(f"rate limit storage: {type(exc).__name__}: {exc}") from exc
        return [
            Grant(int(out[i]), int(out[i + 1]), float(_text(out[i + 2])))
            for i in range(0, len(out), 3)
        ]

    async def release(self, counter: str, window_end: float, amount: int) -> None:
        try:
            await self._release(keys=[_key(counter)], args=[repr(window_end), amount])
        except self._errors as exc:
            raise StorageUnavailable(f"rate limit storage: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        """Close the connections to Redis."""
        self._client.connection_pool.disconnect()

    async def counter(self, counter: str, now: float) -> int:
        """The count of the counter's window live at `now` (0 if none)."""
        try:
            end, count = await self._client.hmget(_key(counter), ["end", "count"])
        except self._errors as exc:
            raise StorageUnavailable(f"rate limit storage: {type(exc).__name__}: {exc}") from exc
        return 0 if end is None or float(_text(end)) <= now else int(_text(count))


class LimitsCounters:
    """Windows in any `limits` async storage, through its atomic increment: a block of
    `want` units is one increment by `want`, of which only what fits under the limit is
    granted. Unused units are not returned (the storage cannot take them back); they
    end with their window."""

    def __init__(self, uri: str) -> None:
        self.storage = _limits_storage(uri)
        self._ends: dict[str, float] = {}

    async def reserve(self, claims: Sequence[Claim], now: float) -> list[Grant]:
        grants = []
        for c in claims:
            key = f"meterware/{c.counter}"
            try:
                count = await self.storage.incr(key, WINDOW, amount=c.want)
                end = self._ends.get(c.counter, 0.0)
                if count == c.want or end <= now:  # a new window, or one we have not seen
                    end = now + WINDOW if count == c.want else await self._end(key, now)
                    self._ends[c.counter] = end
            except StorageError:
                raise
            except Exception as exc:
                raise StorageUnavailable(f"rate limit storage: {exc}") from exc
            granted = max(0, min(c.want, c.limit - (count - c.want)))
            grants.append(Grant(granted, min(count, c.limit), end))
        return grants

    async def _end(self, key: str, now: float) -> float:
        return max(now, float(await self.storage.get_expiry(key)))

    async def release(self, counter: str, window_end: float, amount: int) -> None:
        return None

    async def close(self) -> None:
        return None


def window_store(uri: str | None, main: CounterStore) -> CounterStore:
    """The counter store of per-minute windows for a `rate_limit_storage` setting."""
    if uri is None or uri == "":
        return main
    if uri in ("local://", "memory://"):
        return LocalCounters()
    if uri.startswith(("async+redis", "async+valkey")):
        return RedisCounters(uri)
    return LimitsCounters(uri)


def _limits_storage(uri: str) -> Any:
    from limits.aio.storage import Storage as LimitsAsyncStorage
    from limits.errors import ConfigurationError as LimitsConfigurationError
    from limits.storage import storage_from_string

    wrong = (
        "rate_limit_storage must be local://, or an async limits storage such as "
        f"'async+redis://host:6379', not {uri.split('://')[0]}://"
    )
    if not uri.startswith("async+"):
        raise ConfigurationError(wrong)
    try:
        storage = storage_from_string(uri)
    except LimitsConfigurationError as exc:
        raise ConfigurationError(f"rate_limit_storage: {exc}") from None
    if not isinstance(storage, LimitsAsyncStorage):
        raise ConfigurationError(wrong)
    return storage


def _key(counter: str) -> str:
    return f"meterware:{counter}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _as_tuple(errors: Any) -> tuple[type[BaseException], ...]:
    return tuple(errors) if isinstance(errors, tuple) else (errors,)
