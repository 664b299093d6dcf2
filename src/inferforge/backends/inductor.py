"""torch.compile with Inductor, shipped with its compile cache.

The artifact is the torch.export program plus Inductor's portable cache
("mega-cache"): ``load`` recompiles from that cache instead of from scratch, so a
package starts in seconds on a machine with the same torch and CPU family, and
still works (compiling anew, slower to start) elsewhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferforge.backends.base import Artifact, BuildConfig, Runner, artifact_from_dir
from inferforge.backends.torch_common import TorchBackend, TorchRunner, set_torch_threads
from inferforge.data import Dataset, generate_inputs
from inferforge.environment import torch_requirement
from inferforge.source import ModelSource, SourceKind
from inferforge.types import ModelSpec, Precision

PROGRAM = "model.pt2"
CACHE = "compile_cache.bin"
# Batch 1 compiles a static graph; batch 2 makes the batch dimension dynamic, covering every size above.
_WARM_BATCHES = (1, 2)


@dataclass(frozen=True)
class InductorOptions:
    """``freezing`` folds weights into the graph as constants: faster on CPU, slower to compile."""

    freezing: bool = False


class InductorBackend(TorchBackend):
    name = "inductor"
    accepts = frozenset({SourceKind.TORCH, SourceKind.EXPORTED})
    options_type = InductorOptions
    refusals = {SourceKind.TORCHSCRIPT: "torch.compile cannot trace a TorchScript module"}

    def configs(self, device: str) -> list[BuildConfig]:
        return [BuildConfig(self.name, Precision.FP32, device, InductorOptions(freezing=f)) for f in (False, True)]

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        import torch

        torch.export.save(source.exported_program(), str(out_dir / PROGRAM))
        _clear_cache_recording()
        # Compile exactly what load() will compile, so the recorded cache entries match there.
        compiled = _compile(torch.export.load(str(out_dir / PROGRAM)).module(), config.options)
        started = time.perf_counter()
        _warm(compiled, source.spec)
        saved = torch.compiler.save_cache_artifacts()
        details: dict[str, Any] = {"format": "torch.export + inductor cache",
                                   "warm_compile_seconds": round(time.perf_counter() - started, 2)}
        if saved is not None:
            (out_dir / CACHE).write_bytes(saved[0])
        else:
            details["cache"] = "torch recorded no cache artifacts; load will compile from scratch"
        requires = {**torch_requirement(), "machine": _machine()}
        return artifact_from_dir(config, out_dir, requires, details)

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        import torch

        set_torch_threads(threads)
        cache = artifact.directory / CACHE
        if cache.exists():
            torch.compiler.load_cache_artifacts(cache.read_bytes())
        compiled = _compile(torch.export.load(str(artifact.directory / PROGRAM)).module(), artifact.config.options)
        _warm(compiled, spec)
        return TorchRunner(spec, artifact, compiled)


def _compile(module: Any, options: InductorOptions) -> Any:
    import logging

    import torch

    # On a CPU-only host torch logs a CUDA_HOME notice at the first compile; it is noise here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    return torch.compile(module, backend="inductor", options={"freezing": options.freezing})


def _warm(compiled: Any, spec: ModelSpec) -> None:
    import torch

    with torch.inference_mode():
        for batch in _WARM_BATCHES:
            compiled(*[torch.from_numpy(a) for a in generate_inputs(spec, batch).values()])


def _clear_cache_recording() -> None:
    """Start the cache recording afresh so a package carries only this model's entries."""
    try:
        from torch.compiler._cache import CacheArtifactManager

        CacheArtifactManager.clear()
    except (ImportError, AttributeError):
        pass


def _machine() -> str:
    import platform

    return platform.machine()
