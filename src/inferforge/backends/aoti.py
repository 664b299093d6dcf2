"""AOTInductor: Inductor compiled ahead of time into a shared library inside a .pt2 package.

Unlike the ``inductor`` candidate, which recompiles its kernels from a cache when
loaded, this artifact loads the compiled library directly: no compiler is needed
where it runs. The price is portability: the library is tied to the torch that
built it, the machine architecture, and the vector ISA Inductor chose (AVX-512 or
AVX2), all of which the artifact records as requirements.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from inferforge.backends.base import SEARCH_ORDER, Artifact, BuildConfig, Runner, artifact_from_dir
from inferforge.backends.torch_common import (
    TorchBackend,
    TorchRunner,
    device_requirement,
    export_placed,
    set_torch_threads,
)
from inferforge.data import Dataset
from inferforge.environment import torch_requirement
from inferforge.source import ModelSource, SourceKind
from inferforge.types import ModelSpec, Precision

PACKAGE = "model.pt2"


class AotInductorBackend(TorchBackend):
    name = "aoti"
    accepts = frozenset({SourceKind.TORCH, SourceKind.EXPORTED})
    export_formats = {"aoti": PACKAGE}

    def search_order(self, config: BuildConfig) -> int:
        return SEARCH_ORDER["compiles"]
    refusals = {SourceKind.TORCHSCRIPT: "AOTInductor compiles torch.export programs, not TorchScript"}

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        if config.device == "cuda":  # benchmarks/gpu_probe.py aoti and aoti_small reproduce it
            return ("AOTInductor CUDA packages crash the process that loads them: segfault in torch's _load_aoti "
                    "(torch 2.11.0+cu130 on an H100), for an FP16 encoder and for a 3-layer MLP alike, with kernel "
                    "binaries embedded or not, single-threaded runner or not, CUDA initialised first; cf. "
                    "pytorch/pytorch#166415. Not built until a torch release fixes it")
        return super().unavailable_reason(config, source)

    def configs(self, device: str) -> list[BuildConfig]:
        if device == "cuda":  # the deployable GPU artifact: half-precision weights baked into the library
            return [BuildConfig(self.name, p, device) for p in (Precision.FP16, Precision.BF16)]
        return super().configs(device)

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        import torch
        with torch.inference_mode():
            if config.device == "cuda":
                compile_package(export_placed(source, config), out_dir)
                requires = {**torch_requirement(same_series=True), "machine": platform.machine(),
                            **device_requirement(config, compiled_for_this_gpu=True)}
                return artifact_from_dir(config, out_dir, requires, {"format": "AOTInductor package (CUDA)"})
            requires = compile_package(source.exported_program(), out_dir)
        return artifact_from_dir(config, out_dir, requires,
                                 {"format": "AOTInductor package", "vector_isa": vector_isa()})

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        from torch._inductor import aoti_load_package

        set_torch_threads(threads)
        # Compiled for contiguous inputs: no channels_last conversion of image inputs on the GPU.
        return TorchRunner(spec, artifact, aoti_load_package(str(artifact.directory / PACKAGE)), channels_last=False)


def compile_package(program: Any, out_dir: Path, inductor_configs: dict[str, Any] | None = None) -> dict[str, str]:
    """Compile an exported program into ``out_dir/model.pt2`` and return what a host needs to run it:
    the same torch series, the same machine, and the vector ISA the kernels were generated for."""
    from torch._inductor import aoti_compile_and_package

    aoti_compile_and_package(program, package_path=str(out_dir / PACKAGE), inductor_configs=inductor_configs)
    isa = vector_isa()
    requires = {**torch_requirement(same_series=True), "machine": platform.machine()}
    if isa:
        requires[f"cpu_flag:{isa}"] = "yes"
    return requires


def vector_isa() -> str | None:
    """The CPU flag the compiled kernels need: Inductor vectorizes for the best ISA it found here."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        name = str(pick_vec_isa()).lower()
    except Exception:
        return None
    if "avx512" in name:
        return "avx512f"
    if "avx2" in name:
        return "avx2"
    return None
