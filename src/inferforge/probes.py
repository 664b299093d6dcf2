"""Inputs the user did not give: every candidate must match eager on them too.

The validation data may reach one side of a data-dependent branch only, and one batch
size, one length. A traced artifact (ONNX, OpenVINO, a TorchScript trace) freezes the
branch its example took and can freeze a length; on the user's data it then agrees
perfectly and is wrong elsewhere. So the search makes its own probes: other batch sizes,
each dynamic dim at other sizes, the data's float inputs negated and scaled, integer
inputs at both ends of their range. The reference (eager) runs each once; a probe the
reference itself cannot run, or answers with NaN, is dropped. A candidate whose error on
a probe is far beyond what its precision explains is rejected, naming the probe. Quantized
candidates are held to the probes made of the user's own samples (other batch sizes and
lengths): values the data does not hold measure their saturation, not a wrong branch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from inferforge.data import Dataset, generate_inputs
from inferforge.errors import one_line
from inferforge.traffic import Traffic
from inferforge.types import BATCH, Dim, ModelSpec, Precision

PROBE_BATCHES = (1, 3, 7)
DATA_SAMPLES = 4  # samples of the user's data each data probe takes
FLOAT_VARIANTS = (("negated", -1.0), ("scaled x4", 4.0), ("scaled x0.25", 0.25))
# Relative L2 error (|got - ref| / |ref|) a candidate may show on a probe, by precision: far above rounding,
# far below a wrong branch or a frozen shape (which give errors of order 1).
PROBE_TOLERANCE = {Precision.FP32: 1e-3, Precision.TF32: 1e-2, Precision.BF16: 6e-2, Precision.FP16: 3e-2,
                   Precision.FP8: 0.5, Precision.INT8: 0.5}
# Quantized candidates fix their activation ranges from the data (static INT8) or the weights' scale: inputs
# moved outside the data's range (negated, scaled) measure saturation, not a wrong branch, so those probes
# judge only the candidates that compute in floating point.
QUANTIZED = frozenset({Precision.INT8, Precision.FP8})
VALIDATION_ERROR_FACTOR = 4.0  # or this many times the candidate's own error on the user's data, if larger


@dataclass(frozen=True)
class Probe:
    name: str  # what it varies, for the rejection message
    inputs: Mapping[str, np.ndarray]
    reference: Mapping[str, np.ndarray]  # eager's outputs
    in_data_range: bool = True  # False: values the user's data does not hold (QUANTIZED candidates skip it)


def make_probes(spec: ModelSpec, dataset: Dataset, reference: Callable[[dict[str, np.ndarray]], dict[str, Any]],
                dim_ranges: Mapping[str, tuple[int, int]] | None = None, traffic: Traffic | None = None) -> list[Probe]:
    """Build the probe inputs and run the reference on them; drop those it cannot answer. With ``traffic``
    (the data's own shapes, which the candidates are timed on) a sample and a batch at their own lengths too."""
    in_range: list[tuple[str, dict[str, np.ndarray]]] = []  # the user's samples, at other batch sizes and lengths
    if traffic is not None:
        in_range += [("the shortest timed sample at its own length", min(traffic.feeds(1), key=_size)),
                     ("a timed batch of 3 at its own lengths", traffic.feeds(3)[0])]
    moved: list[tuple[str, dict[str, np.ndarray]]] = []  # values the data does not hold
    for i, batch in enumerate(PROBE_BATCHES):
        in_range.append((f"data batch {batch}", dataset.take(batch, start=i * 5)))
        moved.append((f"generated batch {batch}", generate_inputs(spec, batch, seed=900 + i)))
    sample = dataset.take(min(DATA_SAMPLES, len(dataset)))
    for dim, sizes in _other_dim_sizes(spec, dim_ranges or {}).items():
        for size in sizes:
            in_range.append((f"the data at {dim}={size}", _resized(spec, sample, dim, size)))
            moved.append((f"generated {dim}={size} (batch 2)",
                          generate_inputs(_with_example(spec, dim, size), 2, seed=950 + size)))
    if any(s.is_float for s in spec.inputs):
        for label, factor in FLOAT_VARIANTS:
            moved.append((f"the data's float inputs {label}", {
                s.name: (sample[s.name] * factor).astype(sample[s.name].dtype) if s.is_float else sample[s.name]
                for s in spec.inputs}))
    rng = np.random.default_rng(990)
    for s in spec.inputs:
        if not s.is_float and s.dtype != "bool" and s.value_range is not None:
            for end, value in (("lowest", s.value_range[0]), ("highest", s.value_range[1])):
                # Half the values at the end of the range, the rest as generated: an index at its limit,
                # without an input made wholly of it (an all-zero attention mask is no sentence).
                ends = dict(generate_inputs(spec, 2, seed=990))
                ends[s.name] = np.where(rng.random(ends[s.name].shape) < 0.5, int(value), ends[s.name]).astype(
                    ends[s.name].dtype)
                moved.append((f"{s.name} with half its values at its {end} value {int(value)}", ends))
    candidates = [(name, inputs, True) for name, inputs in in_range] + [(n, i, False) for n, i in moved]
    probes = []
    for name, inputs, in_data_range in candidates:
        try:
            outputs = {k: _numpy(v) for k, v in reference(inputs).items()}
        except Exception:  # eager itself refuses this input: nothing to hold a candidate to
            continue
        if all(np.all(np.isfinite(v)) for v in outputs.values() if v.dtype.kind == "f"):
            probes.append(Probe(name, inputs, outputs, in_data_range))
    return probes


def probe_failure(probes: list[Probe], run: Callable[[dict[str, np.ndarray]], Mapping[str, Any]],
                  precision: Precision, validation_error: float) -> str | None:
    """The first probe on which the candidate fails or strays, as a sentence; None when it matches on all."""
    tolerance = max(PROBE_TOLERANCE.get(precision, 0.5), VALIDATION_ERROR_FACTOR * validation_error)
    for probe in probes:
        if precision in QUANTIZED and not probe.in_data_range:
            continue
        try:
            got = run(dict(probe.inputs))
        except Exception as exc:
            return f"fails on probe input '{probe.name}' where eager runs: {one_line(exc, 160)}"
        for name, want in probe.reference.items():
            have = _numpy(got[name])
            if have.shape != want.shape:
                return (f"output {name} has shape {list(have.shape)} instead of eager's {list(want.shape)} on "
                        f"probe input '{probe.name}'")
            error = relative_error(want, have)
            if not error <= tolerance:  # NaN fails too
                return (f"output {name} differs from eager by {error:.3g} (relative L2; allowed {tolerance:.2g}) "
                        f"on probe input '{probe.name}': a branch or shape the validation data did not reach?")
    return None


def _size(inputs: Mapping[str, np.ndarray]) -> int:
    return sum(v.size for v in inputs.values())


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """|candidate - reference| / |reference| over the whole tensor (L2); absolute where the reference is ~0."""
    ref = reference.astype(np.float64).ravel()
    diff = np.linalg.norm(candidate.astype(np.float64).ravel() - ref)
    norm = np.linalg.norm(ref)
    return float(diff / norm) if norm > 1e-30 else float(diff)


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().float().cpu().numpy()
    return np.asarray(value)


def _other_dim_sizes(spec: ModelSpec, ranges: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, ...]]:
    """Each named non-batch dim at a smaller and a larger size than its example, inside its range."""
    sizes = {}
    for s in spec.inputs:
        for d in s.shape:
            if isinstance(d, Dim) and d.name != BATCH and d.name not in sizes:
                lo, hi = ranges.get(d.name, (1, 1 << 16))
                picks = (max(lo, 2, d.example // 2 - 1), min(hi, 2 * d.example + 3))
                sizes[d.name] = tuple(dict.fromkeys(p for p in picks if p != d.example))
    return sizes


def _resized(spec: ModelSpec, sample: Mapping[str, np.ndarray], dim: str, size: int) -> dict[str, np.ndarray]:
    """The data's samples with every axis named ``dim`` cut or cyclically extended to ``size``."""
    from inferforge.spec_inference import resize_axis

    out = {}
    for s in spec.inputs:
        value = sample[s.name]
        for axis, d in enumerate(s.shape):
            if isinstance(d, Dim) and d.name == dim:
                value = resize_axis(value, axis, size)
        out[s.name] = np.ascontiguousarray(value)
    return out


def _with_example(spec: ModelSpec, dim: str, size: int) -> ModelSpec:
    return replace(spec, inputs=tuple(replace(s, shape=tuple(
        Dim(d.name, size) if isinstance(d, Dim) and d.name == dim else d for d in s.shape)) for s in spec.inputs))
