"""torch.compile with Inductor, shipped with its compile cache.

The artifact is the torch.export program plus Inductor's portable cache
("mega-cache"): ``load`` recompiles from that cache instead of from scratch, so a
package starts faster on a machine with the same torch and CPU family, and still
works (compiling anew, slower to start) elsewhere.

On CUDA the candidates compile in the default mode and replay CUDA graphs captured
per batch bucket (``cuda_graphs.py`` says why not ``mode="reduce-overhead"``): batches
are padded up to a bucket and the outputs sliced back, so any batch size replays one
of a few graphs. The serving batcher reads the buckets from the artifact's
``static_batch_sizes`` and pads the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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
    one_of,
)
from inferforge.backends.cuda_graphs import BUCKETS, GraphedBuckets
from inferforge.backends.torch_common import (
    TorchBackend,
    TorchRunner,
    device_requirement,
    load_placed,
    load_program,
    set_torch_threads,
)
from inferforge.data import Dataset, generate_inputs
from inferforge.environment import torch_requirement
from inferforge.source import ModelSource, SourceKind
from inferforge.types import ModelSpec, Precision

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
CACHE = "compile_cache.bin"
# Batch 1 compiles a static graph; batch 2 makes the batch dimension dynamic, covering every size above.
_WARM_BATCHES = (1, 2)


@dataclass(frozen=True)
class InductorOptions(BackendOptions):
    """``freezing`` folds weights into the graph as constants: faster on CPU, slower to compile.
    ``mode``: torch.compile's mode. ``cuda_graphs``: replay graphs captured per batch bucket (GPU)."""

    freezing: bool = False
    mode: str = "default"
    cuda_graphs: bool = False

    def problems(self) -> list[str]:
        return one_of("mode", self.mode, COMPILE_MODES)


class InductorBackend(TorchBackend):
    name = "inductor"
    accepts = frozenset({SourceKind.TORCH, SourceKind.EXPORTED})
    options_type = InductorOptions
    keeps_program = True

    def search_order(self, config: BuildConfig) -> int:
        if InductorOptions.of(config).mode != "default":
            return SEARCH_ORDER["slow"]
        # On a GPU, CUDA graphs over Inductor's kernels are the likely winner; on a CPU a long compile.
        return SEARCH_ORDER["likely"] if config.device == "cuda" else SEARCH_ORDER["compiles"]
    refusals = {SourceKind.TORCHSCRIPT: "torch.compile cannot trace a TorchScript module"}

    def configs(self, device: str) -> list[BuildConfig]:
        if device == "cuda":
            return [BuildConfig(self.name, p, device, InductorOptions(cuda_graphs=True))
                    for p in (Precision.FP16, Precision.BF16)]
        return [BuildConfig(self.name, Precision.FP32, device, InductorOptions(freezing=f)) for f in (False, True)]

    def thorough_configs(self, device: str) -> list[BuildConfig]:
        """max-autotune benchmarks Triton GEMM templates against cuBLAS for every matrix product: three times
        the build time on BERT-base for no gain (docs/benchmarks.md), so only with ``--thorough``."""
        if device != "cuda":
            return []
        return [BuildConfig(self.name, Precision.FP16, device,
                            InductorOptions(mode="max-autotune-no-cudagraphs", cuda_graphs=True))]

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        import torch

        torch.export.save(source.exported_program(), str(out_dir / PROGRAM))
        _clear_cache_recording()
        # Compile and warm exactly what load() does, so the recorded cache entries match there.
        started = time.perf_counter()
        self.load(artifact_from_dir(config, out_dir), source.spec, torch.get_num_threads())
        saved = torch.compiler.save_cache_artifacts()
        details: dict[str, Any] = {"format": "torch.export + inductor cache",
                                   "warm_compile_seconds": round(time.perf_counter() - started, 2)}
        if config.device == "cuda":
            details["static_batch_sizes"] = list(BUCKETS)
            details["note"] = "CUDA graphs: each batch bucket is captured at its first use"
        if saved is not None:
            (out_dir / CACHE).write_bytes(saved[0])
        else:
            details["cache"] = "torch recorded no cache artifacts; load will compile from scratch"
        requires = {**torch_requirement(), "machine": _machine(),
                    **device_requirement(config, compiled_for_this_gpu=True)}
        return artifact_from_dir(config, out_dir, requires, details)

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        import torch

        set_torch_threads(threads)
        cache = artifact.directory / CACHE
        if cache.exists():
            torch.compiler.load_cache_artifacts(cache.read_bytes())
        config = artifact.config
        compiled = compile_module(load_placed(artifact, spec, PROGRAM), InductorOptions.of(config), config.device)
        if InductorOptions.of(config).cuda_graphs:
            return graphed_runner(spec, artifact, compiled)
        runner = TorchRunner(spec, artifact, compiled)
        for batch in _WARM_BATCHES:
            runner.run_native(runner.to_native(generate_inputs(spec, batch)))
        return runner


def compile_module(module: Any, options: InductorOptions, device: str) -> Any:
    import logging

    import torch

    # On a CPU-only host torch logs a CUDA_HOME notice at the first compile; it is noise here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if device == "cuda":  # batch 1 compiles static, the first larger bucket a dynamic-batch graph for the rest
        return torch.compile(module, backend="inductor", mode=options.mode)
    return torch.compile(module, backend="inductor", options={"freezing": options.freezing})


def graphed_runner(spec: ModelSpec, artifact: Artifact, compiled: Any) -> Runner:
    """A runner replaying CUDA graphs per batch bucket; bucket 1 is compiled and captured now, so the
    first request does not pay for it."""
    runner = TorchRunner(spec, artifact, GraphedBuckets(compiled))
    runner.run_native(runner.to_native(generate_inputs(spec, 1)))
    return runner


def graphed_program_runner(artifact: Artifact, spec: ModelSpec, threads: int,
                           options: InductorOptions | None = None) -> Runner:
    """An artifact's saved CUDA program compiled with Inductor (``options``, default mode when None) and replayed
    as CUDA graphs per batch bucket: how the quantized GPU candidates (torchao, fp8-static) load."""
    set_torch_threads(threads)
    module = load_program(artifact.directory / PROGRAM, "cuda")
    return graphed_runner(spec, artifact, compile_module(module, options or InductorOptions(), "cuda"))


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
