"""PyTorch eager: the reference. Saved as a torch.export program and run op by op.

Saving through torch.export (not pickle) keeps the package loadable without the
user's Python code and without unpickling anything.
"""

from __future__ import annotations

from pathlib import Path

from inferforge.backends.base import Artifact, BuildConfig, Runner, artifact_from_dir
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

PROGRAM = "model.pt2"


class EagerBackend(TorchBackend):
    name = "eager"
    accepts = frozenset({SourceKind.TORCH, SourceKind.EXPORTED})
    refusals = {SourceKind.TORCHSCRIPT: "a TorchScript model runs as the torchscript candidate"}

    def configs(self, device: str) -> list[BuildConfig]:
        precisions: tuple[Precision, ...] = (Precision.FP32, Precision.BF16)
        if device == "cuda":  # weights cast; TF32 keeps fp32 weights and uses the tensor cores' TF32 mode
            precisions = (Precision.FP32, Precision.TF32, Precision.FP16, Precision.BF16)
        return [BuildConfig(self.name, p, device) for p in precisions]

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
        return TorchRunner(spec, artifact, load_placed(artifact, spec, PROGRAM))
