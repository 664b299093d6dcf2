"""What a captured model's spec is, found by running it: which input dims it accepts at other sizes
(kept dynamic), and its outputs' names, dtypes and shapes (B, a named input dim, or one of their own where
the data decides, as with nms). Called by ``source.py`` on every model that comes as Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from inferforge.data import generate_inputs
from inferforge.errors import SpecError, one_line
from inferforge.types import BATCH, Dim, ModelSpec, TensorSpec, canonical_dtype


def resize_axis(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    """``array`` with ``axis`` cut or cyclically extended to ``size``: values stay ones the model saw."""
    return np.take(array, np.arange(size) % array.shape[axis], axis=axis)


def _other_sizes(size: int) -> tuple[int, ...]:
    return tuple(dict.fromkeys(n for n in (size + max(1, size // 2), max(2, size // 2)) if n != size))


def detect_dynamic_dims(module: Any, spec: ModelSpec, arrays: Mapping[str, np.ndarray], fixed: set[str]
                        ) -> tuple[ModelSpec, list[str]]:
    """Find the non-batch axes eager PyTorch accepts at other sizes (a sequence length, an image side) and keep
    them dynamic rather than freezing them at the example's size without a word.

    Axes of the same size are tried together first (input_ids and attention_mask share a length). Sequences
    (integer inputs, or float inputs of rank 3 or less) become named dims ``S``, ``S1``, ...; image sides
    (float inputs of rank 4 or more) stay at the example's size, which is what their runtimes are fastest at,
    and a note gives the ``--input`` that keeps them dynamic. Inputs the user specified (``fixed``) are left
    as given. Returns the new spec and the notes for the user."""
    import torch

    by_size: dict[int, list[tuple[str, int]]] = {}
    for s in spec.inputs:
        if s.name in fixed or s.name not in arrays:
            continue
        for axis, d in enumerate(s.shape):
            if isinstance(d, int) and d > 1 and axis != s.batch_axis:
                by_size.setdefault(d, []).append((s.name, axis))

    def accepted(group: list[tuple[str, int]], size: int) -> bool:
        for other in _other_sizes(size):
            args = []
            for s in spec.inputs:
                value = arrays[s.name]
                for name, axis in group:
                    if name == s.name:
                        value = resize_axis(value, axis, other)
                args.append(torch.from_numpy(np.ascontiguousarray(value)))
            try:
                with torch.inference_mode():
                    module(*args)
            except Exception:
                return False
        return True

    taken = {d.name for s in spec.inputs for d in s.shape if isinstance(d, Dim)}
    shapes = {s.name: list(s.shape) for s in spec.inputs}
    notes: list[str] = []
    for size, axes in sorted(by_size.items()):
        groups = [axes] if accepted(axes, size) else [[a] for a in axes if len(axes) > 1 and accepted([a], size)]
        for group in groups:
            name = next(n for n in (f"S{i}" if i else "S" for i in range(len(taken) + 2)) if n not in taken)
            images = [(n, a) for n, a in group if _is_image(spec, n)]
            if images:
                keep = " ".join(f"--input {_with_dim(spec, n, [a for m, a in images if m == n], Dim(name, size))}"
                                for n in dict.fromkeys(n for n, _ in images))
                notes.append(f"{', '.join(f'{n} axis {a}' for n, a in images)} accept other sizes than {size}, "
                             f"but the package is built for {size} only (image sides run fastest fixed); to keep "
                             f"them dynamic: {keep}")
                continue
            taken.add(name)
            for n, a in group:
                shapes[n][a] = Dim(name, size)
            notes.append(f"{', '.join(f'{n} axis {a}' for n, a in group)} kept dynamic as {name} (eager runs it "
                         f"at other sizes than the example's {size}); to fix it instead, give --input with {size}")
    inputs = tuple(replace(s, shape=tuple(shapes[s.name])) for s in spec.inputs)
    return replace(spec, inputs=inputs), notes


def _is_image(spec: ModelSpec, name: str) -> bool:
    s = next(s for s in spec.inputs if s.name == name)
    return s.is_float and len(s.shape) >= 4


def _with_dim(spec: ModelSpec, name: str, axes: list[int], dim: Dim) -> str:
    """The input's spec string with ``axes`` made the dynamic ``dim``: the --input that keeps them dynamic."""
    s = next(s for s in spec.inputs if s.name == name)
    return str(replace(s, shape=tuple(dim if i in axes else d for i, d in enumerate(s.shape))))


def infer_output_specs(module: Any, spec: ModelSpec, name: str) -> tuple[TensorSpec, ...]:
    """Run the model at batch 2, then with one named dim changed at a time, then on other data of the same
    shapes: an output dim that follows the batch becomes B, one that follows a named input dim takes its name,
    one that changes with the data alone (nms, boolean masks) becomes a dim of its own (``N``, ``N1``...).
    SpecError if the model rejects the spec."""
    named = list(dict.fromkeys(d.name for s in spec.inputs for d in s.shape if isinstance(d, Dim)))
    base = _run_named(module, spec, generate_inputs(spec, batch_size=2, seed=2), name)
    varied: dict[str, list[tuple[str, Any]]] = {}
    for dim in named:
        if dim == BATCH:
            varied[dim] = _run_named(module, spec, generate_inputs(spec, batch_size=3, seed=3), name)
            continue
        example = next(d.example for s in spec.inputs for d in s.shape if isinstance(d, Dim) and d.name == dim)
        bigger = replace(spec, inputs=tuple(replace(s, shape=tuple(
            Dim(d.name, example + 1) if isinstance(d, Dim) and d.name == dim else d for d in s.shape))
            for s in spec.inputs))
        varied[dim] = _run_named(module, spec, generate_inputs(bigger, batch_size=2, seed=4), name)
    other_data = _run_named(module, spec, generate_inputs(spec, batch_size=2, seed=5), name)
    outs = []
    data_dims = 0
    for i, (out_name, a) in enumerate(base):
        shape: list[int | Dim] = []
        for axis, size in enumerate(a.shape):
            follows = [dim for dim in named if dim != BATCH and _size(varied[dim][i][1], axis) != size]
            batch_size = _size(varied[BATCH][i][1], axis) if BATCH in varied else size
            if _size(other_data[i][1], axis) == size and size == 2 and batch_size == 3:
                shape.append(Dim(BATCH))
            elif _size(other_data[i][1], axis) == size and follows:
                shape.append(Dim(follows[0], int(size)))
            elif _size(other_data[i][1], axis) != size or batch_size != size:  # data-dependent, or B times more
                shape.append(Dim("N" if data_dims == 0 else f"N{data_dims}", int(size)))
                data_dims += 1
            else:
                shape.append(int(size))
        outs.append(TensorSpec(out_name, canonical_dtype(str(a.dtype)), tuple(shape)))
    return tuple(outs)


def _size(tensor: Any, axis: int) -> int | None:
    return int(tensor.shape[axis]) if axis < tensor.dim() else None


def _run_named(module: Any, spec: ModelSpec, inputs: Mapping[str, np.ndarray], name: str) -> list[tuple[str, Any]]:
    import torch

    args = [torch.from_numpy(a) for a in inputs.values()]
    try:
        with torch.inference_mode():
            return module.named_outputs(*args)
    except Exception as exc:
        specs = " ".join(str(s) for s in spec.inputs)
        raise SpecError(f"{name} rejected inputs built from the spec {specs}: {one_line(exc)}. "
                        "Check the --input names, dtypes and shapes against the model's forward()") from exc
