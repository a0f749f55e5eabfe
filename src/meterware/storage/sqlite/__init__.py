"""The embedded default: one SQLite file, WAL mode, one long-lived aiosqlite connection.

Writes that must be atomic across processes sharing the file (`reserve`, `record`) are
single statements or `BEGIN IMMEDIATE` transactions; `busy_timeout` makes a second process
wait for the lock instead of failing.

`SQLiteStorage` is assembled from mixins over `base.SQLiteBase` (the store's state and its
connection helpers): `connection` (open, migrate, close, heal; the file read whole), `keys`
(accounts and keys), `ledger` (counters, the usage ledger, prepaid credits) and `outbox`
(the outbox, cursors, leases, notices). `sql` holds the schema and the longer statements.
"""

from __future__ import annotations

from meterware.storage.base import Transferable
from meterware.storage.sqlite.connection import SQLiteConnection
from meterware.storage.sqlite.keys import SQLiteKeys
from meterware.storage.sqlite.ledger import SQLiteLedger
from meterware.storage.sqlite.outbox import SQLiteOutbox

__all__ = ["SQLiteStorage"]


class SQLiteStorage(SQLiteConnection, SQLiteKeys, SQLiteLedger, SQLiteOutbox, Transferable):
    """`sqlite:///relative/path.db` or `sqlite:////absolute/path.db`.

    Options: `busy_timeout` - seconds to wait for another process's write lock before
    failing with `StorageError`. Defaults to 1.0 (the middleware's `storage_timeout`).

    A connection that cannot write (the file or its directory read-only, say) is opened
    again before the next operation, so the store recovers once writing works; a file
    deleted or replaced while in use is noticed by `check()` and opened again.
    """
