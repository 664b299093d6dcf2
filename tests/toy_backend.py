"""A backend added the way the contract promises: this one module, plus one line in the registry.

It saves the model's torch.export program and runs it back with ``ExportedProgram.module()``; the
contract tests register it (``backends._MODULES``) and run the suite, a search, a package and a load on it.
"""

from __future__ import annotations

from pathlib import Path

from inferforge.backends.base import PROGRAM, Artifact, Backend, BuildConfig, Runner, artifact_from_dir
from inferforge.backends.torch_common import TorchRunner, load_program, set_torch_threads
from inferforge.data import Dataset
from inferforge.environment import torch_requirement
from inferforge.source import ModelSource, SourceKind
from inferforge.types import ModelSpec


class ToyBackend(Backend):
    name = "toy"
    accepts = frozenset({SourceKind.TORCH, SourceKind.EXPORTED})

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        import torch

        torch.export.save(source.exported_program(), out_dir / PROGRAM)
        return artifact_from_dir(config, out_dir, torch_requirement())

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        set_torch_threads(threads)
        return TorchRunner(spec, artifact, load_program(artifact.directory / PROGRAM, artifact.config.device))
