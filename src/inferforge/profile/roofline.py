"""The roofline: FLOPs counted on a program from the package, the bytes a call must move at the least, and
this machine's peaks measured here (a large matmul, a large copy), never taken from a spec sheet.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.backends.base import Runner
from inferforge.types import ModelSpec

PEAK_SECONDS = 0.25  # per peak measurement loop
# The matmul peak an artifact of each precision is compared with (MachinePeak.matmul_flops_per_s keys): an INT8
# model measured against the FP32 peak read "145% of peak".
PEAK_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "tf32": "tfloat32", "int8": "int8", "fp8": "float8"}


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


def roofline_of(package: Path, runner: Runner, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, Any],
                compute_ms: float, threads: int) -> Roofline:
    """The model's achieved rates over the compute-stage median against this machine's measured peaks."""
    flops, source, param_bytes, params_from = count_package_flops(package, runner.spec, _batch_of(runner.spec, inputs))
    io_bytes = sum(np.asarray(v).nbytes for v in inputs.values()) + sum(np.asarray(v).nbytes for v in outputs.values())
    peak = measure_peak("cuda" if runner.device.startswith("cuda") else "cpu", threads)
    dtype = PEAK_DTYPE.get(runner.artifact.config.precision.value, "float32")
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
            return (count, f"matrix products and convolutions of {name} (float and quantized; other ONNX ops "
                           "are not counted)", param_bytes,
                    f"initializers of {name}")
        tried.append(f"{name}: shapes of its matrix product and convolution nodes are not all known")
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
        if node.op_type not in COUNTED_ONNX_OPS:
            continue
        first, second = COUNTED_ONNX_OPS[node.op_type]
        a, b, out = shapes.get(node.input[first]), shapes.get(node.input[second]), shapes.get(node.output[0])
        if a is None or b is None or out is None:
            return None, param_bytes
        if node.op_type == "Gemm":
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            flops += 2 * math.prod(out) * (a[0] if trans_a else a[1])
        elif "Conv" in node.op_type:  # weight (C_out, C_in / groups, *kernel)
            flops += 2 * math.prod(out) * math.prod(b[1:])
        else:  # a matrix product: the inner dim is A's last
            flops += 2 * math.prod(out) * a[-1]
    return flops, param_bytes


# The ONNX ops counted, float and quantized (what ONNX Runtime's quantizers write), with the input positions
# of the two operands (QLinear ops put scales and zero points between them).
COUNTED_ONNX_OPS = {"MatMul": (0, 1), "Gemm": (0, 1), "Conv": (0, 1), "MatMulInteger": (0, 1), "ConvInteger": (0, 1),
                    "QLinearMatMul": (0, 3), "QLinearConv": (0, 3)}


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
        matmul |= _int8_peak(n, threads, sync) if on_cuda else _onnxruntime_int8_peak(n, threads)
        if on_cuda and torch.cuda.get_device_capability() >= (8, 9):
            a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
            b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()
            one = torch.ones((), device=device)
            matmul["float8"] = 2 * n**3 / _best_seconds(
                functools.partial(torch._scaled_mm, a, b, one, one, out_dtype=torch.bfloat16), sync)
        elements = 1 << 28 if on_cuda else 1 << 25  # 1 GiB / 128 MiB of float32: larger than the caches
        src, dst = torch.ones(elements, device=device), torch.empty(elements, device=device)
        copy = 2 * src.numel() * src.element_size() / _best_seconds(functools.partial(dst.copy_, src), sync)
    finally:
        torch.set_num_threads(before[0])
        torch.backends.cuda.matmul.allow_tf32 = before[1]
    return MachinePeak(device, threads, matmul, copy, f"best of {PEAK_SECONDS} s loops: {n}x{n} matmul per "
                       f"dtype, copy of {elements * 4 >> 20} MiB float32 (bytes read + written)")


def _int8_peak(n: int, threads: int, sync: Callable[[], Any]) -> dict[str, float]:
    """CUDA: cuBLASLt's int8 x int8 -> int32 product (torch._int_mm)."""
    import torch

    a, b = (torch.randint(-128, 127, (n, n), dtype=torch.int8, device="cuda") for _ in range(2))
    return {"int8": 2 * n**3 / _best_seconds(functools.partial(torch._int_mm, a, b), sync)}


def _onnxruntime_int8_peak(n: int, threads: int) -> dict[str, float]:
    """CPU: ONNX Runtime's MatMulInteger (u8 x s8, MLAS), the kernel the INT8 artifacts run on this CPU (torch's
    CPU int8 product is a reference loop, 50x slower than FP32). Empty without onnxruntime."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return {}
    weight = helper.make_tensor("w", TensorProto.INT8, (n, n), np.random.default_rng(0).integers(
        -127, 127, (n, n), dtype=np.int8).tobytes(), raw=True)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "int8_peak",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, (n, n))],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, (n, n))], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx.shape_inference.infer_shapes(model).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"a": np.random.default_rng(1).integers(0, 255, (n, n), dtype=np.uint8)}
    return {"int8": 2 * n**3 / _best_seconds(functools.partial(session.run, None, feed), lambda: None)}


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
