"""The user's Python, imported: a file or a ``module:function`` reference (model, dataset or adapter factory).

One place decides how a reference is read and how a failure is told, so the model factory, the dataset
factory, the demo's adapters and the packaged source artifact all behave alike.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferforge.errors import SourceError, one_line


def import_file(file: Path, module_name: str, *, fresh: bool = False) -> Any:
    """Execute a Python file as the module ``module_name``; a second call returns the same module unless
    ``fresh`` (the user's file may have changed since: their factory is always read anew)."""
    if module_name in sys.modules and not fresh:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def resolve_callable(ref: str, what: str) -> Callable[..., Any]:
    """Import ``path/to/file.py:fn`` or ``package.module:fn``; raise SourceError on any failure."""
    module_ref, sep, attr = ref.rpartition(":")
    if not sep or not attr:
        raise SourceError(f"{what} {ref!r}: expected 'path/to/file.py:function' or 'package.module:function'")
    try:
        if module_ref.endswith(".py"):
            file = Path(module_ref)
            if not file.is_file():
                raise SourceError(f"{what} {ref!r}: file {module_ref} does not exist")
            module = import_file(file, f"_inferforge_user_{file.stem}_{abs(hash(file.resolve()))}", fresh=True)
        else:
            module = importlib.import_module(module_ref)
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{what} {ref!r}: importing {module_ref} failed: {one_line(exc)}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise SourceError(f"{what} {ref!r}: {module_ref} has no callable named {attr!r}")
    return fn
