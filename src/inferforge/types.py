"""The vocabulary: precisions, tensor specs and the model's input/output spec.

A spec is written as ``name:dtype[dims]`` with an optional value range for
integer inputs, e.g. ``input_ids:int64[B,128]:0..30521``. A dimension is a number
(static), ``B`` (the batch dimension) or another name, optionally with the size
used for generated data: ``tokens:int64[B,S=128]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from inferforge.errors import SpecError

BATCH = "B"

# dtype name -> numpy dtype name; bfloat16 has no numpy dtype and travels as float32.
DTYPES: dict[str, str] = {
    "float32": "float32",
    "float64": "float64",
    "float16": "float16",
    "bfloat16": "float32",
    "int64": "int64",
    "int32": "int32",
    "int16": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}
_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16",
            "bf16": "bfloat16", "long": "int64", "int": "int32", "double": "float64"}


class Precision(StrEnum):
    """Numeric precision a candidate computes in."""

    FP32 = "fp32"
    TF32 = "tf32"  # fp32 storage, matrix products on NVIDIA tensor cores with 10-bit mantissas
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"  # e4m3 weights and activations with per-row scales, on Ada/Hopper tensor cores
    INT8 = "int8"  # weights (and, when calibrated, activations) in 8 bits; the config's options say how


@dataclass(frozen=True)
class Dim:
    """A dynamic dimension: its name and the size used when data is generated."""

    name: str
    example: int = 1

    def __str__(self) -> str:
        return self.name if self.name == BATCH else f"{self.name}={self.example}"


Shape = tuple[int | Dim, ...]


def canonical_dtype(name: str) -> str:
    key = _ALIASES.get(name.lower(), name.lower()).removeprefix("torch.")
    if key not in DTYPES:
        raise SpecError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return key


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: dtype, shape (static ints or dynamic Dims), value range for ints."""

    name: str
    dtype: str
    shape: Shape
    value_range: tuple[float, float] | None = None

    @property
    def batch_axis(self) -> int | None:
        for axis, dim in enumerate(self.shape):
            if isinstance(dim, Dim) and dim.name == BATCH:
                return axis
        return None

    @property
    def is_float(self) -> bool:
        return self.dtype in ("float32", "float64", "float16", "bfloat16")

    def concrete_shape(self, batch_size: int) -> tuple[int, ...]:
        """The shape with B set to batch_size and other dims at their example size."""
        return tuple(
            d if isinstance(d, int) else (batch_size if d.name == BATCH else d.example) for d in self.shape
        )

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        text = f"{self.name}:{self.dtype}[{dims}]"
        if self.value_range is not None:
            lo, hi = self.value_range
            text += f":{_num(lo)}..{_num(hi)}"
        return text

    @classmethod
    def parse(cls, text: str) -> TensorSpec:
        """Parse ``name:dtype[d0,d1,...][:lo..hi]``; raises SpecError naming the bad part."""
        match = _SPEC_RE.fullmatch(text.strip())
        if not match:
            raise SpecError(
                f"cannot parse input spec {text!r}: expected name:dtype[dims][:lo..hi], "
                "e.g. input_ids:int64[B,128]:0..30521 or image:float32[B,3,224,224]"
            )
        dims = [d.strip() for d in match["dims"].split(",")] if match["dims"].strip() else []
        shape = tuple(_parse_dim(d, text) for d in dims)
        value_range = None
        if match["lo"] is not None:
            value_range = (float(match["lo"]), float(match["hi"]))
            if value_range[0] > value_range[1]:
                raise SpecError(f"input spec {text!r}: value range is empty (low > high)")
        return cls(match["name"], canonical_dtype(match["dtype"]), shape, value_range)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": [d if isinstance(d, int) else str(d) for d in self.shape],
                "value_range": list(self.value_range) if self.value_range else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        shape = tuple(_parse_dim(str(d), data["name"]) for d in data["shape"])
        vr = data.get("value_range")
        return cls(data["name"], data["dtype"], shape, (float(vr[0]), float(vr[1])) if vr else None)


_SPEC_RE = re.compile(
    r"(?P<name>[A-Za-z_][\w.\-]*):(?P<dtype>[A-Za-z0-9_.]+)\[(?P<dims>[^\]]*)\]"
    r"(?::(?P<lo>-?[\d.e+]+)\.\.(?P<hi>-?[\d.e+]+))?"
)


def _parse_dim(token: str, context: str) -> int | Dim:
    if token.lstrip("-").isdigit():
        value = int(token)
        if value < 0:
            raise SpecError(f"input spec {context!r}: dimension {token} is negative")
        return value
    name, _, example = token.partition("=")
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise SpecError(f"input spec {context!r}: dimension {token!r} is neither a number nor a name")
    if name == BATCH:
        return Dim(BATCH)
    if not example.isdigit():
        raise SpecError(
            f"input spec {context!r}: dynamic dimension {name!r} needs the size to use for generated data, "
            f"e.g. {name}=128"
        )
    return Dim(name, int(example))


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class ModelSpec:
    """The model's inputs (in call order) and outputs (in flattened order)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = ()

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelSpec:
        return cls(tuple(TensorSpec.from_json(s) for s in data["inputs"]),
                   tuple(TensorSpec.from_json(s) for s in data.get("outputs", [])))


# spec dtype -> the Open Inference Protocol (KServe v2) datatype a client sends (bfloat16 travels as FP32).
SPEC_DATATYPE = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "bfloat16": "FP32", "int64": "INT64",
                 "int32": "INT32", "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}

@dataclass(frozen=True)
class TensorMeta:
    """A served tensor as metadata shows it: -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    value_range: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_spec(cls, spec: TensorSpec) -> TensorMeta:
        shape = tuple(d if isinstance(d, int) else -1 for d in spec.shape)
        return cls(spec.name, SPEC_DATATYPE[spec.dtype], shape, spec.value_range)


def numpy_dtype(dtype: str) -> np.dtype:
    return np.dtype(DTYPES[dtype])


def torch_dtype(dtype: str) -> Any:
    import torch

    return getattr(torch, dtype)


def name_problems(expected: Iterable[str], given: Iterable[str]) -> list[str]:
    """Missing and unknown input names, each listed, for one error message that says everything."""
    want, got = set(expected), set(given)
    problems = []
    if want - got:
        problems.append(f"missing input(s) {', '.join(sorted(want - got))}")
    if got - want:
        problems.append(f"unknown input(s) {', '.join(sorted(got - want))} (the model takes {', '.join(sorted(want))})")
    return problems


def check_inputs(spec: Sequence[TensorSpec | TensorMeta], inputs: Mapping[str, Any], *,
                 max_batch_size: int | None = None, client_request: bool = False) -> int:
    """Check inputs against the model's spec; return the batch size (rows; 1 when no input has a batch axis).

    The one input checker: the runner passes the package's ``TensorSpec``s, the server the
    ``TensorMeta``s its clients see (an adapter's BYTES input included), and each problem is named
    in that vocabulary (``dtype float64`` for the one, ``datatype FP64`` for the other). Always
    checked: names, dtype (a bfloat16 input takes float32, as bf16 travels), rank, static dims, and
    one batch size across the inputs (a TensorSpec's ``B`` axis; a TensorMeta's dimension 0).
    ``client_request`` adds what a server promises its clients and a runner leaves to the model:
    no empty dynamic dimension, integer and bool values inside the declared range (a range inferred
    from example data is no contract for a runner, and an empty dimension may mean something to
    the model). ``max_batch_size`` caps the rows. Raises one SpecError listing every problem.
    """
    problems = name_problems([s.name for s in spec], inputs)
    batch_sizes: set[int] = set()
    for s in spec:
        if s.name not in inputs:
            continue
        value = inputs[s.name]
        shape = tuple(value.shape)
        dtype = str(value.dtype).removeprefix("torch.")
        if isinstance(s, TensorMeta):  # the wire's vocabulary: -1 is a dynamic dim, rows are dimension 0
            kind = getattr(value.dtype, "kind", "")
            got = "BYTES" if kind and kind in "OSU" else SPEC_DATATYPE.get(dtype, dtype.upper())
            want, word, shown = s.datatype, "datatype", f"{list(s.shape)} (-1 = any size)"
            dims: tuple[int | None, ...] = tuple(d if d >= 0 else None for d in s.shape)
            batch_axis = 0 if s.shape else None
            fits = got == want
            integral = want not in ("FP16", "FP32", "FP64", "BF16", "BYTES")
        else:
            got, want, word, shown = dtype, s.dtype, "dtype", str(s)
            dims = tuple(d if isinstance(d, int) else None for d in s.shape)
            batch_axis = s.batch_axis
            fits = got == want or (want == "bfloat16" and got == "float32")
            integral = not s.is_float
        if not fits:
            problems.append(f"input {s.name!r}: {word} {got}, expected {want}")
        if len(shape) != len(dims):
            problems.append(f"input {s.name!r}: shape {list(shape)} has rank {len(shape)}, expected {shown}")
            continue
        for axis, (size, fixed) in enumerate(zip(shape, dims, strict=True)):
            if fixed is not None and size != fixed:
                problems.append(f"input {s.name!r}: dimension {axis} is {size}, expected {fixed} ({shown})")
            elif fixed is None and size == 0 and client_request:
                problems.append(f"input {s.name!r}: dimension {axis} is empty")
        if batch_axis is not None:
            batch_sizes.add(shape[batch_axis])
        if client_request and fits and integral and s.value_range is not None and value.size:
            lo, hi = s.value_range
            if value.min() < lo or value.max() > hi:
                problems.append(f"input {s.name!r}: values must lie in {lo:g}..{hi:g}, got "
                                f"{value.min()}..{value.max()}")
    if len(batch_sizes) > 1:
        problems.append(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    batch = batch_sizes.pop() if len(batch_sizes) == 1 else 1
    if not problems and max_batch_size is not None and batch > max_batch_size:
        problems.append(f"batch of {batch} rows is above this model's max_batch_size {max_batch_size}: "
                        "split the request")
    if problems:
        raise SpecError("inputs do not fit the model's spec: " + "; ".join(problems))
    return batch
