"""inferforge: optimize, validate, benchmark and package PyTorch models for inference.

The public verbs are ``optimize`` and ``load``. They are imported lazily so that
``import inferforge`` (and ``inferforge --help``) stay instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inferforge.version import __version__

__all__ = ["__version__", "optimize", "load", "AccuracyBudget", "SearchOptions", "Objective", "Task", "BenchSettings"]

_LAZY = {
    "optimize": "inferforge.api",
    "load": "inferforge.package",
    "AccuracyBudget": "inferforge.validate",
    "Task": "inferforge.validate",
    "SearchOptions": "inferforge.options",
    "Objective": "inferforge.options",
    "BenchSettings": "inferforge.bench",
}

if TYPE_CHECKING:
    from inferforge.api import optimize
    from inferforge.bench import BenchSettings
    from inferforge.options import Objective, SearchOptions
    from inferforge.package import load
    from inferforge.validate import AccuracyBudget, Task


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'inferforge' has no attribute {name!r}")
