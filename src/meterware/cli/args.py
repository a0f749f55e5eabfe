"""The command line's grammar: a parser that fails in one line, and argument types."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import date
from typing import Any, NoReturn

from meterware import config
from meterware.clock import MAX_DAYS
from meterware.errors import InvalidValue
from meterware.keys import SecretHasher, valid_id
from meterware.tiers import MAX_COUNT, TierTable


class UsageError(Exception):
    """A bad command line, reported in one line instead of argparse's usage block:
    `status` 2 for its grammar (an unknown option, a missing argument), 3 for a value
    refused (not a number, an unknown tier), as an `InvalidValue` is."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


_refused: list[str] = []  # values the argument types refused while parsing


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        status = InvalidValue.exit_status if _refused else 2
        _refused.clear()
        raise UsageError(f"{self.prog}: error: {message} (see --help)", status)


def checked(check: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse `type` from a converter that raises `ValueError`."""

    def convert(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:
            _refused.append(text)
            raise argparse.ArgumentTypeError(str(exc) or f"not {what}: {text!r}") from None

    convert.__name__ = what
    return convert


def number(kind: type[float], low: float, high: float, expect: str) -> Callable[[str], Any]:
    """An argparse `type` for a number from `low` to `high`."""

    def check(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:  # also refuses nan
            raise ValueError(f"must be {expect}, not {text!r}")
        return value

    return checked(check, "number")


def _id(text: str) -> str:
    if not valid_id(text):
        raise ValueError(f"{text!r} is not an id (1-128 characters of A-Za-z0-9_.:-)")
    return text


count_arg = number(int, 0, MAX_COUNT, "an integer >= 0")


def _or_none(convert: Callable[[str], Any], word: str) -> Callable[[str], Any]:
    """An argparse `type` that also takes `word` (kept as the string)."""
    return lambda text: word if text.lower() == word else convert(text)


def _tier(text: str) -> str:
    return TierTable.from_env().check(text)


def _day(text: str) -> str:
    date.fromisoformat(text)  # ValueError for anything but YYYY-MM-DD
    return text


limit_arg = checked(_or_none(count_arg, "none"), "limit")
days_arg = checked(
    _or_none(number(float, 0.001, MAX_DAYS, f"0.001 to {MAX_DAYS} days"), "never"), "days"
)
tier_or_none_arg = checked(_or_none(_tier, "none"), "tier")
day_arg = checked(_day, "day")
id_arg = checked(_id, "id")
tier_arg = checked(_tier, "tier")
prefix_arg = checked(lambda text: SecretHasher(prefix=text).prefix, "key prefix")


def store_options() -> Parser:
    """The options of every command that works on a store."""
    common = Parser(add_help=False)
    common.add_argument(
        "--storage",
        metavar="URL",
        help=f"the store (default: $METERWARE_STORAGE, else {config.DEFAULT_STORAGE})",
    )
    common.add_argument(
        "--key-prefix", type=prefix_arg, default="mw_", help="secret prefix (default: mw_)"
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    return common
