"""Storage backends, chosen by URL.

| URL | backend | needs |
| --- | --- | --- |
| `memory://` | `MemoryStorage` | nothing |
| `sqlite:///relative.db`, `sqlite:////absolute.db` | `SQLiteStorage` | nothing (aiosqlite) |
| `postgresql://user@host:5432/db` | `PostgresStorage` | `pip install 'meterware[postgres]'` |
"""

from __future__ import annotations

import importlib
from typing import Any

from meterware.errors import ConfigurationError
from meterware.storage.base import Storage, Transferable, redact
from meterware.storage.records import (
    Claim,
    Grant,
    KeyTotals,
    Rollup,
    Snapshot,
    UsageBatch,
    UsageRow,
)

__all__ = [
    "Claim",
    "Grant",
    "KeyTotals",
    "Rollup",
    "Snapshot",
    "Storage",
    "Transferable",
    "UsageBatch",
    "UsageRow",
    "storage_from_url",
]

# scheme -> (module, class, the extra that installs its driver, the driver's module)
_BACKENDS: dict[str, tuple[str, str, str | None, str | None]] = {
    "memory": ("meterware.storage.memory", "MemoryStorage", None, None),
    "sqlite": ("meterware.storage.sqlite", "SQLiteStorage", None, "aiosqlite"),
    "postgresql": ("meterware.storage.postgres", "PostgresStorage", "postgres", "asyncpg"),
    "postgres": ("meterware.storage.postgres", "PostgresStorage", "postgres", "asyncpg"),
}


def storage_from_url(url: str, **options: Any) -> Storage:
    """The backend for a URL such as `sqlite:///meterware.db` (not opened yet)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in _BACKENDS:
        known = ", ".join(f"{s}://" for s in _BACKENDS)
        raise ConfigurationError(f"unknown storage URL {redact(url)!r} (known schemes: {known})")
    module_name, class_name, extra, driver = _BACKENDS[scheme.lower()]
    if driver is not None:
        try:
            importlib.import_module(driver)
        except ImportError:
            hint = f"pip install 'meterware[{extra}]'" if extra else f"pip install {driver}"
            raise ConfigurationError(
                f"storage {scheme}:// needs the {driver} package: {hint}"
            ) from None
    cls: type[Storage] = getattr(importlib.import_module(module_name), class_name)
    return cls(url, **options)
