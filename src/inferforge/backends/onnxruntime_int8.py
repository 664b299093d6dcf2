"""ONNX Runtime INT8: quantize the exported FP32 model, dynamic or static QDQ, and rank nodes by harm.

The recipe, measured on the 2-core AVX2 CPU without VNNI (onnxruntime 1.32, 1 thread, median CPU time per
run, since other work shared the machine; cosine against ORT FP32 on held-out inputs):

- static: activations QUInt8, weights QInt8 per channel (U8S8), QDQ format. ORT's default QInt8 activations
  (S8S8) ran ResNet-18 at batch 1 in 15.1 ms against 5.7 ms for U8S8 (FP32: 17.4 ms). ``reduce_range``,
  which ORT suggests against U8S8 saturation without VNNI, changed no speed and lowered cosine (0.99965
  against 0.99985), so it is off. Entropy and percentile calibration matched MinMax on ResNet-18 and the
  digits CNN, did not rescue static MiniLM (cosine 0.38 against 0.37) and took 2-4x longer; entropy even
  raised on MiniLM ("too many bins"). Histogram calibrators also need equal batch shapes, hence ``_feeds``.
- dynamic: weights QInt8 per channel. On all-MiniLM-L6-v2 (seq 128): 10.8 ms, cosine 0.9931; per tensor
  12.7 ms, cosine 0.964; QUInt8 weights (U8U8 kernels) 15.0-15.7 ms; FP32 22.5 ms. Conv is left out:
  ConvInteger ran ResNet-18 5.6x slower than FP32.
- ``quant_pre_process`` (shape inference and ORT's basic optimizations, as ORT recommends) made no
  measurable difference on ResNet-18 or MiniLM, but costs only 1-3 s and gives the quantizer shapes an ONNX
  file from elsewhere may lack. On MiniLM its symbolic shape inference raises TypeError; it is retried
  without (it then works), and skipped if that fails too; the artifact says which.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inferforge.backends.onnx_common import MODEL, BuildMemo, OnnxRuntimeOptions, create_session, quiet
from inferforge.data import Dataset
from inferforge.errors import BuildError, one_line
from inferforge.source import ModelSource

if TYPE_CHECKING:
    import onnx


CALIBRATION_BATCH = 8  # samples per calibration run when every input has a dynamic batch axis
SENSITIVITY_SAMPLES = 8  # calibration samples both models run on to rank nodes
_QUANTIZED_INPUT_PRODUCERS = ("DequantizeLinear", "DynamicQuantizeLinear", "QuantizeLinear")
_QUANTIZED_DTYPES = (2, 3)  # onnx.TensorProto.UINT8, INT8: weights stored quantized


def quantize(fp32: Path, out: Path, options: OnnxRuntimeOptions, calibration: Dataset | None, memo: BuildMemo,
             source: ModelSource) -> dict[str, Any]:
    """Quantize the FP32 model ``fp32`` into ``out``; returns the details the artifact records.

    Raises BuildError when static mode has no calibration data, when ``keep_fp32`` names a node the
    model does not have, or when ONNX Runtime's quantizer fails.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    if options.mode == "static" and calibration is None:
        raise BuildError("static INT8 needs calibration samples to fix activation scales, and none came: pass "
                         "calibration= (optimize() and the CLI do, from --calibration or the validation data), "
                         "or use mode 'dynamic'")
    with tempfile.TemporaryDirectory(prefix="inferforge-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        preprocess = memo.file(f"prepared-{options.mode}", (source,), prepared,
                               lambda path: _prepare(fp32, path, options.mode))
        model = onnx.load(str(prepared))
        unknown = sorted(set(options.keep_fp32) - {n.name for n in model.graph.node})
        if unknown:
            raise BuildError(f"keep_fp32 names nodes the model does not have: {', '.join(unknown)} (use the names "
                             "sensitive_layers reports: nodes of the model as prepared for quantization)")
        quantized = Path(tmp) / MODEL
        details: dict[str, Any] = {"quantization": options.mode, "per_channel": options.per_channel,
                                   "weight_type": "int8", "quant_pre_process": preprocess}
        feeds = _feeds(model, calibration, len(calibration)) if options.mode == "static" and calibration else []
        try:
            with quiet():
                if options.mode == "dynamic":  # QInt8 weights: U8S8 kernels, 1.4x QUInt8's speed on MiniLM
                    quantize_dynamic(prepared, quantized, per_channel=options.per_channel, reduce_range=reduce_range(),
                                     weight_type=QuantType.QInt8, nodes_to_exclude=list(options.keep_fp32),
                                     op_types_to_quantize=sorted(set(IntegerOpsRegistry) - {"Conv"}))
                elif calibration is not None:
                    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                              "percentile": CalibrationMethod.Percentile}[options.calibrate]
                    # Ranges do not depend on keep_fp32: keep_fp32 retries reuse them instead of calibrating again.
                    ranges, owners = Path(tmp) / "ranges.json", (source, calibration)
                    memo.restore(f"ranges-{options.calibrate}", owners, ranges)
                    quantize_static(prepared, quantized, _reader(feeds),
                                    quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                    calibrate_method=method, nodes_to_exclude=list(options.keep_fp32),
                                    calibration_cache_path=ranges, reduce_range=reduce_range())
                    memo.store(f"ranges-{options.calibrate}", owners, ranges)
                    details |= {"activation_type": "uint8", "calibrate": options.calibrate,
                                "calibration": calibration.origin, "calibration_samples": len(calibration)}
        except Exception as exc:
            raise BuildError(f"ONNX Runtime {options.mode} quantization failed: {one_line(exc)}") from exc
        int8 = onnx.load(str(quantized))
        if options.mode == "static" and options.keep_fp32:
            _feed_kept_nodes_fp32(int8.graph, set(options.keep_fp32))
        onnx.save(int8, str(out))
    details |= {"reduce_range": reduce_range(), "keep_fp32": list(options.keep_fp32), "quantized_nodes": len(quantized_nodes(model, int8))}
    return details


def _prepare(fp32: Path, out: Path, mode: str) -> str:
    """``quant_pre_process`` (retried without symbolic shape inference), then, for dynamic mode, Gemm as
    MatMul + Add: quantize_dynamic does that itself before it reads ``nodes_to_exclude``, so without it a
    Gemm could never be kept in FP32 by the name the sensitivity ranking gives. Returns how it went."""
    import onnx
    from onnxruntime.quantization.onnx_model import ONNXModel
    from onnxruntime.quantization.shape_inference import quant_pre_process

    note = "shape inference and optimization"
    # Symbolic shape inference writes sym_shape_infer_temp.onnx and its external data into the current
    # directory, and leaves them there when it raises: run it from the build's temporary folder.
    try:
        with quiet(), contextlib.chdir(out.parent):
            quant_pre_process(str(fp32.resolve()), str(out.resolve()))
    except Exception as exc:
        note = f"without symbolic shape inference, which raised {one_line(exc, 120)}"
        try:
            with quiet(), contextlib.chdir(out.parent):
                quant_pre_process(str(fp32.resolve()), str(out.resolve()), skip_symbolic_shape=True)
        except Exception as again:
            note = f"skipped: it raised {one_line(again, 120)}"
            out.write_bytes(fp32.read_bytes())
    if mode == "dynamic":
        model = onnx.load(str(out))
        ONNXModel(model).replace_gemm_with_matmul()
        onnx.save(model, str(out))
    return note


def _feeds(model: onnx.ModelProto, data: Dataset, count: int) -> list[dict[str, np.ndarray]]:
    """``count`` samples as model feeds of equal shape: batches of CALIBRATION_BATCH when every input has
    a dynamic first axis, else single samples. The last batch wraps around to the first samples."""
    initializers = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    missing = [n for n in names if n not in data.inputs]
    if missing:
        raise BuildError(f"the samples have no array for model input(s) {', '.join(missing)} "
                         f"(they hold {', '.join(data.inputs)})")
    dims = [i.type.tensor_type.shape.dim for i in model.graph.input if i.name in names]
    dynamic = all(len(d) > 0 and not d[0].HasField("dim_value") for d in dims)
    batch = min(CALIBRATION_BATCH, count) if dynamic else 1
    feeds = []
    for start in range(0, count, batch):
        taken = data.take(batch, start)
        feeds.append({n: taken[n] for n in names})
    return feeds


def _reader(feeds: list[dict[str, np.ndarray]]) -> Any:
    """An ORT CalibrationDataReader over prepared feeds."""
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    return FeedReader()


def _feed_kept_nodes_fp32(graph: onnx.GraphProto, keep: set[str]) -> None:
    """Give each kept node its FP32 activations. ORT leaves an excluded node's weights in FP32 but still
    feeds it QuantizeLinear -> DequantizeLinear when the producer's output is quantized for other nodes, so
    excluding a node whose input range is the problem changed nothing (an MLP with one fragile layer: cosine
    0.495 with or without it). Rewire its inputs to the tensor before QuantizeLinear and drop Q/DQ nodes
    nobody reads; a producer left without output quantization then runs in float on its quantized inputs."""
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.name not in keep:
            continue
        for index, name in enumerate(node.input):
            dq = producers.get(name)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]
    while True:
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        unread = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                  and not any(o in read for o in n.output)]
        if not unread:
            break
        for node in unread:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)


def reduce_range() -> bool:
    """7-bit weights where the CPU has no VNNI: ONNX Runtime's u8 x s8 kernels then add pairs of products in
    int16 (AVX2's vpmaddubsw), which saturates with full-range weights (measured on an AVX2-only EPYC: a
    wide MLP's dynamic INT8 cosine 0.980 with 8-bit weights, 0.999 or more with 7-bit ones). VNNI adds in int32."""
    from inferforge.environment import cpu_flags

    return not cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"}


def quantized_nodes(fp32: onnx.ModelProto, int8: onnx.ModelProto) -> list[str]:
    """Names of the FP32 model's nodes that the INT8 model computes on quantized inputs, in graph order.

    A node's INT8 counterpart keeps its name (static QDQ, dynamic Gather) or gets "_quant" appended
    (dynamic MatMulInteger, ConvInteger); it is quantized when one of its inputs is produced by
    (De)QuantizeLinear or DynamicQuantizeLinear, or is a weight stored as int8/uint8.
    """
    graph = int8.graph
    by_name = {node.name: node for node in graph.node}
    producers = {out: node.op_type for node in graph.node for out in node.output}
    integer_weights = {t.name for t in graph.initializer if t.data_type in _QUANTIZED_DTYPES}
    names = []
    for node in fp32.graph.node:
        twin = by_name.get(node.name) or by_name.get(f"{node.name}_quant")
        if twin is not None and any(producers.get(i) in _QUANTIZED_INPUT_PRODUCERS or i in integer_weights
                                    for i in twin.input):
            names.append(node.name)
    return names


def sensitive_nodes(write_fp32: Callable[[Path], Any], source: ModelSource, options: OnnxRuntimeOptions,
                    int8_path: Path, calibration: Dataset, memo: BuildMemo, threads: int) -> list[str]:
    """The quantized nodes of the INT8 model at ``int8_path``, most harmful first, named as ``keep_fp32``
    takes them; ranked on the first SENSITIVITY_SAMPLES calibration samples (rank_sensitive_nodes)."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="inferforge-int8-") as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"

        def prepare(path: Path) -> str:
            write_fp32(fp32)
            return _prepare(fp32, path, options.mode)

        memo.file(f"prepared-{options.mode}", (source,), prepared, prepare)
        reference = onnx.load(str(prepared))
        feeds = _feeds(reference, calibration, min(SENSITIVITY_SAMPLES, len(calibration)))
        return rank_sensitive_nodes(reference, onnx.load(str(int8_path)), feeds, Path(tmp), threads)


def rank_sensitive_nodes(fp32: onnx.ModelProto, int8: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                         scratch: Path, threads: int) -> list[str]:
    """Quantized nodes (``quantized_nodes``) worst first, by the quantization noise each adds itself.

    Both models run unoptimized on ``feeds`` (QDQ pairs stay as fake quantization in float, and no fusion
    hides a tensor) with each node's output and float activation inputs exposed as graph outputs. For a
    tensor t, ``nsr(t) = sum |t_int8 - t_fp32|^2 / sum |t_fp32|^2`` over the samples: noise power over
    signal power, 1/SQNR. A node scores ``nsr(output) - max nsr(inputs)``: the noise at its output beyond
    what reached it, i.e. what quantizing its own inputs and weights adds (independent noises add in
    power), so an early error is not blamed on every node after it, and one pass of each model ranks all
    nodes. Nodes whose output the INT8 graph no longer holds in float (a dynamic Gather feeding
    MatMulInteger) cannot be scored and come last, in graph order.
    """
    import onnx
    from onnxruntime.quantization.quant_utils import QUANT_INPUT_SUFFIX

    weights = {t.name for t in fp32.graph.initializer}
    float_tensors = [_tensor_names(fp32.graph), _tensor_names(int8.graph)]
    twins = {node.name: node for node in int8.graph.node}
    nodes = {node.name: node for node in fp32.graph.node}
    plan: dict[str, tuple[str | None, list[str]]] = {}  # node -> (output compared, inputs compared)
    for name in quantized_nodes(fp32, int8):
        twin = twins.get(name)  # static QDQ keeps the node; its output may be renamed before a QuantizeLinear
        output = (twin or nodes[name]).output[0].removesuffix(QUANT_INPUT_SUFFIX)
        inputs = [i for i in nodes[name].input if i and i not in weights and all(i in t for t in float_tensors)]
        plan[name] = (output if all(output in t for t in float_tensors) else None, inputs)
    wanted = sorted({t for out, ins in plan.values() for t in (*ins, *([out] if out else []))})
    noise: dict[str, float] = dict.fromkeys(wanted, 0.0)
    power: dict[str, float] = dict.fromkeys(wanted, 0.0)
    sessions = []
    for index, model in enumerate((fp32, int8)):
        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        present = {o.name for o in exposed.graph.output}
        exposed.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted if t not in present)
        onnx.save(exposed, str(scratch / f"exposed-{index}.onnx"))
        sessions.append(create_session(scratch / f"exposed-{index}.onnx", threads, optimize=False))
    for feed in feeds:
        reference, quantized = (dict(zip(wanted, s.run(wanted, feed), strict=True)) for s in sessions)
        for t in wanted:
            if np.issubdtype(reference[t].dtype, np.floating):
                ref = reference[t].astype(np.float64)
                noise[t] += float(np.sum((quantized[t].astype(np.float64) - ref) ** 2))
                power[t] += float(np.sum(ref**2))

    def nsr(tensor: str) -> float:
        return noise[tensor] / max(power[tensor], 1e-30)

    scores = {name: nsr(out) - max((nsr(i) for i in ins), default=0.0)
              for name, (out, ins) in plan.items() if out is not None}
    scored = sorted(scores, key=lambda name: -scores[name])  # stable: ties keep graph order
    return scored + [name for name in plan if name not in scores]


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Tensors a graph computes or takes as input (not its weights)."""
    return {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
