"""What the ONNX Runtime backend, its INT8 quantizer (onnxruntime_int8.py) and OpenVINO's converter share:
the ONNX file (export from torch, or copy a given one), the ORT session, the options, and a quiet context
for the exporters' chatter. Kept apart so the backend and its quantizer import it, not each other.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from inferforge.backends.base import BackendOptions, one_of
from inferforge.capture import at_least_batch_2
from inferforge.errors import BuildError, one_line
from inferforge.source import ModelSource, SourceKind
from inferforge.types import Precision

MODEL = "model.onnx"
MODES = ("none", "dynamic", "static")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class OnnxRuntimeOptions(BackendOptions):
    """How to quantize the exported model; the defaults build FP32.

    ``mode``: "none" (FP32), "dynamic" (INT8 weights, activations quantized per batch at run time: for
    transformers and LSTMs) or "static" (QDQ: activation scales fixed from calibration samples: for CNNs).
    ``calibrate``: how static mode picks activation ranges ("minmax", "entropy", "percentile").
    ``per_channel``: one weight scale per output channel rather than per tensor.
    ``keep_fp32``: node names left unquantized (ONNX Runtime's ``nodes_to_exclude``), as the backend's
    ``sensitive_layers`` names them; a static build also feeds them FP32 activations.
    """

    mode: str = "none"
    calibrate: str = "minmax"
    per_channel: bool = True
    keep_fp32: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        problems = one_of("mode", self.mode, MODES) + one_of("calibrate", self.calibrate, CALIBRATION_METHODS)
        if self.keep_fp32 and self.mode == "none":
            problems.append("keep_fp32 names nodes to leave unquantized, but mode 'none' quantizes nothing")
        return problems

    def precision_problems(self, precision: Precision) -> list[str]:
        if (self.mode in ("dynamic", "static")) == (precision is Precision.INT8):
            return []
        return [f"mode {self.mode!r} does not fit precision {precision.value} (int8 needs mode dynamic or static; "
                "fp32 needs mode none)"]

    def with_fp32_layers(self, layers: tuple[str, ...]) -> OnnxRuntimeOptions:
        return replace(self, keep_fp32=layers)


class BuildMemo:
    """Files several builds of one source share within a search (the FP32 export, the model prepared for
    the quantizer, calibration ranges), so INT8 variants and keep_fp32 retries do not export and calibrate
    again. Only the last source's files are kept; "the same" means the same objects, not equal ones.
    ``owners``: the objects a file was made from, the source first (then e.g. the calibration set)."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[tuple[object, ...], bytes, Any]] = {}

    def restore(self, name: str, owners: tuple[object, ...], dst: Path) -> tuple[bool, Any]:
        """Write the stored file to ``dst``: (True, its note), or (False, None) when there is none."""
        entry = self._files.get(name)
        if entry is None or len(entry[0]) != len(owners) or any(a is not b for a, b in zip(entry[0], owners, strict=True)):
            return False, None
        dst.write_bytes(entry[1])
        return True, entry[2]

    def store(self, name: str, owners: tuple[object, ...], src: Path, note: Any = None) -> None:
        if any(stored[0][0] is not owners[0] for stored in self._files.values()):
            self._files.clear()  # a new source: drop the last one's files
        if src.is_file():
            self._files[name] = (owners, src.read_bytes(), note)

    def file(self, name: str, owners: tuple[object, ...], dst: Path, make: Callable[[Path], Any]) -> Any:
        """Write file ``name`` to ``dst``, by ``make(dst)`` the first time; returns what ``make`` returned."""
        found, note = self.restore(name, owners, dst)
        if not found:
            note = make(dst)
            self.store(name, owners, dst, note)
        return note


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


def export_onnx(source: ModelSource, path: Path) -> str:
    """Export with the torch.export-based exporter, else the TorchScript-based one."""
    import torch

    # ONNX names every value once: an output named like an input (nms returning "boxes") gets a suffix. The
    # runner reads outputs by position, so the spec's names stay what callers see.
    outputs = [f"{n}.out" if n in source.spec.input_names else n for n in source.spec.output_names]
    names: dict[str, Any] = {"input_names": source.spec.input_names, "output_names": outputs}
    errors = []
    if source.kind is not SourceKind.TORCHSCRIPT:
        try:
            with quiet():
                torch.onnx.export(source.exported_program(), (), str(path), dynamo=True, external_data=False, **names)
            return "dynamo"
        except Exception as exc:
            errors.append(f"torch.export-based exporter: {one_line(exc, 200)}")
            for leftover in path.parent.iterdir():
                leftover.unlink()
    examples = tuple(torch.from_numpy(v) for v in at_least_batch_2(source.spec, source.example_inputs).values())
    dynamic_axes = {s.name: {axis: str(d).split("=")[0] for axis, d in enumerate(s.shape) if not isinstance(d, int)}
                    for s in (*source.spec.inputs, *source.spec.outputs)}
    try:
        with quiet(), torch.inference_mode():
            torch.onnx.export(source.module, examples, str(path), dynamo=False, opset_version=17,
                              dynamic_axes={k: v for k, v in dynamic_axes.items() if v}, **names)
        return "torchscript"
    except Exception as exc:
        errors.append(f"TorchScript-based exporter: {one_line(exc, 200)}")
    raise BuildError("ONNX export failed. " + " | ".join(errors))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporters print progress and optimizer notes; keep them off the user's terminal."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def copy_onnx(src: Path, dst: Path) -> str:
    """Copy an ONNX file and the external-data files it names."""
    import onnx

    shutil.copyfile(src, dst)
    model = onnx.load(str(src), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and not (dst.parent / entry.value).exists():
                shutil.copyfile(src.parent / entry.value, dst.parent / entry.value)
    return "given"
