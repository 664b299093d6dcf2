"""How a model is captured: the flat module every program is traced from, the dynamic shapes torch.export
gets (and the ranges its own "Suggested fixes" give), and example batches that export and tracing do not
specialise. Shared by ``source.py`` and the backends that export or trace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from inferforge.errors import SpecError
from inferforge.types import Dim, ModelSpec

DIM_MAX = 1 << 16  # the largest size a dynamic dim is exported for, unless the model allows less


def export_dynamic_shapes(spec: ModelSpec, ranges: Mapping[str, tuple[int, int]] | None = None
                          ) -> tuple[dict[int, Any], ...]:
    """One torch.export Dim per named dim of the spec, shared by every input that names it."""
    import torch

    dims: dict[str, Any] = {}
    shapes = []
    for s in spec.inputs:
        axes = {}
        for axis, d in enumerate(s.shape):
            if isinstance(d, Dim):
                lo, hi = (ranges or {}).get(d.name, (1, DIM_MAX))
                dims.setdefault(d.name, torch.export.Dim(d.name, min=lo, max=hi))
                axes[axis] = dims[d.name]
        shapes.append(axes)
    return tuple(shapes)


_SUGGESTED_DIM = re.compile(r"^\s*(\w+)\s*=\s*Dim\(\s*['\"](\w+)['\"]\s*((?:,\s*\w+\s*=\s*\d+\s*)*)\)", re.M)


def suggested_dim_ranges(message: str, spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """The ranges torch.export's "Suggested fixes" give the spec's named dims (e.g. ``S = Dim('S', max=512)``
    for a 512-position encoder); a dim it fixes to a constant is not a range and is left out."""
    if "Suggested fixes" not in message:
        return {}
    named = {d.name for s in spec.inputs for d in s.shape if isinstance(d, Dim)}
    ranges = {}
    for match in _SUGGESTED_DIM.finditer(message.split("Suggested fixes", 1)[1]):
        if match[1] not in named:
            continue
        bounds = dict(re.findall(r"(\w+)\s*=\s*(\d+)", match[3]))
        ranges[match[1]] = (int(bounds.get("min", 1)), int(bounds.get("max", DIM_MAX)))
    return ranges


def at_least_batch_2(spec: ModelSpec, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Export and tracing specialise size-1 dims, so examples need a batch of 2 or more."""
    out = {}
    for s in spec.inputs:
        value = inputs[s.name]
        axis = s.batch_axis
        if axis is not None and value.shape[axis] < 2:
            value = np.concatenate([value] * 2, axis=axis)
        out[s.name] = value
    return out


def flatten_outputs(result: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Name every tensor in a (nested) tensor/tuple/list/dict output, in a stable order."""
    import torch

    if isinstance(result, torch.Tensor):
        return [(prefix or "output", result)]
    if isinstance(result, Mapping):
        items: list[tuple[str, Any]] = []
        for key, value in result.items():
            if value is not None:
                items += flatten_outputs(value, f"{prefix}.{key}" if prefix else str(key))
        return items
    if isinstance(result, (tuple, list)):
        items = []
        for i, value in enumerate(result):
            if value is not None:
                items += flatten_outputs(value, f"{prefix}.{i}" if prefix else f"output_{i}")
        return items
    raise SpecError(f"the model returned {type(result).__name__}; expected tensors, or tuples, lists or dicts of them")


def make_flat_module(model: Any, input_names: Sequence[str], by_keyword: bool) -> Any:
    import torch

    class _Flat(torch.nn.Module):
        """Positional inputs in spec order in, a flat tuple of tensors out."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def named_outputs(self, *args: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
            if by_keyword:
                return flatten_outputs(self.model(**dict(zip(input_names, args, strict=True))))
            return flatten_outputs(self.model(*args))

        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(t for _, t in self.named_outputs(*args))

    flat = _Flat()
    flat.training = False  # not .eval(): an ExportedProgram's module refuses train()/eval() calls
    return flat
