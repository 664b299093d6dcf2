"""PyTorch eager: the reference. Saved as a torch.export program and run op by op.

Saving through torch.export (not pickle) keeps the package loadable without the
user's Python code and without unpickling anything.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from inferforge.backends.base import (
    PROGRAM,
    SEARCH_ORDER,
    Artifact,
    BackendOptions,
    BuildConfig,
    Runner,
    artifact_from_dir,
)
from inferforge.backends.torch_common import (
    TorchBackend,
    TorchRunner,
    device_requirement,
    load_placed,
    set_torch_threads,
)
from inferforge.data import Dataset
from inferforge.environment import torch_requirement
from inferforge.source import ModelSource, SourceKind
from inferforge.types import ModelSpec, Precision

# A failure this names is a module that builds its own FP32 tensors beside cast weights (an RNN's hidden
# state, an FFT's buffer): the same precision under torch.autocast, weights left FP32, may still work.
_DTYPE_CLASH = ("dtype", "scalar type", "same type", "expected both", "Half", "BFloat16")


@dataclass(frozen=True)
class EagerOptions(BackendOptions):
    """``autocast``: keep FP32 weights and run FP16/BF16 under torch.autocast instead of casting the module."""

    autocast: bool = False


class EagerBackend(TorchBackend):
    name = "eager"
    accepts = frozenset({SourceKind.TORCH, SourceKind.EXPORTED})
    refusals = {SourceKind.TORCHSCRIPT: "a TorchScript model runs as the torchscript candidate"}
    portable = True
    keeps_program = True
    options_type = EagerOptions

    def retry_after_failure(self, config: BuildConfig, reason: str) -> BuildConfig | None:
        if (config.precision in (Precision.FP16, Precision.BF16) and not getattr(config.options, "autocast", False)
                and any(word in reason for word in _DTYPE_CLASH)):
            return replace(config, options=EagerOptions(autocast=True))
        return None

    def search_order(self, config: BuildConfig) -> int:
        if config.precision is Precision.FP32:
            return SEARCH_ORDER["reference"]  # the reference on the target device, and the CPU fallback
        return SEARCH_ORDER["likely"] if config.device == "cuda" else SEARCH_ORDER["default"]

    def configs(self, device: str) -> list[BuildConfig]:
        precisions: tuple[Precision, ...] = (Precision.FP32, Precision.BF16)
        if device == "cuda":  # weights cast; TF32 keeps fp32 weights and uses the tensor cores' TF32 mode
            precisions = (Precision.FP32, Precision.TF32, Precision.FP16, Precision.BF16)
        return [BuildConfig(self.name, p, device, EagerOptions()) for p in precisions]

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        import torch

        torch.export.save(source.exported_program(), str(out_dir / PROGRAM))
        requires = {**torch_requirement(), **device_requirement(config)}
        if config.precision is Precision.BF16 and config.device == "cpu":
            requires["cpu_flag:avx512_bf16"] = "yes"
        return artifact_from_dir(config, out_dir, requires, {"format": "torch.export"})

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        set_torch_threads(threads)
        if not getattr(artifact.config.options, "autocast", False):  # a bare BuildConfig carries NoOptions
            return TorchRunner(spec, artifact, load_placed(artifact, spec, PROGRAM))
        import torch

        config = replace(artifact.config, precision=Precision.FP32)  # placed with its FP32 weights
        module = load_placed(replace(artifact, config=config), spec, PROGRAM)
        dtype = torch.float16 if artifact.config.precision is Precision.FP16 else torch.bfloat16

        def autocast(*args: Any) -> Any:
            with torch.autocast(device_type=artifact.config.device, dtype=dtype):
                return module(*args)

        return TorchRunner(spec, artifact, autocast, cast_inputs=False)
