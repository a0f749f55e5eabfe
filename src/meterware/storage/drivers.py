"""What the base gives every backend for its driver: the driver's exceptions re-raised as
`StorageError` (`StorageUnavailable` when the server cannot be reached), a hook to heal
before each operation, and a `ResourceWarning` for a store never closed.

`DriverSupport` is the base of `meterware.storage.base.Storage`; this module imports only
`meterware.errors`.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, TypeVar

from meterware.errors import StorageError, StorageUnavailable

_F = TypeVar("_F", bound=Callable[..., Coroutine[Any, Any, Any]])

__all__ = ["DriverSupport", "wrap_error"]


class DriverSupport:
    """A backend's driver errors wrapped, its healing hooks and its never-closed warning:
    the base of `Storage` (see module doc)."""

    driver_errors: ClassVar[tuple[type[Exception], ...]] = ()
    """The driver's exceptions; the public methods re-raise them as `StorageError`."""

    unavailable_errors: ClassVar[tuple[type[Exception], ...]] = ()
    """Those of them that mean the server cannot be reached: `StorageUnavailable`."""

    resource_attribute: ClassVar[str | None] = None
    """The attribute holding a connection or pool while open: a store garbage-collected
    with it still set was never closed, which gets a `ResourceWarning`."""

    def __del__(self) -> None:
        name = self.resource_attribute
        if name is not None and getattr(self, name, None) is not None:  # __init__ may have raised
            warnings.warn(
                f"{self!r} was never closed: call `await store.close()` or use `async with`",
                ResourceWarning,
                stacklevel=1,
            )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.driver_errors:
            for name, member in list(vars(cls).items()):
                if not name.startswith("_") and inspect.iscoroutinefunction(member):
                    setattr(cls, name, _wrap_errors(member, cls.driver_errors))

    def _driver_failed(self, exc: Exception) -> None:
        """A driver error is about to be raised as `StorageError` (a backend may note it,
        to heal before its next operation)."""
        return None

    async def _heal(self) -> None:
        """Called before each operation: a backend that noted trouble heals here."""
        return None


def _wrap_errors(method: _F, errors: tuple[type[Exception], ...]) -> _F:
    heals = method.__name__ not in ("open", "close", "check")

    @functools.wraps(method)
    async def wrapper(self: DriverSupport, *args: Any, **kwargs: Any) -> Any:
        try:
            if heals:
                await self._heal()
            return await method(self, *args, **kwargs)
        except errors as exc:
            self._driver_failed(exc)
            raise wrap_error(self, exc) from exc

    return wrapper  # type: ignore[return-value]


def wrap_error(store: DriverSupport, exc: BaseException) -> StorageError:
    """A `StorageError` (or `StorageUnavailable`) for a driver's exception."""
    kind = StorageUnavailable if isinstance(exc, store.unavailable_errors) else StorageError
    return kind(f"{store!r}: {type(exc).__name__}: {exc}")
