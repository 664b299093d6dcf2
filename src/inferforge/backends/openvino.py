"""OpenVINO on CPU: FP32, and INT8 by NNCF post-training quantization; IR plus its compiled model.

Conversion reads the torch.export program (dynamic dims kept), else traces the module with the
spec's dynamic shapes, or reads the ONNX file; the IR is then reshaped to the spec and its
tensors named after it. Build compiles the saved IR once with ``CACHE_DIR`` inside the artifact,
so the compiled blob ships in the package. Load compiles with ``CACHE_DIR`` pointing at a
temporary copy of that folder: OpenVINO keys the cache by its own version, the model's content and
the settings that change the compiled graph (not by paths, threads, streams or hint), so a hit skips
compilation wherever the package lies, and a miss (another OpenVINO release, a damaged blob)
compiles the IR and writes its blob into the copy, never into the package, whose files are
checksummed. (Compiling from a file path instead keys the cache by that path, and the blob is
only small in the size-optimized mode, which does not load from another folder.)
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.backends.base import (
    SEARCH_ORDER,
    Artifact,
    Backend,
    BackendOptions,
    BuildConfig,
    Runner,
    artifact_from_dir,
    one_of,
)
from inferforge.backends.onnx_common import quiet
from inferforge.capture import at_least_batch_2
from inferforge.data import Dataset
from inferforge.environment import native_bf16_reason, usable_cores, version_of
from inferforge.errors import BuildError, one_line
from inferforge.operator_profile import WARMUP_RUNS, OperatorProfile, top_operators, write_trace
from inferforge.source import ModelSource, SourceKind
from inferforge.types import Dim, ModelSpec, Precision, TensorSpec

MODEL = "model.xml"  # and model.bin beside it
CACHE = "compiled"  # the folder CACHE_DIR points at: one <hash>.blob
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
# OpenVINO computes in bf16 by default on CPUs that have it (avx512_bf16, AMX); pin f32 so FP32 means
# FP32 and INT8 means int8 plus f32, on every machine; the BF16 candidate asks for bf16 explicitly, and
# only where the CPU computes it natively. The blob is compiled for it, so load passes it too.
INFERENCE_PRECISION = "f32"
SENSITIVITY_SAMPLES = 16
_PASS_THROUGH = frozenset({"Convert", "Reshape", "Transpose", "Squeeze", "Unsqueeze"})


@dataclass(frozen=True)
class OpenVinoOptions(BackendOptions):
    hint: str = "latency"  # PERFORMANCE_HINT: "latency" or "throughput" (OpenVINO picks the streams)
    keep_fp32: tuple[str, ...] = ()  # INT8: names of operations in the IR that NNCF leaves in FP32

    def problems(self) -> list[str]:
        return one_of("hint", self.hint, tuple(HINTS))

    def precision_problems(self, precision: Precision) -> list[str]:
        if self.keep_fp32 and precision is not Precision.INT8:
            return ["keep_fp32 names operations NNCF leaves unquantized; only an int8 build quantizes"]
        return []

    def with_fp32_layers(self, layers: tuple[str, ...]) -> OpenVinoOptions:
        return replace(self, keep_fp32=layers)


class OpenVinoBackend(Backend):
    name = "openvino"
    accepts = frozenset({SourceKind.TORCH, SourceKind.EXPORTED, SourceKind.TORCHSCRIPT, SourceKind.ONNX})
    options_type = OpenVinoOptions
    packages = ("torch", "openvino")

    def required_packages(self, config: BuildConfig) -> tuple[str, ...]:
        return (*self.packages, "nncf") if config.precision is Precision.INT8 else self.packages  # NNCF quantizes

    def search_order(self, config: BuildConfig) -> int:
        return SEARCH_ORDER["likely"] + (3 if config.precision is Precision.INT8 else 0)  # NNCF calibrates

    def configs(self, device: str) -> list[BuildConfig]:
        """FP32, BF16 (where the CPU has it) and INT8 with the latency hint, and no throughput-hint variant:
        the search times one call at
        a time, where THROUGHPUT runs each request on one stream's share of the threads (measured on 2
        cores, MobileNetV3-small: 1.1 ms against 0.7 at batch 1, 600 against 980 samples/s at batch 16).
        Parallel callers get parallel streams from the latency layout too, and tune.py measures them."""
        return [BuildConfig(self.name, precision, device, OpenVinoOptions())
                for precision in (Precision.FP32, Precision.BF16, Precision.INT8)]

    def unavailable_reason(self, config: BuildConfig, source: ModelSource) -> str | None:
        missing = self.missing_packages_reason(config)
        if missing:
            return missing
        if config.precision not in (Precision.FP32, Precision.BF16, Precision.INT8):
            return f"the openvino backend builds fp32, bf16 and int8, not {config.precision.value}"
        if config.precision is Precision.BF16 and native_bf16_reason():
            return native_bf16_reason()
        return super().unavailable_reason(config, source)

    def build(self, source: ModelSource, config: BuildConfig, out_dir: Path, *,
              calibration: Dataset | None = None) -> Artifact:
        """Write model.xml/.bin (weights kept in f32) and compiled/<hash>.blob. Raises BuildError."""
        import openvino as ov

        options = OpenVinoOptions.of(config)
        if config.precision is Precision.INT8 and calibration is None:
            raise BuildError("openvino int8 quantizes activations with scales measured on calibration samples, and "
                             "none were given: pass calibration data (--calibration, or --data with real samples)")
        model, converter = convert(source)
        details: dict[str, Any] = {"converter": converter, "hint": options.hint, "openvino": ov.get_version(),
                                   "inference_precision": _inference_precision(config.precision),
                                   "compiled_cache": CACHE}
        if config.precision is Precision.INT8:
            assert calibration is not None
            model, details["nncf"] = _quantize(model, source.spec, calibration, options.keep_fp32)
            details["calibration"] = calibration.origin
        ov.save_model(model, str(out_dir / MODEL), compress_to_fp16=False)
        core = ov.Core()
        # Compile the IR as load will read it, so that the cache key (a hash of the model) is the same.
        core.compile_model(core.read_model(str(out_dir / MODEL)), "CPU",
                           {**_compile_settings(options.hint, 1, config.precision), "CACHE_DIR": str(out_dir / CACHE)})
        if not any((out_dir / CACHE).glob("*.blob")):
            raise BuildError(f"openvino wrote no compiled blob into {out_dir / CACHE}")
        major, minor = (version_of("openvino") or "0.0").split(".")[:2]
        # The IR reads on the release that wrote it or a later one (minor releases add opsets); the blob
        # only on the same build, which OpenVINO checks itself at load (a miss compiles the IR instead).
        requires = {"package:openvino": f">={major}.{minor}"}
        if config.precision is Precision.BF16:
            requires["cpu_flag:avx512_bf16"] = "yes"
        return artifact_from_dir(config, out_dir, requires, details)

    def load(self, artifact: Artifact, spec: ModelSpec, threads: int) -> Runner:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(artifact.directory / MODEL))
        settings = _compile_settings(OpenVinoOptions.of(artifact.config).hint, threads, artifact.config.precision)
        with tempfile.TemporaryDirectory(prefix="inferforge-openvino-") as cache:
            for blob in (artifact.directory / CACHE).glob("*.blob"):
                shutil.copyfile(blob, Path(cache) / blob.name)
            compiled = core.compile_model(model, "CPU", {**settings, "CACHE_DIR": cache})
        return OpenVinoRunner(spec, artifact, compiled)

    def sensitive_layers(self, source: ModelSource, config: BuildConfig, artifact: Artifact,
                         calibration: Dataset) -> list[str]:
        """The operations that compute on quantized inputs, ranked by the error each adds: the relative error
        of its output (INT8 model against FP32 model) minus the largest relative error already present in
        its inputs. Costs a conversion and one inference of each model on up to SENSITIVITY_SAMPLES samples."""
        import openvino as ov

        core = ov.Core()
        quantized = core.read_model(str(artifact.directory / MODEL))
        reference, _ = convert(source)
        reference_ops = {op.get_friendly_name(): op for op in reference.get_ordered_ops()}
        targets = [op.get_friendly_name() for op in quantized.get_ordered_ops()
                   if op.get_friendly_name() in reference_ops and op.get_type_name() not in _PASS_THROUGH
                   and any(_producer(i).get_node().get_type_name() == "FakeQuantize" for i in op.inputs())]
        producers = {name: [_port_key(_producer(i)) for i in reference_ops[name].inputs()
                            if _producer(i).get_node().get_type_name() not in ("Constant", "Parameter")]
                     for name in targets}
        ports = {(name, 0) for name in targets} | {p for keys in producers.values() for p in keys}
        batch = calibration.take(min(len(calibration), SENSITIVITY_SAMPLES))
        inputs = [batch[name] for name in source.spec.input_names]
        want, got = _port_values(core, reference, ports, inputs), _port_values(core, quantized, ports, inputs)
        # float64: some ports carry booleans or integers (masks, indices), which numpy will not subtract as such.
        as_float = {key: (got[key].astype(np.float64), want[key].astype(np.float64))
                    for key in want.keys() & got.keys() if got[key].shape == want[key].shape}
        error = {key: float(np.linalg.norm(g - w) / (np.linalg.norm(w) + 1e-12)) for key, (g, w) in as_float.items()}
        added = {name: error.get((name, 0), 0.0) - max((error.get(p, 0.0) for p in producers[name]), default=0.0)
                 for name in targets}
        return sorted(targets, key=lambda name: -added[name])


class OpenVinoRunner(Runner):
    """One InferRequest per calling thread, created on its first call: a request runs one inference at a
    time, the server and the tuner call one runner from several threads, and the compiled model schedules
    all requests on its streams. ``loaded_from_cache``: the load used the compiled blob, not a compile."""

    native = "numpy"

    def __init__(self, spec: ModelSpec, artifact: Artifact, compiled: Any) -> None:
        super().__init__(spec, artifact)
        if len(compiled.inputs) != len(spec.inputs) or len(compiled.outputs) != len(spec.outputs):
            raise BuildError(f"the OpenVINO model takes {len(compiled.inputs)} inputs and gives "
                             f"{len(compiled.outputs)} outputs; the spec has {len(spec.inputs)} and {len(spec.outputs)}")
        self.compiled = compiled
        self.loaded_from_cache = bool(compiled.get_property("LOADED_FROM_CACHE"))
        self._local = threading.local()

    def run_native(self, args: list[Any]) -> list[Any]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        results = request.infer(args, share_inputs=True)  # outputs are copied: the next call reuses buffers
        return [results[i] for i in range(len(self.spec.outputs))]

    def threads(self) -> int:
        """Threads are shared among the streams; one call runs on one stream's share."""
        compiled = self.compiled
        return max(1, int(compiled.get_property("INFERENCE_NUM_THREADS")) // int(compiled.get_property("NUM_STREAMS")))

    def profile_operators(self, inputs: Mapping[str, Any], runs: int, trace_path: Path | None) -> OperatorProfile:
        """A second compiled model with the runner's settings plus performance counters, by node type.

        The CPU plugin's counters are a running mean over every inference of the compiled model (seen on
        2026.4: one cold run then 200 warm ones read about 1 us), so the warm-up's share is taken out of
        the mean after all runs. OpenVINO gives durations, not start times: the trace lays the nodes of
        one mean run end to end."""
        import openvino as ov

        runs = max(1, runs)  # the counters cost little and need many runs for their 1 us resolution

        xml = [f for f in self.artifact.files if f.endswith(".xml")]
        if not xml:
            return OperatorProfile("openvino", "", (), 0, None, "the artifact has no OpenVINO IR (.xml) to profile")
        settings = {k: self.compiled.get_property(k) for k in ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS",
                                                                 "NUM_STREAMS", "INFERENCE_PRECISION_HINT")}
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(self.artifact.directory / xml[0])), "CPU",
                                      {**settings, ov.properties.enable_profiling(): True})
        request = compiled.create_infer_request()
        args = self.to_native(inputs)

        def mean_us() -> dict[str, tuple[str, str, float]]:
            return {i.node_name: (i.node_type, i.exec_type, i.real_time.total_seconds() * 1e6)
                    for i in request.get_profiling_info() if i.status == i.Status.EXECUTED}

        for _ in range(WARMUP_RUNS):
            request.infer(args)
        warm = mean_us()
        for _ in range(runs):
            request.infer(args)
        totals: dict[str, tuple[int, float]] = {}
        events: list[dict[str, Any]] = []
        clock_us = 0.0
        for name, (node_type, exec_type, mean) in mean_us().items():
            us = max(0.0, (mean * (WARMUP_RUNS + runs) - warm.get(name, ("", "", 0.0))[2] * WARMUP_RUNS) / runs)
            calls, total = totals.get(node_type, (0, 0.0))
            totals[node_type] = (calls + runs, total + us * runs)
            events.append({"name": name, "cat": node_type, "ph": "X", "ts": clock_us, "dur": us, "pid": 0, "tid": 0,
                           "args": {"exec_type": exec_type, "mean_of_runs": runs}})
            clock_us += us
        write_trace(trace_path, events)
        return OperatorProfile("openvino", "node real time", top_operators(totals, runs), runs,
                               str(trace_path) if trace_path else None)


def convert(source: ModelSource) -> tuple[Any, str]:
    """The source as an ov.Model whose inputs and outputs are named and shaped as the spec says, and
    which converter made it. Raises BuildError with each converter's message."""
    import openvino as ov

    if source.kind is SourceKind.ONNX:
        assert source.path is not None
        model, converter = ov.convert_model(str(source.path)), "onnx"
    else:
        model, converter = _convert_torch(source)
    if len(model.inputs) != len(source.spec.inputs) or len(model.outputs) != len(source.spec.outputs):
        raise BuildError(f"the converted model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                         f"the spec has {len(source.spec.inputs)} and {len(source.spec.outputs)}")
    try:
        model.reshape({i: _partial_shape(s) for i, s in enumerate(source.spec.inputs)})
    except Exception as exc:
        raise BuildError(f"the converted model does not take the spec's shapes: {one_line(exc, 200)}") from exc
    for port, spec in [*zip(model.inputs, source.spec.inputs, strict=True),
                       *zip(model.outputs, source.spec.outputs, strict=True)]:
        port.get_tensor().set_names({spec.name})
    return model, converter


def _convert_torch(source: ModelSource) -> tuple[Any, str]:
    import openvino as ov
    import torch

    errors = []
    if source.kind is not SourceKind.TORCHSCRIPT:
        try:
            with quiet():
                return ov.convert_model(source.exported_program()), "torch.export"
        except Exception as exc:
            errors.append(f"from torch.export: {one_line(exc, 200)}")
    examples = tuple(torch.from_numpy(v) for v in at_least_batch_2(source.spec, source.example_inputs).values())
    try:
        with quiet():
            model = ov.convert_model(source.module, example_input=examples,
                                     input=[_partial_shape(s) for s in source.spec.inputs])
        return model, "trace"
    except Exception as exc:
        errors.append(f"from a TorchScript trace: {one_line(exc, 200)}")
    raise BuildError("OpenVINO conversion failed. " + " | ".join(errors))


def _partial_shape(spec: TensorSpec) -> Any:
    import openvino as ov

    return ov.PartialShape([-1 if isinstance(d, Dim) else d for d in spec.shape])


def _inference_precision(precision: Precision) -> str:
    return "bf16" if precision is Precision.BF16 else INFERENCE_PRECISION


def _compile_settings(hint: str, threads: int, precision: Precision = Precision.FP32) -> dict[str, Any]:
    """``threads`` per request. With the latency hint, as many streams (requests running at once) as the
    cores hold at that many threads each: one stream queues every caller behind one request, so the
    server's and the tuner's parallel instances of one runner would gain nothing. The throughput hint
    lets OpenVINO split ``threads`` into streams itself."""
    settings = {"PERFORMANCE_HINT": HINTS[hint], "INFERENCE_PRECISION_HINT": _inference_precision(precision)}
    if hint != "latency":
        return {**settings, "INFERENCE_NUM_THREADS": threads}
    streams = max(1, usable_cores() // threads)
    return {**settings, "NUM_STREAMS": streams, "INFERENCE_NUM_THREADS": streams * threads}


def _quantize(model: Any, spec: ModelSpec, calibration: Dataset, keep_fp32: tuple[str, ...]) -> tuple[Any, dict]:
    """NNCF post-training INT8 with one calibration sample per step (its statistics assume batch 1)."""
    import nncf

    names = {op.get_friendly_name() for op in model.get_ordered_ops()}
    unknown = [name for name in keep_fp32 if name not in names]
    if unknown:
        raise BuildError(f"keep_fp32 names {unknown} are not operations of the converted model; give names "
                         "from the IR (openvino's friendly names), as sensitive_layers returns them")
    # Integer inputs are token ids (and masks): NNCF's default type would also quantize the elementwise
    # arithmetic on their embeddings (pooling, masking), clipping it to the calibration range.
    transformer = any(not s.is_float for s in spec.inputs) or _has_attention(model)
    samples = [[calibration.inputs[n][i : i + 1] for n in spec.input_names] for i in range(len(calibration))]
    nncf_log = logging.getLogger("nncf")  # it logs each ignored node at INFO, past quiet's redirect
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        with quiet():
            quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                                      model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                                      ignored_scope=nncf.IgnoredScope(names=list(keep_fp32)))
    finally:
        nncf_log.setLevel(level)
    return quantized, {"nncf": version_of("nncf"), "model_type": "transformer" if transformer else "default",
                       "preset": "mixed" if transformer else "performance", "subset_size": len(samples),
                       "fast_bias_correction": True, "keep_fp32": list(keep_fp32)}


def _has_attention(model: Any) -> bool:
    """Attention multiplies two computed tensors (queries by keys, weights by values), where dense and
    convolution layers multiply by constant weights; NNCF's TRANSFORMER type then keeps the parts that
    INT8 hurts there (softmax, layer-norm inputs, bias-free additions) in floating point."""
    return any(op.get_type_name() == "ScaledDotProductAttention"
               or (op.get_type_name() == "MatMul"
                   and all(_producer(i).get_node().get_type_name() != "Constant" for i in op.inputs()))
               for op in model.get_ordered_ops())


def _producer(op_input: Any) -> Any:
    """The output port that feeds an operation's input, looking through reshapes and conversions."""
    port = op_input.get_source_output()
    while port.get_node().get_type_name() in _PASS_THROUGH:
        port = port.get_node().input(0).get_source_output()
    return port


def _port_key(port: Any) -> tuple[str, int]:
    return port.get_node().get_friendly_name(), port.get_index()


def _port_values(core: Any, model: Any, ports: set[tuple[str, int]], inputs: list[np.ndarray]) -> dict:
    """The values of the named operation outputs (those the model has) on ``inputs``, in f32."""
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    model.add_outputs([ops[name].output(index) for name, index in ports if name in ops])
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION})
    results = compiled.create_infer_request().infer(inputs)
    keys = [_port_key(result.input_value(0)) for result in model.get_results()]
    return {key: np.asarray(value) for key, value in zip(keys, results.values(), strict=True)}
