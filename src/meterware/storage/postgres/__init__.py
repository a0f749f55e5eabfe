"""PostgreSQL through an asyncpg connection pool: for several processes or hosts sharing
one set of keys, quotas and usage.

Every table lives in one schema (`public` unless told otherwise), created and migrated on
`open`. Writes that must be atomic are single statements (`reserve`, `add`, `release`) or
one transaction (`create_key`, `update_key`, `add_secret`, `record`).

`PostgresStorage` is assembled from one mixin per concern over `base.PostgresBase` (the
pool, the statements, the driver's errors):

| module | holds |
| --- | --- |
| `lifecycle` | `open` with the migrations, `close`, `dump` and the rest of `Transferable` |
| `accounts` | accounts, keys, their secrets, key changes |
| `ledger` | window counters, the usage ledger, prepaid credits |
| `feeds` | the outbox and notices, readers' cursors and rejections, leases |
| `migrations`, `queries` | the SQL: each schema step's statements; the store's statements |
"""

from __future__ import annotations

import asyncio
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from meterware.errors import ConfigurationError
from meterware.storage.base import Transferable, redact
from meterware.storage.postgres.accounts import PostgresAccounts
from meterware.storage.postgres.feeds import PostgresFeeds
from meterware.storage.postgres.ledger import PostgresLedger
from meterware.storage.postgres.lifecycle import PostgresLifecycle
from meterware.storage.postgres.queries import Queries

__all__ = ["PostgresStorage"]

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class PostgresStorage(
    PostgresLifecycle, PostgresAccounts, PostgresLedger, PostgresFeeds, Transferable
):
    """`postgresql://user:password@host:5432/dbname?schema=meterware` (or `postgres://`).

    Options, as keyword arguments of `storage_from_url` or of the class:

    - `schema` - the PostgreSQL schema holding meterware's tables, created on `open` if
      missing. May also be given as the URL's `?schema=` query parameter; the keyword
      wins. Defaults to `public`.
    - `min_size`, `max_size` - the connection pool's bounds. Default to 1 and 10.

    Other query parameters of the URL are asyncpg's (`sslmode`, `connect_timeout`, ...).
    The password never appears in `repr` or in errors.
    """

    def __init__(self, url: str = "postgresql://localhost/meterware", **options: Any) -> None:
        super().__init__(url, **options)
        dsn, schema = _split_schema(url)
        schema = options.get("schema") or schema or "public"
        if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
            raise ConfigurationError(
                f"bad schema {schema!r} for {redact(url)!r}: use 1-63 of A-Za-z0-9_"
            )
        min_size, max_size = options.get("min_size", 1), options.get("max_size", 10)
        if not (isinstance(min_size, int) and isinstance(max_size, int)) or not (
            0 <= min_size <= max_size and max_size >= 1
        ):
            raise ConfigurationError(
                f"pool size must be integers with 0 <= min_size <= max_size, max_size >= 1; "
                f"got min_size={min_size!r}, max_size={max_size!r}"
            )
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self._dsn = dsn
        self._pool = None
        self._opening = asyncio.Lock()
        self._q = Queries(f'"{schema}"')  # validated above, so quoting is enough


def _split_schema(url: str) -> tuple[str, str | None]:
    """The URL without its `schema` query parameter (asyncpg would send it to the server
    as a setting), and that parameter."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for name, value in query if name == "schema"), None)
    rest = [(name, value) for name, value in query if name != "schema"]
    return urlunsplit(parts._replace(query=urlencode(rest))), schema
