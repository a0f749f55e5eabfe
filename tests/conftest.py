"""Shared fixtures. Each name has one meaning in every test module:

- `backend`: a fresh, empty storage place, for each backend of `tests.backends` (memory,
  SQLite, PostgreSQL); `durable_backend` the same over the backends that outlive a store
  object (SQLite, PostgreSQL).
- `store`: an open store on `backend` (the storage contract runs on it);
- `counters`: an open counter store on `counter_backend` (every backend, and Redis);
  `durable_store` on `durable_backend`; `sqlite_store` on a SQLite file of its own (the
  middleware's tests, where one real backend is enough).
- `clock`: a `FakeClock` at 2026-04-12T14:30:00 UTC, or at the time a module or test
  gives with `@pytest.mark.clock_at("...")`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from meterware.storage import Storage, storage_from_url
from tests.backends import (
    ALL_STORAGES,
    COUNTER_STORES,
    DURABLE_STORAGES,
    SHARED_COUNTER_STORES,
    Backend,
)
from tests.utils import FakeClock


@pytest.fixture(params=list(ALL_STORAGES.values()))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A fresh, empty place for each backend; stores opened on it are closed afterwards."""
    make: Callable[[Path], Backend] = request.param
    b = make(tmp_path)
    yield b
    await b.cleanup()


@pytest.fixture(params=DURABLE_STORAGES)
async def durable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Like `backend`, over the backends that keep their data (SQLite, PostgreSQL)."""
    make: Callable[[Path], Backend] = request.param
    b = make(tmp_path)
    yield b
    await b.cleanup()


@pytest.fixture
async def store(backend: Backend) -> Storage:
    """An open store on a fresh `backend`, for each backend."""
    s = backend.new()
    await s.open()
    return s


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Storage]:
    """An open store on a SQLite file of its own: for tests of the middleware, where one
    real backend is enough (the storage contract runs against every backend)."""
    s = storage_from_url(f"sqlite:///{tmp_path}/meterware.db")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def durable_store(durable_backend: Backend) -> Storage:
    """An open store on a fresh `durable_backend`."""
    s = durable_backend.new()
    await s.open()
    return s


@pytest.fixture(params=COUNTER_STORES)
async def counter_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A fresh place for counters: every store backend, and Redis."""
    make: Callable[[Path], Backend] = request.param
    b = make(tmp_path)
    yield b
    await b.cleanup()


@pytest.fixture(params=SHARED_COUNTER_STORES)
async def shared_counter_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Backend]:
    """Like `counter_backend`, over the places several processes share (SQLite,
    PostgreSQL, Redis)."""
    make: Callable[[Path], Backend] = request.param
    b = make(tmp_path)
    yield b
    await b.cleanup()


@pytest.fixture
async def counters(counter_backend: Backend) -> Any:
    """An open counter store on `counter_backend` (`reserve`, `release`, `counter`)."""
    c = counter_backend.new()
    if isinstance(c, Storage):
        await c.open()
    return c


@pytest.fixture
def clock(request: pytest.FixtureRequest) -> FakeClock:
    """A clock that moves only when told to (see the module doc for where it starts)."""
    marker = request.node.get_closest_marker("clock_at")
    return FakeClock(marker.args[0] if marker else "2026-04-12T14:30:00")
