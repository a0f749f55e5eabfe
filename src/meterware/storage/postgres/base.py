"""What the parts of `PostgresStorage` share: the driver's errors, the pool, the statements.

Each part (`lifecycle`, `accounts`, `ledger`, `feeds`) is a mixin over `PostgresBase`;
`meterware.storage.postgres` assembles them. May import asyncpg, `storage.base` and
`postgres.queries`, never another part.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from meterware.errors import StorageError
from meterware.storage.base import Storage
from meterware.storage.postgres.queries import Queries


class PostgresBase(Storage):
    """The state every part of the PostgreSQL backend reads, set by `PostgresStorage`."""

    resource_attribute = "_pool"
    driver_errors = (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        OSError,
        asyncio.TimeoutError,
    )
    unavailable_errors = (
        OSError,
        asyncio.TimeoutError,
        asyncpg.InterfaceError,
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.AdminShutdownError,
        asyncpg.TooManyConnectionsError,
    )

    schema: str
    min_size: int
    max_size: int
    _dsn: str
    _pool: Any
    _opening: asyncio.Lock
    _q: Queries
    _store_id: str

    @property
    def pool(self) -> Any:
        """The asyncpg pool; `StorageError` when the store is not open."""
        if self._pool is None:
            raise StorageError(f"{self!r} is not open: call `await store.open()` first")
        return self._pool
