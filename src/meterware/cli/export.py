"""`meterware export`: send the usage outbox to a billing system."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add `export` to the command line."""
