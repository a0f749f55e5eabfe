"""The public API: one sorted __all__, every name importable, no optional driver needed."""

from __future__ import annotations

import inspect
import subprocess
import sys

import meterware


def test_all_is_sorted_and_importable():
    """meterware.__all__ is sorted (constants, classes, functions), unique, and complete."""
    names = meterware.__all__
    assert names == sorted(
        names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n)
    )
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(meterware, name), name


def test_public_modules_names_are_exported():
    """Every public class and function of the package's top level is in __all__."""
    public = {n for n in dir(meterware) if not n.startswith("_")}
    modules = {n for n in public if inspect.ismodule(getattr(meterware, n))}
    assert {"middleware", "runtime", "storage"} <= modules
    assert public - modules - set(meterware.__all__) == set()


def test_import_needs_no_optional_driver():
    """`import meterware` imports neither asyncpg nor redis nor fastapi."""
    code = (
        "import sys, meterware; "
        "print(sorted(m for m in ('asyncpg', 'redis', 'fastapi', 'coredis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
