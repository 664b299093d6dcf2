"""ONNX Runtime: export with dynamic axes, run with graph optimization ALL and explicit threads.

Export tries the current exporter (torch.export based) first and falls back to
the TorchScript-based one; which one worked is recorded in the artifact. INT8
builds quantize that export (onnxruntime_int8.py): dynamic, or static QDQ with
calibration, with chosen nodes kept in FP32.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferforge.backends.base import SEARCH_ORDER, Artifact, Backend, BuildConfig, Runner, artifact_from_dir
from inferforge.data import Dataset
from inferforge.environment import usable_cores, version_of
from inferforge.errors import BuildError, one_line
from inferforge.source import ModelSource, SourceKind, _at_least_batch_2
from inferforge.types import ModelSpec, Precision

MODEL = "model.onnx"
MODES = ("none", "dynamic", "static")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class OnnxRuntimeOptions:
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


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    accepts = frozenset({SourceKind.TORCH, SourceKind.EXPORTED, SourceKind.TORCHSCRIPT, SourceKind.ONNX})
    options_type = OnnxRuntimeOptions
    portable = True
    export_formats = frozenset({"onnx"})

    def search_order(self, config: BuildConfig) -> int:
        return SEARCH_ORDER["fallback"] if config.precision is Precision.FP32 else SEARCH_ORDER["likely"]

    def __init__(self) -> None:
        self._memo = BuildMemo()

    def configs(self, device: str) -> list[BuildConfig]:
        """FP32, INT8 dynamic and INT8 static (MinMax): entropy and percentile calibration gained nothing on
        the models measured (onnxruntime_int8.py) and cost 2-4x the calibration time, so they are not tried
        by default. On a GPU target: FP32 through ONNX Runtime's CUDA provider, where it is installed."""
        if device == "cuda":
            return [BuildConfig(self.name, Precision.FP32, device, OnnxRuntimeOptions())]
        return [BuildConfig(self.name, Precision.FP32, device, OnnxRuntimeOptions()),
                BuildConfig(self.name, Precision.INT8, device, OnnxRuntimeOptions(mode="dynamic")),
                BuildConfig(self.name, Precision.INT8, device, OnnxRuntimeOptions(mode="static"))]

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        if version_of("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime)"
        if config.precision not in (Precision.FP32, Precision.INT8):
            return f"onnxruntime builds fp32 and int8 here, not {config.precision.value}"
        if config.device == "cuda":
            import onnxruntime as ort

            providers = ort.get_available_providers()
            if "CUDAExecutionProvider" not in providers:
                return (f"this onnxruntime {version_of('onnxruntime')} has no CUDA provider (it has "
                        f"{', '.join(providers)}); pip install onnxruntime-gpu for it")
            return "inferforge does not yet run onnxruntime's CUDA provider; eager, inductor and aoti cover cuda"
        return super().unavailable_reason(config, source)

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        """Export (or copy) the model; for INT8, quantize it (needs ``calibration`` in static mode).
        Raises BuildError when export or quantization fails or the options do not fit the precision."""
        options = _checked_options(config)
        path = out_dir / MODEL
        details: dict[str, Any] = {}
        if options.mode == "none":
            exporter = self.fp32_model(source, path)
        else:
            from inferforge.backends import onnxruntime_int8  # imported here: it imports this module

            with tempfile.TemporaryDirectory(prefix="inferforge-ort-") as tmp:
                exporter = self.fp32_model(source, Path(tmp) / MODEL)
                details = onnxruntime_int8.quantize(Path(tmp) / MODEL, path, options, calibration, self._memo,
                                                    source)
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        details = {"exporter": exporter, "opset": opset, "graph_optimization": "all", **details}
        return artifact_from_dir(config, out_dir, {"package:onnxruntime": ">=1.17"}, details)

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        return OnnxRuntimeRunner(spec, artifact, create_session(artifact.directory / MODEL, threads, optimize=True))

    def sensitive_layers(self, source: ModelSource, config: BuildConfig, artifact: Artifact,
                         calibration: Dataset) -> list[str]:
        """The quantized nodes of an INT8 build, most harmful first (see onnxruntime_int8.rank_sensitive_nodes)."""
        options = _checked_options(config)
        if options.mode == "none":
            return []
        from inferforge.backends import onnxruntime_int8

        return onnxruntime_int8.sensitive_nodes(lambda path: self.fp32_model(source, path), source, options,
                                                artifact.directory / MODEL, calibration, self._memo,
                                                usable_cores())

    def fp32_model(self, source: ModelSource, path: Path) -> str:
        """Write the FP32 ONNX model to ``path`` (exported once per source); returns the exporter used."""
        if source.kind is SourceKind.ONNX:
            assert source.path is not None
            return _copy_onnx(source.path, path)
        return str(self._memo.file("fp32", (source,), path, lambda p: _export(source, p)))


def _checked_options(config: BuildConfig) -> OnnxRuntimeOptions:
    """The config's options, refusing ones that contradict each other or the precision (BuildError)."""
    options = config.options
    problems = []
    if not isinstance(options, OnnxRuntimeOptions):
        raise BuildError(f"onnxruntime takes OnnxRuntimeOptions, not {type(options).__name__}")
    if options.mode not in MODES:
        problems.append(f"mode {options.mode!r} is not one of {', '.join(MODES)}")
    if options.calibrate not in CALIBRATION_METHODS:
        problems.append(f"calibrate {options.calibrate!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    if (options.mode in ("dynamic", "static")) != (config.precision is Precision.INT8):
        problems.append(f"mode {options.mode!r} does not fit precision {config.precision.value} "
                        "(int8 needs mode dynamic or static; fp32 needs mode none)")
    if options.keep_fp32 and options.mode == "none":
        problems.append("keep_fp32 names nodes to leave unquantized, but mode 'none' quantizes nothing")
    if problems:
        raise BuildError("onnxruntime options: " + "; ".join(problems))
    return options


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

    # ONNX names every value once: an output named like an input (nms returning "boxes") gets a suffix. The
    # runner reads outputs by position, so the spec's names stay what callers see.
    outputs = [f"{n}.out" if n in source.spec.input_names else n for n in source.spec.output_names]
    names: dict[str, Any] = {"input_names": source.spec.input_names, "output_names": outputs}
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
