"""The backends, listed explicitly (no registration by import side effect).

Adding a backend: write one module with a ``Backend`` subclass and add it to ``_MODULES``.
Modules import their heavy dependencies lazily, so listing them here costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inferforge.backends.base import Artifact, Backend, BuildConfig
from inferforge.errors import InferforgeError
from inferforge.types import Precision

# name -> module:class, in the order the leaderboard lists them; eager first (the reference).
_MODULES: dict[str, str] = {
    "eager": "inferforge.backends.eager:EagerBackend",
    "torchscript": "inferforge.backends.torchscript:TorchScriptBackend",
    "inductor": "inferforge.backends.inductor:InductorBackend",
    "aoti": "inferforge.backends.aoti:AotInductorBackend",
    "onnxruntime": "inferforge.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "inferforge.backends.openvino:OpenVinoBackend",
    "torch-int8": "inferforge.backends.torch_int8:TorchInt8Backend",
    "torchao": "inferforge.backends.torchao_cuda:TorchaoCudaBackend",
    "fp8-static": "inferforge.backends.fp8_static:Fp8StaticBackend",
    "fp8-fused": "inferforge.backends.fp8_fused:Fp8FusedBackend",
    "cudnn-fused": "inferforge.backends.cudnn_fused:CudnnFusedBackend",
    "source": "inferforge.backends.python_source:PythonSourceBackend",
}


def backend_names() -> list[str]:
    return list(_MODULES)


def export_formats() -> dict[str, tuple[str, str]]:
    """What ``inferforge export`` writes: format -> (the backend whose artifact is that format, its file)."""
    return {fmt: (name, file) for name in _MODULES for fmt, file in get_backend(name).export_formats.items()}


def get_backend(name: str) -> Backend:
    if name not in _MODULES:
        raise InferforgeError(f"unknown backend {name!r}; known backends: {', '.join(_MODULES)}")
    module_name, class_name = _MODULES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


# ---- reading configs back: each backend's options type comes from the registry ----------------------------

def config_from_json(data: Mapping[str, Any]) -> BuildConfig:
    backend = get_backend(data["backend"])
    return BuildConfig(data["backend"], Precision(data["precision"]), data.get("device", "cpu"),
                       backend.options_from_json(data.get("options", {})))


def artifact_from_json(data: Mapping[str, Any], directory: Path) -> Artifact:
    return Artifact(config_from_json(data["config"]), directory, tuple(data["files"]),
                    dict(data.get("requires", {})), dict(data.get("details", {})), int(data.get("size_bytes", 0)))
