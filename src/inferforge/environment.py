"""What machine this is: CPU features, library versions, a fingerprint for packages.

Packages record it at build time; ``load`` compares an artifact's requirements
with it, so a package refuses clearly where it cannot run.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from functools import cache
from importlib import metadata
from typing import Any

# Flags that decide which precisions run natively on an x86 CPU.
_CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                          "amx_int8", "avx512_fp16", "amx_fp16")
LIBRARIES = ("inferforge", "torch", "numpy", "onnx", "onnxruntime", "onnxscript", "openvino", "nncf", "torchao")


@cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@cache
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16_reason() -> str | None:
    """None when the CPU computes bf16 natively; otherwise why bf16 would be slow here."""
    flags = cpu_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        return None
    return ("this CPU has no native bf16 (no avx512_bf16 or amx_bf16): bf16 runs emulated, "
            "typically 5-38x slower than fp32")


def cuda_unavailable_reason() -> str | None:
    """None when torch sees a CUDA GPU; otherwise why CUDA candidates cannot run here."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"no CUDA GPU here (torch {torch.__version__}: torch.cuda.is_available() is False)"
    return None


def cuda_capability() -> str | None:
    """The GPU's compute capability as "X.Y" (9.0 on Hopper), or None without one."""
    if cuda_unavailable_reason():
        return None
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}"


def cuda_requirement(compiled_for_this_gpu: bool, at_least: str = "7.0") -> dict[str, str]:
    """Kernels compiled here (AOTInductor, CUDA graphs) run on this GPU generation only; a
    serialized program runs on any GPU with at least ``at_least`` (e.g. 8.0 for bf16)."""
    have = cuda_capability() or at_least
    return {"cuda_capability": f"=={have}" if compiled_for_this_gpu else f">={at_least}"}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def fingerprint() -> dict[str, Any]:
    """The build or run environment, as recorded in packages and reports."""
    return {
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "cpu_flags": sorted(f for f in _CPU_FLAGS_OF_INTEREST if f in cpu_flags()),
        "libraries": {name: version_of(name) for name in LIBRARIES},
        **({"gpu": _gpu_name(), "cuda_capability": cuda_capability()} if "torch" in sys.modules
           and cuda_capability() else {}),
    }


def _gpu_name() -> str:
    import torch

    return str(torch.cuda.get_device_name())


def unmet_requirements(requires: dict[str, str]) -> list[str]:
    """Each requirement this host misses, as a sentence. Keys: ``package:NAME`` (">=X.Y", or "==X.Y" for
    the X.Y series),
    ``module:NAME`` (an importable Python module the artifact's code imports by name),
    ``cpu_flag:NAME``, ``machine`` (e.g. "x86_64") and ``cuda_capability`` (">=8.0", or "==9.0" for kernels
    compiled for one GPU generation)."""
    problems = []
    for key, want in requires.items():
        kind, _, name = key.partition(":")
        if kind == "package":
            have = version_of(name)
            if have is None:
                problems.append(f"needs the Python package {name} {want}, which is not installed")
            elif not _version_satisfies(have, want):
                problems.append(f"needs {name} {want}, this machine has {have}")
        elif kind == "module" and importlib.util.find_spec(name) is None:
            problems.append(f"imports the Python module {name}, which this machine does not have: install it "
                            f"(or rebuild the package from a factory given as path/to/file.py:function)")
        elif kind == "cpu_flag" and name not in cpu_flags():
            problems.append(f"needs the CPU feature {name}, which this CPU ({cpu_model()}) lacks")
        elif kind == "machine" and platform.machine() != want:
            problems.append(f"was built for {want}, this machine is {platform.machine()}")
        elif kind == "cuda_capability":
            have_gpu = cuda_capability()
            if have_gpu is None:
                problems.append(f"needs a CUDA GPU of compute capability {want[2:]}"
                                f"{' or newer' if want.startswith('>=') else ''}: {cuda_unavailable_reason()}")
            elif not _version_satisfies(have_gpu, want):
                problems.append(f"was built for CUDA compute capability {want}, this GPU "
                                f"({_gpu_name()}) has {have_gpu}")
    return problems


def _version_satisfies(have: str, want: str) -> bool:
    """">=X.Y": at least X.Y; "==X.Y": any release of the X.Y series."""
    bound = _version_tuple(want[2:])
    if want.startswith(">="):
        return _version_tuple(have) >= bound
    if want.startswith("=="):
        return _version_tuple(have)[: len(bound)] == bound
    return True


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def torch_requirement(same_series: bool = False) -> dict[str, str]:
    """Serialized torch programs load on the torch that wrote them or newer; compiled libraries
    (``same_series``) only on the same X.Y series."""
    import torch

    major, minor = torch.__version__.split(".")[:2]
    return {"package:torch": f"{'==' if same_series else '>='}{major}.{minor}"}
