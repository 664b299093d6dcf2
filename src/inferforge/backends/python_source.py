"""The source artifact: the model's own Python code and its weights, for models no graph capture can take.

torch.export refuses data-dependent control flow, TorchScript refuses much of Python;
eager PyTorch runs them all. This backend packages what eager needs: a copy of the
factory's file (checksummed like every file of a package) or the name of its installed
module, and the weights as safetensors. Loading imports that code and calls the factory
again, then loads the weights: nothing is unpickled, but the user's code runs, so a package
opens such an artifact only with the user's consent (``load(..., trust_source=True)``).

``compile=True`` adds ``torch.compile`` on the user's module with graph breaks allowed:
Python control flow stays Python, the straight parts between become Inductor kernels.
On CUDA, FP16/BF16 run under ``torch.autocast`` with FP32 weights, so modules that build
their own FP32 tensors (an RNN's hidden state, an FFT) still work.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferforge.backends.base import (
    SEARCH_ORDER,
    Artifact,
    BackendOptions,
    BuildConfig,
    Runner,
    artifact_from_dir,
)
from inferforge.backends.torch_common import TorchBackend, TorchRunner, set_torch_threads
from inferforge.data import Dataset
from inferforge.errors import BuildError, SourceError, one_line
from inferforge.source import ModelSource, SourceKind
from inferforge.types import ModelSpec, Precision
from inferforge.user_code import import_file

WEIGHTS = "weights.safetensors"
RECIPE = "source.json"
CODE_DIR = "code"


@dataclass(frozen=True)
class SourceOptions(BackendOptions):
    """``compile``: torch.compile the module at load (graph breaks allowed)."""

    compile: bool = False


class PythonSourceBackend(TorchBackend):
    name = "source"
    accepts = frozenset({SourceKind.TORCH})
    options_type = SourceOptions
    runs_user_code = True
    packages = ("torch", "safetensors")  # the weights travel as safetensors, never as a pickle
    portable = True

    def configs(self, device: str) -> list[BuildConfig]:
        if device == "cuda":
            return [BuildConfig(self.name, p, device, SourceOptions(compile=c))
                    for p, c in ((Precision.FP32, False), (Precision.FP16, False), (Precision.BF16, True))]
        return [BuildConfig(self.name, Precision.FP32, device, SourceOptions(compile=c)) for c in (False, True)]

    def search_order(self, config: BuildConfig) -> int:
        if SourceOptions.of(config).compile:
            return SEARCH_ORDER["compiles"] + 5
        return SEARCH_ORDER["fallback"] if config.precision is Precision.FP32 else SEARCH_ORDER["default"]

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        reason = super().unavailable_reason(config, source)
        if reason:
            return reason
        if source.factory_ref is None:
            return ("the model came as a Python object, not as a factory ('file.py:factory' or "
                    "'package.module:factory'): there is no code to package")
        if SourceOptions.of(config).compile and _captures(source):
            return ("not needed: torch.export captures this model whole, so the inductor candidates compile it "
                    "without graph breaks")
        return None

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        from safetensors.torch import save_model

        assert source.factory_ref is not None  # unavailable_reason refused it otherwise
        module_ref, _, attr = source.factory_ref.rpartition(":")
        recipe: dict[str, Any] = {"factory": attr, "input_names": source.spec.input_names,
                                  "call_by_keyword": source.call_by_keyword}
        requires = {"package:torch": ">=2.0", "package:safetensors": ">=0.4"}
        file = Path(module_ref) if module_ref.endswith(".py") else _local_module_file(module_ref)
        if file is not None:
            code = out_dir / CODE_DIR
            code.mkdir()
            shutil.copyfile(file, code / file.name)
            recipe["file"] = f"{CODE_DIR}/{file.name}"
        else:
            recipe["module"] = module_ref
            requires[f"module:{module_ref}"] = "importable"
        save_model(source.module.model, str(out_dir / WEIGHTS))  # shared (tied) weights stored once
        (out_dir / RECIPE).write_text(json.dumps(recipe, indent=2) + "\n")
        details = {"format": "python source + safetensors", "factory": source.factory_ref,
                   "runs_user_code": True, "compile": SourceOptions.of(config).compile}
        if config.precision is not Precision.FP32:
            details["precision_by"] = "torch.autocast (weights stay FP32)"
        return artifact_from_dir(config, out_dir, requires, details)

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        import torch
        from safetensors.torch import load_model

        from inferforge.capture import make_flat_module

        set_torch_threads(threads)
        recipe = json.loads((artifact.directory / RECIPE).read_text())
        model = _call_packaged_factory(artifact.directory, recipe)
        try:
            load_model(model, str(artifact.directory / WEIGHTS), strict=True)
        except Exception as exc:
            raise BuildError(f"the packaged weights do not fit what the factory {recipe['factory']} builds now "
                             f"(was its code changed?): {one_line(exc)}") from exc
        model.eval()
        config = artifact.config
        if config.device != "cpu":
            model = model.to(config.device)
        flat = make_flat_module(model, recipe["input_names"], recipe["call_by_keyword"])
        for module in flat.modules():
            if isinstance(module, torch.nn.RNNBase):
                module.flatten_parameters()
        fn: Any = torch.compile(flat, dynamic=None) if SourceOptions.of(config).compile else flat
        if config.precision in (Precision.FP16, Precision.BF16):
            fn = _autocast(fn, config.device, torch.float16 if config.precision is Precision.FP16 else torch.bfloat16)
        return TorchRunner(spec, artifact, fn, cast_inputs=False)


def _local_module_file(module_ref: str) -> Path | None:
    """The file of a one-file module imported from a folder of the user's (``models:make`` with models.py beside
    them): copied into the package like ``models.py:make``, so the package opens where that folder is not.
    None for a package (a folder of modules) or an installed module, which the machine that loads must have."""
    try:
        spec = importlib.util.find_spec(module_ref)
    except (ImportError, ValueError):
        return None
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    if origin is None or origin.suffix != ".py" or origin.name == "__init__.py" or "." in module_ref:
        return None
    if any(part in ("site-packages", "dist-packages") for part in origin.parts):
        return None
    return origin


def _captures(source: ModelSource) -> bool:
    """Whether torch.export takes the model (its program is cached on the source, so this costs one export)."""
    try:
        source.exported_program()
    except Exception:
        return False
    return True


def _autocast(fn: Any, device: str, dtype: Any) -> Any:
    import torch

    def run(*args: Any) -> Any:
        with torch.autocast(device_type=device, dtype=dtype):
            return fn(*args)

    return run


def _call_packaged_factory(directory: Path, recipe: dict[str, Any]) -> Any:
    """Import the packaged file (or the named installed module) and call its factory: the user's code runs here."""
    try:
        if "file" in recipe:
            file = directory / recipe["file"]
            digest = hashlib.sha256(file.read_bytes()).hexdigest()[:12]
            module = import_file(file, f"_inferforge_packaged_{file.stem}_{digest}")
        else:
            module = importlib.import_module(recipe["module"])
        made = getattr(module, recipe["factory"])()
    except Exception as exc:
        where = recipe.get("file") or recipe.get("module")
        raise SourceError(f"the packaged model code ({where}:{recipe['factory']}) failed to build the model: "
                          f"{one_line(exc)}; it may import modules this machine lacks") from exc
    return made[0] if isinstance(made, tuple) else made
