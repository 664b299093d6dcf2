"""ONNX Runtime: export with dynamic axes, run with graph optimization ALL and explicit threads.

Export tries the current exporter (torch.export based) first and falls back to
the TorchScript-based one; which one worked is recorded in the artifact. INT8
builds quantize that export (onnxruntime_int8.py): dynamic, or static QDQ with
calibration, with chosen nodes kept in FP32.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inferforge.backends import onnxruntime_int8
from inferforge.backends.base import SEARCH_ORDER, Artifact, Backend, BuildConfig, Runner, artifact_from_dir
from inferforge.backends.onnx_common import (
    MODEL,
    BuildMemo,
    OnnxRuntimeOptions,
    copy_onnx,
    create_session,
    export_onnx,
)
from inferforge.data import Dataset
from inferforge.environment import usable_cores, version_of
from inferforge.errors import BuildError
from inferforge.operator_profile import PROFILED_RUNS, OperatorProfile, top_operators, write_trace
from inferforge.source import ModelSource, SourceKind
from inferforge.types import ModelSpec, Precision


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    accepts = frozenset({SourceKind.TORCH, SourceKind.EXPORTED, SourceKind.TORCHSCRIPT, SourceKind.ONNX})
    options_type = OnnxRuntimeOptions
    portable = True
    export_formats = {"onnx": MODEL}
    packages = ("torch", "onnx", "onnxscript", "onnxruntime")  # export, then run

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
        missing = self.missing_packages_reason(config)
        if missing:
            return missing
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
        options = OnnxRuntimeOptions.of(config)
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
        options = OnnxRuntimeOptions.of(config)
        if options.mode == "none":
            return []
        return onnxruntime_int8.sensitive_nodes(lambda path: self.fp32_model(source, path), source, options,
                                                artifact.directory / MODEL, calibration, self._memo,
                                                usable_cores())

    def fp32_model(self, source: ModelSource, path: Path) -> str:
        """Write the FP32 ONNX model to ``path`` (exported once per source); returns the exporter used."""
        if source.kind is SourceKind.ONNX:
            assert source.path is not None
            return copy_onnx(source.path, path)
        return str(self._memo.file("fp32", (source,), path, lambda p: export_onnx(source, p)))


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

    def threads(self) -> int:
        return int(self.session.get_session_options().intra_op_num_threads)

    def profile_operators(self, inputs: Mapping[str, Any], runs: int, trace_path: Path | None) -> OperatorProfile:
        """A second session over the artifact's .onnx file with the runner's settings plus profiling (profiling
        is fixed when a session is created); node kernel times aggregated by op type."""
        import onnxruntime as ort

        runs = min(max(1, runs), PROFILED_RUNS)

        onnx_files = [f for f in self.artifact.files if f.endswith(".onnx")]
        if not onnx_files:
            return OperatorProfile("onnxruntime", "", (), 0, None, "the artifact has no .onnx file to profile")
        loaded = self.session.get_session_options()  # the live session's options: copy, never modify
        options = ort.SessionOptions()
        for name in ("intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level", "execution_mode",
                     "log_severity_level"):
            setattr(options, name, getattr(loaded, name))
        with tempfile.TemporaryDirectory(prefix="inferforge-profile-") as tmp:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / "ort")
            session = ort.InferenceSession(str(self.artifact.directory / onnx_files[0]), options,
                                           providers=self.session.get_providers())
            feed = dict(zip([i.name for i in session.get_inputs()], self.to_native(inputs), strict=True))
            for _ in range(runs + 1):  # the first run also initializes; it is dropped below
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
        nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
        per_run = len(nodes) // (runs + 1)
        totals: dict[str, tuple[int, float]] = {}
        for event in nodes[per_run:]:
            op = str(event.get("args", {}).get("op_name", event["name"]))
            calls, us = totals.get(op, (0, 0.0))
            totals[op] = (calls + 1, us + float(event.get("dur", 0)))
        write_trace(trace_path, events)
        return OperatorProfile("onnxruntime", "node kernel time", top_operators(totals, runs), runs,
                               str(trace_path) if trace_path else None)


