"""The whole backend contract: BuildConfig, Artifact, Backend, Runner.

A backend says whether it can build a config here (and if not, why), builds a
config into files on disk, and loads those files into a Runner. ``load`` reads
files only: it never needs the Python model, so packages load without it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from inferforge.data import Dataset
from inferforge.environment import version_of
from inferforge.errors import SpecError
from inferforge.operator_profile import OperatorProfile
from inferforge.source import ModelSource, SourceKind
from inferforge.types import ModelSpec, Precision, check_inputs, numpy_dtype

# Search order bands (Backend.search_order): below PROTECTED_ORDER a candidate is the reference or the portable
# fallback, built first and never skipped by the time budget.
SEARCH_ORDER = {"reference": 0, "fallback": 5, "likely": 10, "default": 30, "compiles": 50, "slow": 80}
PROTECTED_ORDER = 10
# A saved FP32 torch.export program: what backends that keep one store (``keeps_program``) and export converts.
PROGRAM = "model.pt2"


OptionsT = TypeVar("OptionsT", bound="BackendOptions")


@dataclass(frozen=True)
class BackendOptions:
    """Base of every backend's options: a frozen dataclass of typed fields, checked when made.

    A subclass lists what is wrong with its values in ``problems()`` and with a precision in
    ``precision_problems()``; a bad value then fails where the options or the BuildConfig are written
    (SpecError naming every problem), never later as a failed build or an "unavailable" candidate.
    A subclass whose backend can keep chosen layers in FP32 (accuracy-aware INT8) overrides
    ``with_fp32_layers``.
    """

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise SpecError(f"{type(self).__name__}: " + "; ".join(problems))

    def problems(self) -> list[str]:
        return []

    def precision_problems(self, precision: Precision) -> list[str]:
        return []

    @classmethod
    def of(cls: type[OptionsT], config: BuildConfig) -> OptionsT:
        """``config.options`` as this type; SpecError when a config carries another backend's options."""
        if not isinstance(config.options, cls):
            raise SpecError(f"{config.backend} takes {cls.__name__}, not {type(config.options).__name__}")
        return config.options

    def with_fp32_layers(self, layers: tuple[str, ...]) -> BackendOptions | None:
        """These options with ``layers`` (the backend's ``sensitive_layers`` names) left in FP32, or None
        where the backend has no per-layer FP32 retry."""
        return None


@dataclass(frozen=True)
class NoOptions(BackendOptions):
    """Backends without options of their own use this."""


def one_of(name: str, value: object, allowed: Sequence[object]) -> list[str]:
    """The problem of an option outside its allowed values, as ``problems()`` lists it."""
    return [] if value in allowed else [f"{name} {value!r} is not one of {', '.join(map(str, allowed))}"]


@dataclass(frozen=True)
class BuildConfig:
    """What to build. ``key()`` names the candidate in the leaderboard, the cache and the package."""

    backend: str
    precision: Precision = Precision.FP32
    device: str = "cpu"
    options: BackendOptions = NoOptions()  # the backend's own frozen dataclass

    def __post_init__(self) -> None:
        if not isinstance(self.options, BackendOptions):
            raise SpecError(f"{self.backend}: options must be the backend's BackendOptions dataclass, not "
                            f"{type(self.options).__name__}")
        problems = self.options.precision_problems(self.precision)
        if problems:
            raise SpecError(f"{self.backend} {self.precision.value}: " + "; ".join(problems))

    def key(self) -> str:
        parts = [self.backend, self.precision.value]
        defaults = type(self.options)()
        for k, v in sorted(dataclasses.asdict(self.options).items()):
            if v != getattr(defaults, k):
                if isinstance(v, list | tuple):  # e.g. keep_fp32 layer names: the count names the variant
                    v = len(v)
                parts.append(k.replace("_", "-") if v is True else f"{k}-{v}".replace("_", "-").lower())
        if self.device != "cpu":
            parts.append(self.device)
        return "-".join(str(p) for p in parts)

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision.value, "device": self.device,
                "options": dataclasses.asdict(self.options)}


@dataclass(frozen=True)
class Artifact:
    """Files a build wrote (relative to ``directory``), what a host needs to run them, and build details."""

    config: BuildConfig
    directory: Path
    files: tuple[str, ...]
    requires: Mapping[str, str] = field(default_factory=dict)  # e.g. {"package:torch": ">=2.14"}
    details: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"exporter": "dynamo"}
    size_bytes: int = 0  # measured when built, so it survives the build folder

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config.to_json(), "files": list(self.files), "requires": dict(self.requires),
                "details": dict(self.details), "size_bytes": self.size_bytes}


def artifact_from_dir(config: BuildConfig, directory: Path, requires: Mapping[str, str] | None = None,
                      details: Mapping[str, Any] | None = None) -> Artifact:
    """An Artifact listing every file a build left in ``directory`` (exporters add side files)."""
    paths = sorted(p for p in directory.rglob("*") if p.is_file())
    return Artifact(config, directory, tuple(str(p.relative_to(directory)) for p in paths), dict(requires or {}),
                    dict(details or {}), sum(p.stat().st_size for p in paths))


class Runner(ABC):
    """Runs a loaded artifact. Takes and returns numpy arrays or torch tensors (the caller's kind).

    ``__call__`` checks the inputs against the spec once, here; backends implement
    ``run_native`` on inputs already in their native kind (``native``: "numpy" or "torch").
    """

    native: ClassVar[str] = "torch"

    def __init__(self, spec: ModelSpec, artifact: Artifact) -> None:
        self.spec = spec
        self.artifact = artifact

    @property
    def inputs(self) -> Sequence[Any]:
        return self.spec.inputs

    @property
    def device(self) -> str:
        return self.artifact.config.device

    def synchronize(self) -> None:  # noqa: B027 - a no-op for every runner that computes synchronously
        """Wait for work queued on an asynchronous device (CUDA); timing calls this before reading a clock."""

    @abstractmethod
    def threads(self) -> int:
        """The intra-op threads one call computes with (what ``inferforge profile`` and the tuning report)."""

    def profile_operators(self, inputs: Mapping[str, Any], runs: int, trace_path: Path | None) -> OperatorProfile:
        """The top operators by self time over ``runs`` calls from the runtime's own profiler, with a Chrome
        trace written to ``trace_path``; a runner whose runtime has no profiler wired says so."""
        return OperatorProfile("none", "", (), 0, None, f"no operator profiler is wired for {type(self).__name__} "
                               f"({self.artifact.config.backend}); stage times still hold")

    @property
    def outputs(self) -> Sequence[Any]:
        return self.spec.outputs

    def __call__(self, inputs: Mapping[str, Any] | Any, *more: Any) -> dict[str, Any]:
        """Run once: ``runner({"ids": ..., "mask": ...})``, or the inputs positionally in the spec's order
        (``runner(images)`` for a one-input model). numpy in, numpy out; torch in, torch out."""
        if not isinstance(inputs, Mapping):
            inputs = self._named((inputs, *more))
        elif more:
            raise SpecError("pass the inputs either as one mapping of name -> array or positionally, not both")
        ready = self.fitting_numpy(inputs) if self.native == "numpy" else None
        if ready is not None:  # numpy in, numpy runner, every input already as the spec says
            outputs = self.run_native(ready)
            if all(type(o) is np.ndarray for o in outputs):
                return dict(zip(self._output_names, outputs, strict=True))
            return {n: convert(o, "numpy") for n, o in zip(self._output_names, outputs, strict=True)}
        check_inputs(self.spec.inputs, inputs)
        as_torch = any(type(v).__module__.startswith("torch") for v in inputs.values())
        outputs = self.run_native(self.to_native(inputs))
        return {s.name: convert(o, "torch" if as_torch else "numpy") for s, o in zip(self.spec.outputs, outputs, strict=True)}

    def _named(self, values: tuple[Any, ...]) -> dict[str, Any]:
        names = [s.name for s in self.spec.inputs]
        if len(values) != len(names):
            raise SpecError(f"the model takes {len(names)} input(s) ({', '.join(names)}); {len(values)} were passed "
                            "positionally. Pass them in this order, or as a mapping of name -> array")
        return dict(zip(names, values, strict=True))

    def __repr__(self) -> str:
        def shapes(specs: Sequence[Any]) -> str:
            return ", ".join(f"{s.name}: {s.dtype}[{','.join(map(str, s.shape))}]" for s in specs)

        config = self.artifact.config
        return (f"<{type(self).__name__} {config.key()} ({config.precision.value} on {config.device}, "
                f"{self.threads()} thread{'s' if self.threads() != 1 else ''}) ({shapes(self.spec.inputs)}) -> ({shapes(self.spec.outputs)})>")

    @functools.cached_property
    def _output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.spec.outputs)

    @functools.cached_property
    def _input_plan(self) -> tuple[tuple[str, np.dtype, int, tuple[tuple[int, int], ...], int | None], ...]:
        """Per input: name, numpy dtype, rank, (axis, size) of each static dim, batch axis; made once."""
        return tuple((s.name, numpy_dtype(s.dtype), len(s.shape),
                      tuple((axis, d) for axis, d in enumerate(s.shape) if isinstance(d, int)), s.batch_axis)
                     for s in self.spec.inputs)

    def fitting_numpy(self, inputs: Mapping[str, Any]) -> list[np.ndarray] | None:
        """The inputs in spec order when each is a numpy array of exactly the spec's dtype, rank and static
        dims, all of one batch size; else None, and the full check (which names every problem) runs. A small
        model runs in tens of microseconds, about what the full check and conversions cost."""
        plan = self._input_plan
        if len(inputs) != len(plan):
            return None
        ready = []
        batch = -1
        for name, dtype, rank, static, batch_axis in plan:
            value = inputs.get(name)
            if type(value) is not np.ndarray or value.dtype != dtype or value.ndim != rank:
                return None
            shape = value.shape
            if any(shape[axis] != size for axis, size in static):
                return None
            if batch_axis is not None:
                if batch not in (-1, shape[batch_axis]):
                    return None
                batch = shape[batch_axis]
            ready.append(value)
        return ready

    def to_native(self, inputs: Mapping[str, Any]) -> list[Any]:
        """Inputs in spec order, in this runner's native kind and the spec's dtypes."""
        return [convert(inputs[s.name], self.native, s.dtype) for s in self.spec.inputs]

    @abstractmethod
    def run_native(self, args: list[Any]) -> list[Any]:
        """Run on native inputs in spec order; return outputs in spec order."""


def convert(value: Any, kind: str, dtype: str | None = None) -> Any:
    if kind == "numpy" and isinstance(value, np.ndarray):  # numpy in, numpy runner: torch is never imported
        return value.astype(numpy_dtype(dtype), copy=False) if dtype else value
    import torch

    if kind == "numpy":
        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu().numpy() if value.dtype == torch.bfloat16 else value.detach().cpu().numpy()
        value = np.asarray(value)
        return value.astype(numpy_dtype(dtype), copy=False) if dtype else value
    if not isinstance(value, torch.Tensor):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if dtype is not None and dtype != "bfloat16":
        value = value.to(getattr(torch, dtype))
    return value


class Backend(ABC):
    """One way to build and run a model. Adding a backend is adding one module with one subclass."""

    name: ClassVar[str]
    accepts: ClassVar[frozenset[SourceKind]]
    options_type: ClassVar[type[BackendOptions]] = NoOptions
    devices: ClassVar[frozenset[str]] = frozenset({"cpu"})  # where its artifacts run
    # Why a source kind outside ``accepts`` is refused, where a plainer reason than "does not take" helps.
    refusals: ClassVar[Mapping[SourceKind, str]] = {}
    # Loading its artifact imports and runs the model's own Python code: ``load`` needs the user's consent.
    runs_user_code: ClassVar[bool] = False
    # Its FP32 CPU artifact runs on any CPU with this Python package alone (no compiled code, no ISA tie):
    # every package keeps one such artifact, and a GPU search builds one as the CPU fallback.
    portable: ClassVar[bool] = False
    # What ``inferforge export`` copies from its FP32 CPU artifact as it is: format -> the file holding it. A
    # format is a file a runtime without Python loads ("torchscript": LibTorch, "aoti", "onnx").
    export_formats: ClassVar[Mapping[str, str]] = {}
    # Its artifact keeps the FP32 torch.export program (``PROGRAM``), which export converts to any format.
    keeps_program: ClassVar[bool] = False
    # The Python distributions its builds and loads import (numpy aside). One missing makes the backend
    # unavailable, saying what to install; the contract tests import every one that pyproject.toml declares.
    packages: ClassVar[tuple[str, ...]] = ("torch",)

    def required_packages(self, config: BuildConfig) -> tuple[str, ...]:
        """``packages``, plus what one config needs beyond them (e.g. a quantizer for INT8)."""
        return self.packages

    def missing_packages_reason(self, config: BuildConfig) -> str | None:
        missing = [p for p in self.required_packages(config) if version_of(p) is None]
        if not missing:
            return None
        return (f"{self.name} {config.precision.value} needs {', '.join(missing)}, not installed here "
                f"(pip install {' '.join(missing)})")

    def configs(self, device: str) -> list[BuildConfig]:
        """The candidates this backend proposes for a device (available or not: the search asks)."""
        return [BuildConfig(self.name, Precision.FP32, device, self.options_type())]

    def needs_calibration(self, config: BuildConfig) -> bool:
        """Whether ``build`` reads calibration samples for this config: the search loads them (and warns when
        only generated inputs are at hand) only if some candidate does."""
        return config.precision is Precision.INT8

    def search_order(self, config: BuildConfig) -> int:
        """When the search tries this candidate: lower first. Under a time budget the cheap and likely winners
        go first and the slow builds last (``SEARCH_ORDER``); the reference and the portable fallback come
        before everything (``PROTECTED_ORDER``) and are never skipped."""
        return SEARCH_ORDER["default"]

    def retry_after_failure(self, config: BuildConfig, reason: str) -> BuildConfig | None:
        """Another config worth trying after ``config`` failed with ``reason`` (e.g. autocast where casting
        the weights broke the module), or None."""
        return None

    def thorough_configs(self, device: str) -> list[BuildConfig]:
        """Candidates that take minutes to build and measured no faster on the models tried, proposed only
        with ``--thorough``: a default search should not cost a user minutes for them."""
        return []

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        """None when the config can be built here, else a sentence saying why not."""
        missing = self.missing_packages_reason(config)
        if missing:
            return missing
        if source.kind not in self.accepts:
            return self.refusals.get(source.kind, f"{self.name} does not take {source.kind.value} models")
        if config.device not in self.devices:
            return f"{self.name} builds for {', '.join(sorted(self.devices))} in this version, not {config.device}"
        return None

    @abstractmethod
    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        """Write the artifact's files into ``out_dir`` (which exists and is empty). Raises on failure.

        ``calibration`` holds the samples static INT8 reads (see calibration.py); other builds ignore it.
        """

    @abstractmethod
    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        """Read an artifact's files into a Runner using ``threads`` intra-op threads."""

    def sensitive_layers(self, source: ModelSource, config: BuildConfig, artifact: Artifact,
                         calibration: Dataset) -> list[str]:
        """For an INT8 build outside the accuracy budget: the quantized layers that hurt accuracy most,
        worst first, by the names its options' ``keep_fp32`` accepts. The search rebuilds with the
        worst ones kept in FP32, step by step. The default offers none (no mixed-precision retry)."""
        return []

    def options_from_json(self, data: Mapping[str, Any]) -> BackendOptions:
        known = {f.name for f in dataclasses.fields(self.options_type)}
        return self.options_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
