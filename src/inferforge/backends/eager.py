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
    cast_module,
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
        return [BuildConfig(self.name, p, device) for p in (Precision.FP32, Precision.BF16)]

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        import torch

        torch.export.save(source.exported_program(), str(out_dir / PROGRAM))
        requires = torch_requirement()
        if config.precision is Precision.BF16:
            requires["cpu_flag:avx512_bf16"] = "yes"
        return artifact_from_dir(config, out_dir, requires, {"format": "torch.export"})

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        import torch

        set_torch_threads(threads)
        module = torch.export.load(str(artifact.directory / PROGRAM)).module()
        return TorchRunner(spec, artifact, cast_module(module, artifact.config.precision))
