"""Subscription tiers: the table of limits, legacy names, and per-key overrides.

The default table is the one reference B documents. A key stored under a legacy name
(`starter`, `professional`) is limited as its current tier and reported under the name it
was given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from meterware.errors import ConfigurationError
from meterware.keys import Caller

__all__ = ["DEFAULT_TIERS", "LEGACY_TIERS", "MAX_COUNT", "Limits", "Tier", "TierTable"]

MAX_COUNT = 2**62  # the largest limit or amount meterware takes (a 64-bit column holds it)


@dataclass(frozen=True)
class Tier:
    """A tier's limits. `None` means unlimited."""

    name: str
    monthly_requests: int | None
    per_minute: int | None
    monthly_credits: int | None = None

    def __post_init__(self) -> None:
        for what in ("monthly_requests", "per_minute", "monthly_credits"):
            value = getattr(self, what)
            if value is not None and (not isinstance(value, int) or not 0 <= value <= MAX_COUNT):
                raise ConfigurationError(
                    f"tier {self.name!r}: {what} must be an integer from 0 to {MAX_COUNT}"
                )


@dataclass(frozen=True)
class Limits:
    """The limits in force for one caller: its tier's, with the key's overrides applied."""

    tier: str
    per_minute: int | None
    monthly_requests: int | None
    monthly_credits: int | None
    anchor_day: int


DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier("free", monthly_requests=1_000, per_minute=10),
    Tier("pro", monthly_requests=10_000, per_minute=30),
    Tier("scale", monthly_requests=100_000, per_minute=60),
    Tier("enterprise", monthly_requests=1_000_000, per_minute=120),
)
LEGACY_TIERS: Mapping[str, str] = {"starter": "pro", "professional": "scale"}


class TierTable:
    """Tier names (case-insensitive) to limits, with legacy aliases."""

    def __init__(
        self,
        tiers: Iterable[Tier] = DEFAULT_TIERS,
        *,
        aliases: Mapping[str, str] = LEGACY_TIERS,
    ) -> None:
        self._tiers = {tier.name.lower(): tier for tier in tiers}
        if not self._tiers:
            raise ConfigurationError("the tier table is empty")
        self._aliases = {old.lower(): new.lower() for old, new in aliases.items()}
        for old, new in self._aliases.items():
            if new not in self._tiers:
                raise ConfigurationError(f"legacy tier {old!r} maps to unknown tier {new!r}")

    @classmethod
    def coerce(cls, value: TierTable | Mapping[str, Mapping[str, int | None]] | None) -> TierTable:
        """A table from a `TierTable`, a `{name: {"monthly_requests": …, …}}` mapping or `None`."""
        if value is None:
            return cls.from_env()
        if isinstance(value, TierTable):
            return value
        try:
            tiers = [Tier(name, **dict(limits)) for name, limits in value.items()]  # type: ignore[arg-type,unused-ignore]
        except TypeError as exc:
            raise ConfigurationError(f"bad tier table: {exc}") from None
        names = {tier.name.lower() for tier in tiers}
        return cls(tiers, aliases={k: v for k, v in LEGACY_TIERS.items() if v in names})

    @classmethod
    def from_env(cls, variable: str = "METERWARE_TIERS") -> TierTable:
        """The table from `METERWARE_TIERS` (JSON, or the path of a JSON file), else the
        default. The JSON maps tier names to `{"monthly_requests", "per_minute",
        "monthly_credits"}`; the middleware and the CLI both read it."""
        raw = os.environ.get(variable, "").strip()
        if not raw:
            return cls()
        try:
            text = raw if raw.startswith("{") else Path(raw).read_text()
            value = json.loads(text)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"{variable}: not a JSON tier table: {exc}") from None
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise ConfigurationError(f"{variable} must map tier names to objects of limits")
        return cls.coerce(value)

    def __iter__(self) -> Iterator[Tier]:
        return iter(self._tiers.values())

    @property
    def default(self) -> str:
        """The plan of an account created without one: `free` when the table has it,
        else the table's first tier."""
        return "free" if "free" in self._tiers else self._tiers[next(iter(self._tiers))].name

    def names(self) -> list[str]:
        """Every accepted name: tiers first, then legacy aliases."""
        return [*self._tiers, *self._aliases]

    @property
    def aliases(self) -> Mapping[str, str]:
        return dict(self._aliases)

    def get(self, name: str) -> Tier:
        """The tier called `name` (any case, legacy names allowed)."""
        key = name.lower()
        key = self._aliases.get(key, key)
        try:
            return self._tiers[key]
        except KeyError:
            known = ", ".join(self.names())
            raise ConfigurationError(f"unknown tier {name!r} (known: {known})") from None

    def knows(self, name: str) -> bool:
        """Whether `name` is a tier or a legacy alias of one (any case)."""
        key = name.lower()
        return self._aliases.get(key, key) in self._tiers

    def check(self, name: str) -> str:
        """`name` unchanged if it is a known tier, else a `ConfigurationError`."""
        self.get(name)
        return name

    def limits_for(self, caller: Caller) -> Limits:
        """The caller's tier limits with its overrides applied."""
        tier = self.get(caller.tier)
        return Limits(
            tier=caller.tier,
            per_minute=_pick(caller.per_minute, tier.per_minute),
            monthly_requests=_pick(caller.monthly_limit, tier.monthly_requests),
            monthly_credits=_pick(caller.monthly_credits, tier.monthly_credits),
            anchor_day=caller.billing_anchor_day or 1,
        )


def _pick(override: int | None, default: int | None) -> int | None:
    return default if override is None else override
