"""ONNX Runtime: export with dynamic axes, run with graph optimization ALL and explicit threads.

Export tries the current exporter (torch.export based) first and falls back to
the TorchScript-based one; which one worked is recorded in the artifact.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inferforge.backends.base import Artifact, Backend, BuildConfig, Runner, artifact_from_dir
from inferforge.environment import version_of
from inferforge.errors import BuildError, one_line
from inferforge.source import ModelSource, SourceKind, _at_least_batch_2
from inferforge.types import ModelSpec

MODEL = "model.onnx"


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    accepts = frozenset({SourceKind.TORCH, SourceKind.EXPORTED, SourceKind.TORCHSCRIPT, SourceKind.ONNX})

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        if version_of("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return super().unavailable_reason(config, source)

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path) -> Artifact:
        path = out_dir / MODEL
        if source.kind is SourceKind.ONNX:
            assert source.path is not None
            exporter = _copy_onnx(source.path, path)
        else:
            exporter = _export(source, path)
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        return artifact_from_dir(config, out_dir, {"package:onnxruntime": ">=1.17"},
                                 {"exporter": exporter, "opset": opset, "graph_optimization": "all"})

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        return OnnxRuntimeRunner(spec, artifact, create_session(artifact.directory / MODEL, threads, optimize=True))


def create_session(path: Path, threads: int, optimize: bool) -> Any:
    """An ORT CPU session with explicit threads; ``optimize=False`` gives the unoptimized reference."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeRunner(Runner):
    """Feeds inputs positionally: ONNX inputs and outputs keep the model's call order."""

    native = "numpy"

    def __init__(self, spec: ModelSpec, artifact: Artifact, session: Any) -> None:
        super().__init__(spec, artifact)
        self.session = session
        self._input_names = [i.name for i in session.get_inputs()]
        if len(self._input_names) != len(spec.inputs):
            raise BuildError(f"the ONNX model takes {len(self._input_names)} inputs, the spec has {len(spec.inputs)}")

    def run_native(self, args: list[Any]) -> list[Any]:
        return self.session.run(None, dict(zip(self._input_names, args, strict=True)))


def _export(source: ModelSource, path: Path) -> str:
    """Export with the torch.export-based exporter, else the TorchScript-based one."""
    import torch

    names: dict[str, Any] = {"input_names": source.spec.input_names, "output_names": source.spec.output_names}
    errors = []
    if source.kind is not SourceKind.TORCHSCRIPT:
        try:
            with _quiet():
                torch.onnx.export(source.exported_program(), (), str(path), dynamo=True, external_data=False, **names)
            return "dynamo"
        except Exception as exc:
            errors.append(f"torch.export-based exporter: {one_line(exc, 200)}")
            for leftover in path.parent.iterdir():
                leftover.unlink()
    examples = tuple(torch.from_numpy(v) for v in _at_least_batch_2(source.spec, source.example_inputs).values())
    dynamic_axes = {s.name: {axis: str(d).split("=")[0] for axis, d in enumerate(s.shape) if not isinstance(d, int)}
                    for s in (*source.spec.inputs, *source.spec.outputs)}
    try:
        with _quiet(), torch.inference_mode():
            torch.onnx.export(source.module, examples, str(path), dynamo=False, opset_version=17,
                              dynamic_axes={k: v for k, v in dynamic_axes.items() if v}, **names)
        return "torchscript"
    except Exception as exc:
        errors.append(f"TorchScript-based exporter: {one_line(exc, 200)}")
    raise BuildError("ONNX export failed. " + " | ".join(errors))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print progress and optimizer notes; keep them off the user's terminal."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _copy_onnx(src: Path, dst: Path) -> str:
    """Copy an ONNX file and the external-data files it names."""
    import onnx

    shutil.copyfile(src, dst)
    model = onnx.load(str(src), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and not (dst.parent / entry.value).exists():
                shutil.copyfile(src.parent / entry.value, dst.parent / entry.value)
    return "given"
