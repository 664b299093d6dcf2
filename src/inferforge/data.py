"""Validation data: the user's (a folder of .npy/.npz, or a dataset factory) or generated from the spec.

A dataset is a dict of arrays whose first axis counts samples, plus optional labels.
Generated data is marked as such: it checks numerics, not task accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.errors import DataError, InferforgeError, one_line
from inferforge.types import ModelSpec, TensorSpec, numpy_dtype
from inferforge.user_code import resolve_callable

LABELS = "labels"
VALIDATION_DATA = "validation data"  # how messages name this data; the calibration loader passes its own words


@dataclass(frozen=True)
class Dataset:
    """Samples along axis 0 of every array (the spec's batch axis), and optional labels."""

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None
    origin: str  # where it came from, for the report

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def generated(self) -> bool:
        return self.origin.startswith("generated")

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.inputs.items()}

    def take(self, count: int, start: int = 0) -> dict[str, np.ndarray]:
        """``count`` samples from ``start``, wrapping around when the dataset is smaller."""
        index = (np.arange(count) + start) % len(self)
        return {k: v[index] for k, v in self.inputs.items()}


def generate_inputs(spec: ModelSpec, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs that fit the spec: N(0,1) floats, integers uniform in the value range."""
    rng = np.random.default_rng(seed)
    return {s.name: _random_tensor(s, batch_size, rng) for s in spec.inputs}


def _random_tensor(s: TensorSpec, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    shape = s.concrete_shape(batch_size)
    dtype = numpy_dtype(s.dtype)
    if s.is_float:
        return rng.standard_normal(shape).astype(dtype)
    if s.dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    lo, hi = s.value_range or (0, 1 if "mask" in s.name else 100)
    return rng.integers(int(lo), int(hi) + 1, shape).astype(dtype)


def generated_dataset(spec: ModelSpec, samples: int = 64, seed: int = 1) -> Dataset:
    return Dataset(generate_inputs(spec, samples, seed), None,
                   f"generated from the spec ({samples} random samples; checks numerics, not task accuracy)")


def load_dataset(ref: str, spec: ModelSpec, what: str = VALIDATION_DATA) -> Dataset:
    """A folder of .npy/.npz, or ``file.py:fn`` / ``module:fn`` returning arrays (+ 'labels').

    ``what`` names the data in every message ("validation data", "calibration data"), so a user who gave
    both knows which one to fix.
    """
    check_data_ref(ref, what)
    path = Path(ref)
    if path.is_dir():
        arrays = _read_folder(path, what)
        origin = f"folder {path}"
    elif path.exists() and path.suffix == ".npz":
        arrays = dict(np.load(path, allow_pickle=False))
        origin = f"file {path}"
    elif ":" in ref:
        arrays = _call_data_factory(ref)
        origin = f"factory {ref}"
    else:
        raise DataError(f"{what} {ref!r} is neither a folder, an .npz file, nor 'file.py:function'")
    return _check(arrays, spec, origin, what)


def check_data_ref(ref: str, what: str = VALIDATION_DATA) -> None:
    """Refuse a reference to data that is not there, before anything slow (loading the model) runs.

    A reference without ':' is a plain path and must exist; 'file.py:function' needs its file. A
    'package.module:function' is left to the import, which says what failed.
    """
    if Path(ref).exists():
        return
    module_ref, sep, _ = ref.rpartition(":")
    if not sep:
        raise DataError(f"{what} {ref} does not exist: give a folder of .npy/.npz, an .npz file, "
                        "or 'file.py:function'")
    if module_ref.endswith(".py") and not Path(module_ref).is_file():
        raise DataError(f"{what} {ref!r}: file {module_ref} does not exist: give the path of the .py file "
                        "that defines the function")


def _read_folder(path: Path, what: str = VALIDATION_DATA) -> dict[str, np.ndarray]:
    """``<input>.npy`` files (samples on axis 0), and/or .npz files whose arrays are concatenated."""
    arrays: dict[str, list[np.ndarray]] = {}
    files = sorted(path.glob("*.npy")) + sorted(path.glob("*.npz"))
    if not files:
        raise DataError(f"{what} folder {path} holds no .npy or .npz files: save one <input>.npy per input "
                        "(samples on axis 0), or .npz files holding those arrays")
    for file in files:
        try:
            loaded = {file.stem: np.load(file, allow_pickle=False)} if file.suffix == ".npy" else \
                dict(np.load(file, allow_pickle=False))
        except Exception as exc:
            raise DataError(f"cannot read {file}: {one_line(exc)} (pickled arrays are refused)") from exc
        for key, value in loaded.items():
            arrays.setdefault(key, []).append(value)
    return {k: np.concatenate(v) if len(v) > 1 else v[0] for k, v in arrays.items()}


def _call_data_factory(ref: str) -> dict[str, np.ndarray]:
    fn = resolve_callable(ref, "dataset factory")
    try:
        made: Any = fn()
    except InferforgeError:
        raise
    except Exception as exc:
        raise DataError(f"dataset factory {ref!r} raised {one_line(exc)}") from exc
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], Mapping):
        made = {**made[0], LABELS: made[1]}
    if not isinstance(made, Mapping):
        raise DataError(f"dataset factory {ref!r} returned {type(made).__name__}; expected a dict of arrays "
                        "(one per input, samples on axis 0, optional 'labels') or (inputs_dict, labels)")
    return {k: _to_numpy(v) for k, v in made.items()}


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _check(arrays: dict[str, np.ndarray], spec: ModelSpec, origin: str, what: str = VALIDATION_DATA) -> Dataset:
    """Every input present, dtype castable, one sample count, every value finite; one DataError listing all
    problems, naming the data as ``what``."""
    labels = arrays.pop(LABELS, None)
    problems = [f"no array for input {s.name!r}" for s in spec.inputs if s.name not in arrays]
    extra = set(arrays) - set(spec.input_names)
    if extra:
        problems.append(f"arrays {sorted(extra)} match no input (inputs: {spec.input_names}; labels go in 'labels')")
    inputs: dict[str, np.ndarray] = {}
    for s in spec.inputs:
        if s.name not in arrays:
            continue
        value = arrays[s.name]
        if value.ndim != len(s.shape):
            problems.append(f"{s.name}: array shape {list(value.shape)} does not fit {s} (samples on axis 0)")
            continue
        want = numpy_dtype(s.dtype)
        if value.dtype != want:
            if s.is_float != np.issubdtype(value.dtype, np.floating):
                problems.append(f"{s.name}: array dtype {value.dtype} cannot stand for {s.dtype}")
                continue
            value = value.astype(want)
        for axis, dim in enumerate(s.shape):
            if isinstance(dim, int) and axis != s.batch_axis and value.shape[axis] != dim:
                problems.append(f"{s.name}: dimension {axis} is {value.shape[axis]}, the spec says {dim} ({s})")
        inputs[s.name] = np.ascontiguousarray(value)
    counts = {len(v) for v in inputs.values()} | ({len(labels)} if labels is not None else set())
    if len(counts) > 1:
        problems.append(f"arrays disagree on the number of samples: {sorted(counts)}")
    if inputs and min(len(v) for v in inputs.values()) == 0:
        problems.append("the data holds no samples")
    if problems:
        raise DataError(f"{what} from {origin} does not fit the model: " + "; ".join(problems))
    check_finite(inputs, origin, what)
    return Dataset(inputs, None if labels is None else np.asarray(labels).reshape(-1), origin)


NONFINITE_SHOWN = 5  # sample indices quoted per input


def check_finite(inputs: Mapping[str, np.ndarray], origin: str, what: str = VALIDATION_DATA) -> None:
    """Refuse samples holding NaN or Inf before the search: every candidate would be judged on them (NaN
    outputs everywhere, cosines of NaN) and rejected for the data's fault, not its own."""
    problems = []
    for name, value in inputs.items():
        if not np.issubdtype(value.dtype, np.floating) or value.size == 0:
            continue
        per_sample = value.reshape(len(value), -1) if value.ndim else value.reshape(1, -1)
        bad = np.flatnonzero(~np.isfinite(per_sample).all(axis=1))
        if bad.size:
            first = ", ".join(str(i) for i in bad[:NONFINITE_SHOWN]) + (", ..." if bad.size > NONFINITE_SHOWN else "")
            problems.append(f"input {name!r}: {bad.size} of {len(per_sample)} samples contain NaN or Inf "
                            f"(samples {first})")
    if problems:
        raise DataError(f"{what} from {origin} holds NaN or Inf: " + "; ".join(problems)
                        + ": remove or repair those samples")
