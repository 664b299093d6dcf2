"""Where a packaged model's time goes: call stages, top operators, and a measured roofline.

``inferforge profile PACKAGE`` answers "why is it this slow?" in three views:

- **Stages.** The stages are timed in the same loop as whole ``runner(inputs)`` calls, alternating which
  comes first, so noise and cache state hit both alike and their medians can be compared: the stage
  medians add up to the whole-call median (the ratio is reported), which says the breakdown misses nothing.
- **Operators**, from each runtime's own profiler (torch.profiler, ONNX Runtime's session profiling,
  OpenVINO's performance counters), with a Chrome trace. A runtime that cannot be profiled gets a
  reason, never made-up numbers.
- **Roofline.** FLOPs counted on a program from the package, bytes that a call must move at the least,
  and the machine's peaks measured here (a large matmul, a large copy), never taken from a spec sheet.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.backends.base import Runner, convert
from inferforge.types import ModelSpec, check_inputs

TOP_OPERATORS = 15
WARMUP_RUNS = 3
PROFILED_RUNS = 10  # runs under an event-recording profiler (it slows each run; a few suffice)
PEAK_SECONDS = 0.25  # per peak measurement loop


@dataclass(frozen=True)
class StageTime:
    name: str  # "prepare inputs", "host to device", "compute", "device to host", "convert outputs"
    median_ms: float
    share: float  # of the sum of stage medians


@dataclass(frozen=True)
class StageBreakdown:
    """Stage medians and the whole-call median, measured interleaved over the same ``runs``."""

    stages: tuple[StageTime, ...]
    whole_call_median_ms: float
    stage_sum_ms: float
    sum_to_whole: float  # stage_sum_ms / whole_call_median_ms; near 1.0 means the stages cover the call
    runs: int

    def median_ms(self, name: str) -> float:
        return next(s.median_ms for s in self.stages if s.name == name)


@dataclass(frozen=True)
class OperatorTime:
    name: str  # aten op, ONNX op type, or OpenVINO node type
    calls_per_run: float
    self_ms_per_run: float
    share: float  # of the profiled self time of all operators


@dataclass(frozen=True)
class OperatorProfile:
    """The top operators by self time, or why there are none (``unavailable``)."""

    profiler: str  # "torch.profiler", "onnxruntime", "openvino", or "none"
    time_kind: str  # what self_ms measures, e.g. "self CPU time"
    operators: tuple[OperatorTime, ...]
    profiled_runs: int
    trace_path: str | None = None
    unavailable: str | None = None


@dataclass(frozen=True)
class MachinePeak:
    """Peaks measured on this machine: best rate over a short loop of a large matmul and a large copy."""

    device: str
    threads: int
    matmul_flops_per_s: Mapping[str, float]  # by dtype: "float32" (on CUDA also "float16", "bfloat16")
    copy_bytes_per_s: float  # read + write bytes of a tensor copy larger than the caches
    how: str


@dataclass(frozen=True)
class Roofline:
    flops_per_call: int | None  # None: unknown (``flops_source`` says why)
    flops_source: str
    bytes_per_call: int
    bytes_counted: str
    peak: MachinePeak
    peak_dtype: str  # which matmul peak the model is compared with
    time_basis_ms: float  # the compute-stage median the achieved rates divide by
    achieved_flops_per_s: float | None
    achieved_bytes_per_s: float
    fraction_of_peak_flops: float | None
    fraction_of_peak_bandwidth: float
    arithmetic_intensity: float | None  # FLOPs per byte
    ridge_intensity: float  # peak FLOP/s / peak bytes/s: above it a model is compute-bound
    bound: str  # "compute", "memory" or "unknown"


@dataclass(frozen=True)
class ProfileReport:
    package: str
    artifact: str
    backend: str
    precision: str
    device: str
    batch_size: int
    threads: int
    stages: StageBreakdown
    operators: OperatorProfile
    roofline: Roofline

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def profile_package(path: str | Path, batch_size: int = 1, runs: int = 50, trace_path: Path | None = None,
                    threads: int | None = None) -> ProfileReport:
    """Load a package (the artifact ``inferforge.load`` picks) and profile it on generated inputs of
    ``batch_size``. ``trace_path``: where the Chrome trace goes (None: none is written). Raises
    InferforgeError (from ``load``) when the package is missing or cannot run here."""
    import inferforge
    from inferforge.data import generate_inputs

    runner = inferforge.load(path, threads=threads)
    inputs = generate_inputs(runner.spec, batch_size)
    stages = measure_stages(runner, inputs, runs)
    operators = profile_operators(runner, inputs, runs, trace_path)
    used_threads = runner_threads(runner)
    outputs = runner(inputs)
    roofline = roofline_of(Path(path), runner, inputs, outputs, stages.median_ms("compute"), used_threads)
    key = getattr(getattr(runner, "selection", None), "key", runner.artifact.config.key())
    return ProfileReport(str(path), key, runner.artifact.config.backend, runner.artifact.config.precision.value,
                         runner.device, batch_size, used_threads, stages, operators, roofline)


# --- stages -------------------------------------------------------------------------------------------

def measure_stages(runner: Runner, inputs: Mapping[str, Any], runs: int) -> StageBreakdown:
    """Median per stage and of whole calls over ``runs`` iterations, each iteration timing one staged
    call and one whole call, in alternating order. The collector is paused so that a collection lands
    in neither."""
    on_cuda = runner.device.startswith("cuda")
    names = ["prepare inputs", *(["host to device"] if on_cuda else []), "compute",
             *(["device to host"] if on_cuda else []), "convert outputs"]
    for _ in range(WARMUP_RUNS):
        runner(inputs)
        _staged_call(runner, inputs, on_cuda)
    staged: list[list[int]] = []
    whole: list[int] = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(max(1, runs)):
            if i % 2:
                whole.append(_whole_call(runner, inputs))
                staged.append(_staged_call(runner, inputs, on_cuda))
            else:
                staged.append(_staged_call(runner, inputs, on_cuda))
                whole.append(_whole_call(runner, inputs))
    finally:
        if enabled:
            gc.enable()
    medians = [float(np.median(column)) / 1e6 for column in zip(*staged, strict=True)]
    total = sum(medians)
    whole_ms = float(np.median(whole)) / 1e6
    return StageBreakdown(tuple(StageTime(n, m, m / total if total else 0.0) for n, m in zip(names, medians, strict=True)),
                          whole_ms, total, total / whole_ms if whole_ms else math.nan, len(whole))


def _whole_call(runner: Runner, inputs: Mapping[str, Any]) -> int:
    t0 = time.perf_counter_ns()
    runner(inputs)
    runner.synchronize()
    return time.perf_counter_ns() - t0


def _staged_call(runner: Runner, inputs: Mapping[str, Any], on_cuda: bool) -> list[int]:
    """What ``Runner.__call__`` does, cut at stage boundaries (synchronized, so that queued GPU work is
    charged to the stage that queued it). Nanoseconds per stage; CUDA adds the two copy stages."""
    clock = [time.perf_counter_ns()]
    ready = runner.fitting_numpy(inputs) if runner.native == "numpy" else None  # __call__'s fast path
    if ready is None:
        check_inputs(runner.spec.inputs, inputs)
    kind = "torch" if any(type(v).__module__.startswith("torch") for v in inputs.values()) else "numpy"  # as __call__
    if ready is not None:
        native = ready
        if on_cuda:
            clock.append(time.perf_counter_ns())
    elif on_cuda and runner.native == "torch":
        # The base conversion stays on the host; the runner's own to_native then only moves the tensors.
        host = Runner.to_native(runner, inputs)
        clock.append(time.perf_counter_ns())
        native = runner.to_native(dict(zip(runner.spec.input_names, host, strict=True)))
    else:
        native = runner.to_native(inputs)
        if on_cuda:
            clock.append(time.perf_counter_ns())  # a numpy runner copies to the GPU inside compute
    runner.synchronize()
    clock.append(time.perf_counter_ns())
    outputs = runner.run_native(native)
    runner.synchronize()
    clock.append(time.perf_counter_ns())
    if on_cuda:
        outputs = [o.cpu() if hasattr(o, "cpu") else o for o in outputs]
        runner.synchronize()
        clock.append(time.perf_counter_ns())
    _ = {s.name: convert(o, kind) for s, o in zip(runner.spec.outputs, outputs, strict=True)}
    clock.append(time.perf_counter_ns())
    return [b - a for a, b in zip(clock, clock[1:], strict=False)]


def runner_threads(runner: Runner) -> int:
    """The intra-op threads one call of this runner computes with."""
    from inferforge.backends.onnxruntime import OnnxRuntimeRunner
    from inferforge.backends.openvino import OpenVinoRunner

    if isinstance(runner, OnnxRuntimeRunner):
        return int(runner.session.get_session_options().intra_op_num_threads)
    if isinstance(runner, OpenVinoRunner):  # threads are shared among the streams; one call runs on one
        compiled = runner.compiled
        return max(1, int(compiled.get_property("INFERENCE_NUM_THREADS")) // int(compiled.get_property("NUM_STREAMS")))
    import torch

    return torch.get_num_threads()


# --- operators ----------------------------------------------------------------------------------------

def profile_operators(runner: Runner, inputs: Mapping[str, Any], runs: int,
                      trace_path: Path | None) -> OperatorProfile:
    """Top operators by self time from the runtime's own profiler; a Chrome trace to ``trace_path``.
    torch.profiler and ONNX Runtime record every event, so they profile at most PROFILED_RUNS runs;
    OpenVINO's counters cost little and need many runs for their 1 us resolution, so they take all."""
    from inferforge.backends.onnxruntime import OnnxRuntimeRunner
    from inferforge.backends.openvino import OpenVinoRunner

    runs = max(1, runs)
    if isinstance(runner, OnnxRuntimeRunner):
        return _onnxruntime_operators(runner, inputs, min(runs, PROFILED_RUNS), trace_path)
    if isinstance(runner, OpenVinoRunner):
        return _openvino_operators(runner, inputs, runs, trace_path)
    if runner.native == "torch":
        return _torch_operators(runner, inputs, min(runs, PROFILED_RUNS), trace_path)
    return OperatorProfile("none", "", (), 0, None,
                           f"no operator profiler is wired for {type(runner).__name__} "
                           f"({runner.artifact.config.backend}); stage times above still hold")


def _top(totals: Mapping[str, tuple[int, float]], runs: int) -> tuple[OperatorTime, ...]:
    """``totals``: op name -> (calls, self microseconds) over ``runs`` runs; the top by self time."""
    grand = sum(us for _, us in totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])[:TOP_OPERATORS]
    return tuple(OperatorTime(name, calls / runs, us / runs / 1e3, us / grand) for name, (calls, us) in ranked if us > 0)


def _torch_operators(runner: Runner, inputs: Mapping[str, Any], runs: int, trace_path: Path | None) -> OperatorProfile:
    from torch.profiler import ProfilerActivity, profile

    on_cuda = runner.device.startswith("cuda")
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_cuda else [])]
    with profile(activities=activities) as prof:
        for _ in range(runs):
            runner(inputs)
            runner.synchronize()
    totals: dict[str, tuple[int, float]] = {}
    for event in prof.key_averages():
        us = float(getattr(event, "self_device_time_total", 0.0)) if on_cuda else float(event.self_cpu_time_total)
        totals[event.key] = (int(event.count), us)
    if trace_path is not None:
        prof.export_chrome_trace(str(trace_path))
    operators = _top(totals, runs)
    reason = None if operators else ("torch.profiler recorded no operators: this artifact's compiled code runs "
                                     "outside PyTorch's dispatcher")
    return OperatorProfile("torch.profiler", "self CUDA time" if on_cuda else "self CPU time", operators, runs,
                           str(trace_path) if trace_path else None, reason)


def _onnxruntime_operators(runner: Any, inputs: Mapping[str, Any], runs: int,
                           trace_path: Path | None) -> OperatorProfile:
    """A second session over the artifact's .onnx file with the runner's settings plus profiling (profiling
    is fixed when a session is created); node kernel times aggregated by op type."""
    import onnxruntime as ort

    onnx_files = [f for f in runner.artifact.files if f.endswith(".onnx")]
    if not onnx_files:
        return OperatorProfile("onnxruntime", "", (), 0, None, "the artifact has no .onnx file to profile")
    loaded = runner.session.get_session_options()  # the live session's options: copy, never modify
    options = ort.SessionOptions()
    for name in ("intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level", "execution_mode",
                 "log_severity_level"):
        setattr(options, name, getattr(loaded, name))
    with tempfile.TemporaryDirectory(prefix="inferforge-profile-") as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(runner.artifact.directory / onnx_files[0]), options,
                                       providers=runner.session.get_providers())
        feed = dict(zip([i.name for i in session.get_inputs()], runner.to_native(inputs), strict=True))
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
    _write_trace(trace_path, events)
    return OperatorProfile("onnxruntime", "node kernel time", _top(totals, runs), runs,
                           str(trace_path) if trace_path else None)


def _openvino_operators(runner: Any, inputs: Mapping[str, Any], runs: int,
                        trace_path: Path | None) -> OperatorProfile:
    """A second compiled model with the runner's settings plus performance counters, by node type.

    The CPU plugin's counters are a running mean over every inference of the compiled model (seen on
    2026.4: one cold run then 200 warm ones read about 1 us), so the warm-up's share is taken out of
    the mean after all runs. OpenVINO gives durations, not start times: the trace lays the nodes of
    one mean run end to end."""
    import openvino as ov

    xml = [f for f in runner.artifact.files if f.endswith(".xml")]
    if not xml:
        return OperatorProfile("openvino", "", (), 0, None, "the artifact has no OpenVINO IR (.xml) to profile")
    settings = {k: runner.compiled.get_property(k) for k in ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS",
                                                             "NUM_STREAMS", "INFERENCE_PRECISION_HINT")}
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(runner.artifact.directory / xml[0])), "CPU",
                                  {**settings, ov.properties.enable_profiling(): True})
    request = compiled.create_infer_request()
    args = runner.to_native(inputs)

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
    _write_trace(trace_path, events)
    return OperatorProfile("openvino", "node real time", _top(totals, runs), runs,
                           str(trace_path) if trace_path else None)


def _write_trace(trace_path: Path | None, events: list[dict[str, Any]]) -> None:
    if trace_path is not None:
        Path(trace_path).write_text(json.dumps({"traceEvents": events}))


# --- roofline -----------------------------------------------------------------------------------------

def roofline_of(package: Path, runner: Runner, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, Any],
                compute_ms: float, threads: int) -> Roofline:
    """The model's achieved rates over the compute-stage median against this machine's measured peaks."""
    flops, source, param_bytes, params_from = count_package_flops(package, runner.spec, _batch_of(runner.spec, inputs))
    io_bytes = sum(np.asarray(v).nbytes for v in inputs.values()) + sum(np.asarray(v).nbytes for v in outputs.values())
    peak = measure_peak("cuda" if runner.device.startswith("cuda") else "cpu", threads)
    dtype = {"bf16": "bfloat16", "fp16": "float16", "tf32": "tfloat32"}.get(runner.artifact.config.precision.value,
                                                                           "float32")
    dtype = dtype if dtype in peak.matmul_flops_per_s else "float32"
    peak_flops = peak.matmul_flops_per_s[dtype]
    seconds = compute_ms / 1e3
    moved = param_bytes + io_bytes
    achieved_flops = flops / seconds if flops is not None and seconds > 0 else None
    achieved_bytes = moved / seconds if seconds > 0 else 0.0
    intensity = flops / moved if flops is not None and moved else None
    ridge = peak_flops / peak.copy_bytes_per_s
    bound = "unknown" if intensity is None else ("compute" if intensity >= ridge else "memory")
    return Roofline(flops, source, moved,
                    f"{params_from} as stored ({param_bytes} B, each read once) + inputs and outputs "
                    f"({io_bytes} B); intermediate activations are not counted, so this is a lower bound",
                    peak, dtype, compute_ms, achieved_flops, achieved_bytes,
                    achieved_flops / peak_flops if achieved_flops is not None else None,
                    achieved_bytes / peak.copy_bytes_per_s, intensity, ridge, bound)


def _batch_of(spec: ModelSpec, inputs: Mapping[str, np.ndarray]) -> int:
    for s in spec.inputs:
        if s.batch_axis is not None:
            return int(np.asarray(inputs[s.name]).shape[s.batch_axis])
    return 1


def count_package_flops(package: Path, spec: ModelSpec, batch_size: int) -> tuple[int | None, str, int, str]:
    """(FLOPs per call or None, where they came from, parameter bytes, where those came from). FLOPs
    from a torch.export program (``.pt2``) of any artifact in the package, else from MatMul/Gemm/Conv
    of an ONNX graph; parameter bytes as stored in that program or graph (else an IR's .bin file)."""
    from inferforge.manifest import read_manifest

    entries = read_manifest(package)["artifacts"]
    files = [package / e["path"] / f for e in entries for f in e["files"]]
    tried = []
    for file in (f for f in files if f.suffix == ".pt2"):
        name = file.relative_to(package)
        try:
            flops, param_bytes = count_program_flops(file, spec, batch_size)
            return flops, f"torch FlopCounterMode on {name}", param_bytes, f"parameters, buffers and constants of {name}"
        except Exception as exc:  # e.g. an AOTInductor package is a .pt2 but not an exported program
            tried.append(f"{name}: {type(exc).__name__}")
    for file in (f for f in files if f.suffix == ".onnx"):
        name = file.relative_to(package)
        count, param_bytes = count_onnx_flops(file, spec, batch_size)
        if count is not None:
            return (count, f"MatMul, Gemm and Conv nodes of {name} (other ONNX ops are not counted)", param_bytes,
                    f"initializers of {name}")
        tried.append(f"{name}: shapes of its MatMul/Gemm/Conv nodes are not all known")
    reason = "unknown: no torch.export program or countable ONNX graph in the package" + (
        f" ({'; '.join(tried)})" if tried else "")
    weights = [f for f in files if f.suffix == ".bin"]
    return None, reason, sum(f.stat().st_size for f in weights), (
        f"weights file {weights[0].relative_to(package)}" if weights else "no parameters found")


def count_program_flops(path: Path, spec: ModelSpec, batch_size: int) -> tuple[int, int]:
    """(FLOPs of one call at ``batch_size``, bytes of its parameters, buffers and constants), running
    the saved torch.export program on CPU under FlopCounterMode (a matmul counts 2*M*N*K)."""
    import torch

    from inferforge.data import generate_inputs

    program = torch.export.load(str(path))
    tensors = [*program.state_dict.values(), *program.constants.values()]
    param_bytes = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    args = [torch.from_numpy(v) for v in generate_inputs(spec, batch_size).values()]
    return count_flops(program.module(), args), param_bytes


def count_flops(module: Callable[..., Any], args: list[Any]) -> int:
    """FLOPs of ``module(*args)`` as torch.utils.flop_counter counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*args)
    return int(counter.get_total_flops())


def count_onnx_flops(path: Path, spec: ModelSpec, batch_size: int) -> tuple[int | None, int]:
    """(FLOPs of MatMul, Gemm and Conv nodes, or None when a shape is unknown; initializer bytes), after
    fixing the inputs' dims to ``batch_size`` and running ONNX shape inference."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {t.name: t for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    for value, s in zip(graph_inputs, spec.inputs, strict=False):
        for dim, size in zip(value.type.tensor_type.shape.dim, s.concrete_shape(batch_size), strict=False):
            dim.Clear()
            dim.dim_value = size
    model = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {name: list(t.dims) for name, t in initializers.items()}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    param_bytes = sum(numpy_helper.to_array(t).nbytes for t in initializers.values())
    flops = 0
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        a, b, out = shapes.get(node.input[0]), shapes.get(node.input[1]), shapes.get(node.output[0])
        if a is None or b is None or out is None:
            return None, param_bytes
        if node.op_type == "MatMul":
            flops += 2 * math.prod(out) * a[-1]
        elif node.op_type == "Gemm":
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            flops += 2 * math.prod(out) * (a[0] if trans_a else a[1])
        else:  # Conv: weight (C_out, C_in / groups, *kernel)
            flops += 2 * math.prod(out) * math.prod(b[1:])
    return flops, param_bytes


@functools.cache
def measure_peak(device: str, threads: int) -> MachinePeak:
    """Best matmul FLOP/s and copy bytes/s over short loops, with ``threads`` torch threads (restored).
    On CUDA also fp16, bf16 and TF32 matmuls (what those artifacts' tensor cores reach). Cached per
    process: the machine does not change between profiles."""
    import torch

    on_cuda = device == "cuda"
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    n = 8192 if on_cuda else 1024
    kinds = [("float32", torch.float32, False)]
    if on_cuda:
        kinds += [("tfloat32", torch.float32, True), ("float16", torch.float16, False),
                  ("bfloat16", torch.bfloat16, False)]
    before = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32
    torch.set_num_threads(threads)
    try:
        matmul = {}
        for name, dtype, tf32 in kinds:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
            matmul[name] = 2 * n**3 / _best_seconds(functools.partial(torch.matmul, a, b), sync)
        elements = 1 << 28 if on_cuda else 1 << 25  # 1 GiB / 128 MiB of float32: larger than the caches
        src, dst = torch.ones(elements, device=device), torch.empty(elements, device=device)
        copy = 2 * src.numel() * src.element_size() / _best_seconds(functools.partial(dst.copy_, src), sync)
    finally:
        torch.set_num_threads(before[0])
        torch.backends.cuda.matmul.allow_tf32 = before[1]
    return MachinePeak(device, threads, matmul, copy, f"best of {PEAK_SECONDS} s loops: {n}x{n} matmul per "
                       f"dtype, copy of {elements * 4 >> 20} MiB float32 (bytes read + written)")


def _best_seconds(call: Callable[[], Any], sync: Callable[[], Any]) -> float:
    call()  # warm-up: allocation, kernel selection
    sync()
    best = math.inf
    started = time.perf_counter()
    while time.perf_counter() - started < PEAK_SECONDS or best == math.inf:
        t0 = time.perf_counter_ns()
        call()
        sync()
        best = min(best, (time.perf_counter_ns() - t0) / 1e9)
    return best


# --- command line -------------------------------------------------------------------------------------

def profile_command(args: argparse.Namespace) -> int:
    """``inferforge profile PACKAGE``: print the breakdown (or JSON with ``--json``); the trace goes to
    ``--trace``, by default ``<package name>-profile-trace.json`` in the current directory."""
    trace = args.trace or Path.cwd() / f"{Path(args.package).name}-profile-trace.json"
    report = profile_package(args.package, batch_size=args.batch_size, runs=args.runs, trace_path=trace,
                             threads=args.threads)
    print(json.dumps(report.to_json(), indent=2, default=str) if args.json else format_report(report))
    return 0


def format_report(report: ProfileReport) -> str:
    s, ops, r = report.stages, report.operators, report.roofline
    lines = [f"{report.package}: {report.artifact} ({report.backend}, {report.precision}, {report.device}, "
             f"{report.threads} threads), batch {report.batch_size}, {s.runs} runs", "",
             f"{'stage':<18}{'median ms':>12}{'share':>9}"]
    lines += [f"{t.name:<18}{t.median_ms:>12.4f}{t.share:>9.1%}" for t in s.stages]
    lines += [f"{'sum of stages':<18}{s.stage_sum_ms:>12.4f}",
              f"{'whole call':<18}{s.whole_call_median_ms:>12.4f}   (sum / whole = {s.sum_to_whole:.3f})"]
    if not 0.9 <= s.sum_to_whole <= 1.1:
        lines.append("  the stages and whole calls disagree by more than 10%: latencies were noisy or bimodal (a busy "
                     "machine, more threads than free cores); rerun with more --runs or fewer --threads")
    lines.append("")
    if ops.unavailable:
        lines.append(f"operators: unavailable: {ops.unavailable}")
    else:
        lines.append(f"top operators ({ops.profiler}, {ops.time_kind}, per run over {ops.profiled_runs} runs):")
        lines += [f"  {o.name[:48]:<48}{o.self_ms_per_run:>10.4f} ms{o.share:>8.1%}  x{o.calls_per_run:g}"
                  for o in ops.operators]
    if ops.trace_path:
        lines.append(f"chrome trace: {ops.trace_path}")
    flops = "unknown" if r.flops_per_call is None else f"{r.flops_per_call:,}"
    lines += ["", f"roofline (compute stage {r.time_basis_ms:.4f} ms):", f"  FLOPs per call: {flops} ({r.flops_source})",
              f"  bytes per call: {r.bytes_per_call:,} ({r.bytes_counted})",
              f"  measured peaks: {_si(r.peak.matmul_flops_per_s[r.peak_dtype], 'FLOP/s')} {r.peak_dtype} matmul, "
              f"{_si(r.peak.copy_bytes_per_s, 'B/s')} copy ({r.peak.threads} threads)"]
    if r.achieved_flops_per_s is not None and r.fraction_of_peak_flops is not None:
        lines.append(f"  achieved: {_si(r.achieved_flops_per_s, 'FLOP/s')} ({r.fraction_of_peak_flops:.2%} of peak)")
    lines.append(f"  achieved: {_si(r.achieved_bytes_per_s, 'B/s')} ({r.fraction_of_peak_bandwidth:.2%} of peak)")
    if r.arithmetic_intensity is not None:
        lines.append(f"  arithmetic intensity {r.arithmetic_intensity:.2f} FLOP/B, ridge {r.ridge_intensity:.2f}: "
                     f"{r.bound}-bound")
    return "\n".join(lines)


def _si(value: float, unit: str) -> str:
    """3 significant digits with an SI prefix: 1.23 GFLOP/s, 456 MB/s."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"

