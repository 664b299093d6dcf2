"""``inferforge compare A B``: how far two models drift apart on the same inputs, and where it starts.

A and B are packages or model sources (factory, .pt, .pt2, .onnx). Both run on the same
samples; every output is compared. Where both sides are ONNX graphs, every intermediate
float tensor is exposed as an extra output and the two graphs run side by side in ONNX
Runtime, so the report can name the first node whose output leaves the tolerance: the
place to look when a re-export, a weight update or a quantization went wrong.
"""

from __future__ import annotations

import ast
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.capture import make_flat_module
from inferforge.data import Dataset, generated_dataset, load_dataset
from inferforge.errors import InferforgeError, SpecError
from inferforge.types import ModelSpec

DEFAULT_RTOL = 1e-3  # relative L2 error that FP32 builds of one model stay well inside
DEFAULT_SAMPLES = 64
BATCH = 16
_FLOAT_ELEM_TYPES = frozenset({1, 10, 11, 16})  # onnx FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass(frozen=True)
class OutputDiff:
    """One output of A against the same output of B (``other_name``: B's name when it differs).

    ``rel_l2``: ||b - a|| / ||a|| over all samples; ``cosine``: mean per-sample cosine;
    ``top1_agreement``: share of samples whose argmax agrees, for 2-D float outputs with >1 column.
    """

    name: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    rel_l2: float
    cosine: float
    top1_agreement: float | None
    within_tolerance: bool
    other_name: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class LayerDiff:
    """One intermediate tensor present in both ONNX graphs, with the node (of A) that produced it.

    ``scope``: the PyTorch module path the exporter recorded for the node (e.g. "encoder.fc2"), when it did.
    """

    node: str
    op_type: str
    output: str
    scope: str | None
    max_abs: float
    rel_l2: float
    within_tolerance: bool


@dataclass(frozen=True)
class LayerComparison:
    """Intermediates of two ONNX graphs, in A's graph order. ``note`` says why there are none, if so."""

    layers: tuple[LayerDiff, ...] = ()
    matched: int = 0
    only_in_a: int = 0
    only_in_b: int = 0
    note: str | None = None

    @property
    def first_divergent(self) -> LayerDiff | None:
        return next((layer for layer in self.layers if not layer.within_tolerance), None)


@dataclass(frozen=True)
class Comparison:
    """Everything ``compare`` found; ``within_tolerance`` is what the CLI's exit code reports."""

    a: str
    b: str
    samples: int
    data_origin: str
    rtol: float
    outputs: tuple[OutputDiff, ...]
    unmatched_outputs: tuple[str, ...] = ()
    layers: LayerComparison = field(default_factory=LayerComparison)

    @property
    def within_tolerance(self) -> bool:
        return not self.unmatched_outputs and all(o.within_tolerance for o in self.outputs)

    @property
    def first_divergent_layer(self) -> LayerDiff | None:
        return self.layers.first_divergent

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["within_tolerance"] = self.within_tolerance
        first = self.first_divergent_layer
        data["first_divergent_layer"] = asdict(first) if first is not None else None
        return data


# ---------------------------------------------------------------- the two sides

@dataclass
class _Side:
    description: str
    spec: ModelSpec
    outputs: Callable[[Dataset], dict[str, np.ndarray]]  # every output over the whole dataset
    onnx: Path | None  # the graph whose intermediates can be compared, if any


def _open_side(ref: str, inputs: Sequence[str], threads: int) -> _Side:
    """A package folder (has a manifest) or anything ``load_source`` takes."""
    from inferforge.manifest import MANIFEST

    path = Path(ref)
    if path.is_dir() and (path / MANIFEST).is_file():
        return _package_side(path, threads)
    if path.is_dir():
        raise InferforgeError(f"{ref} is a folder but not an inferforge package (it has no {MANIFEST}): "
                              "give a package folder, 'file.py:factory', or a .pt/.pt2/.onnx file")
    from inferforge.search import reference_outputs
    from inferforge.source import SourceKind, load_source

    source = load_source(ref, inputs=inputs)
    onnx_path = source.path if source.kind is SourceKind.ONNX else None
    return _Side(f"{source.kind.value} source {ref}", source.spec,
                 lambda dataset: reference_outputs(source, dataset, threads), onnx_path)


def _package_side(path: Path, threads: int) -> _Side:
    from inferforge.package import load
    from inferforge.validate import collect_outputs

    runner = load(path, threads=threads)
    key = getattr(runner, "selection", None)
    directory = runner.artifact.directory
    graphs = sorted(f for f in runner.artifact.files if f.endswith(".onnx"))
    onnx_file = "model.onnx" if "model.onnx" in graphs else (graphs[0] if graphs else None)
    return _Side(f"package {path} (artifact {key.key if key else runner.artifact.config.key()})", runner.spec,
                 lambda dataset: collect_outputs(runner, dataset, BATCH),
                 directory / onnx_file if onnx_file else None)


def _check_same_inputs(a: _Side, b: _Side) -> None:
    """Both sides must take the same inputs, by name and dtype; one SpecError lists every difference."""
    a_inputs = {s.name: s.dtype for s in a.spec.inputs}
    b_inputs = {s.name: s.dtype for s in b.spec.inputs}
    problems = []
    if set(a_inputs) != set(b_inputs):
        problems.append(f"A takes inputs {sorted(a_inputs)}, B takes {sorted(b_inputs)}")
    problems += [f"input {name!r} is {a_inputs[name]} in A but {b_inputs[name]} in B"
                 for name in sorted(set(a_inputs) & set(b_inputs)) if a_inputs[name] != b_inputs[name]]
    if problems:
        raise SpecError("A and B cannot run on the same inputs: " + "; ".join(problems) + ". Compare two builds "
                        "of the same model, or re-export one so its inputs carry the other's names and dtypes.")


def _dataset(data: str | None, spec: ModelSpec, samples: int) -> Dataset:
    """The user's data (at most ``samples`` of it) or ``samples`` generated ones."""
    if samples < 1:
        raise InferforgeError(f"--samples must be at least 1, got {samples}")
    if data is None:
        return generated_dataset(spec, samples)
    dataset = load_dataset(data, spec)
    if len(dataset) <= samples:
        return dataset
    labels = dataset.labels[:samples] if dataset.labels is not None else None
    return Dataset(dataset.take(samples), labels, f"{dataset.origin} (first {samples} samples)")


# ---------------------------------------------------------------- outputs

def output_diff(name: str, a: np.ndarray, b: np.ndarray, rtol: float = DEFAULT_RTOL,
                other_name: str | None = None) -> OutputDiff:
    """Difference statistics of one output (samples on axis 0); within tolerance when rel_l2 <= rtol."""
    from inferforge.validate import output_agreement

    if a.shape != b.shape:
        return OutputDiff(name, tuple(a.shape), math.inf, math.inf, math.inf, 0.0, None, False, other_name,
                          f"shape {list(a.shape)} in A, {list(b.shape)} in B")
    ref, got = a.astype(np.float64), b.astype(np.float64)
    is_scores = np.issubdtype(a.dtype, np.floating) and a.ndim == 2 and a.shape[1] > 1
    agreement = output_agreement(name, ref, got, is_scores, batched=a.ndim > 0)
    rel_l2 = _rel_l2(float(np.sum((got - ref) ** 2)), float(np.sum(ref ** 2)))
    finite = bool(np.all(np.isfinite(got)) == np.all(np.isfinite(ref)))
    return OutputDiff(name, tuple(a.shape), agreement.max_abs, agreement.mean_abs, rel_l2, agreement.cosine_mean,
                      agreement.top1_agreement, finite and rel_l2 <= rtol, other_name,
                      None if finite else "NaN or Inf on one side only")


def _rel_l2(sum_sq_diff: float, sum_sq_ref: float) -> float:
    """||diff|| / ||ref||; an all-zero reference counts any difference as infinitely far."""
    if sum_sq_ref > 0:
        return math.sqrt(sum_sq_diff / sum_sq_ref)
    return 0.0 if sum_sq_diff == 0 else math.inf


def _pair_outputs(a: ModelSpec, b: ModelSpec) -> tuple[list[tuple[str, str]], list[str]]:
    """Outputs matched by name; by position when no name is shared and the counts agree (an .onnx file
    often names its outputs differently from the PyTorch model it came from). Returns pairs, unmatched."""
    common = [n for n in a.output_names if n in b.output_names]
    if not common and len(a.output_names) == len(b.output_names):
        return list(zip(a.output_names, b.output_names, strict=True)), []
    unmatched = [f"A:{n}" for n in a.output_names if n not in common]
    unmatched += [f"B:{n}" for n in b.output_names if n not in common]
    return [(n, n) for n in common], unmatched


# ---------------------------------------------------------------- intermediates

@dataclass(frozen=True)
class _Node:
    name: str
    op_type: str
    outputs: tuple[str, ...]
    scope: str | None


def _scope(node: Any) -> str | None:
    """The module path the torch.export-based exporter records for a node ('fc2' for a Linear's Gemm)."""
    meta = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
    except (ValueError, SyntaxError):
        return None
    if len(scopes) < 2 or not scopes[-2]:
        return None
    scope = str(scopes[-2])
    # inferforge wraps the user's module as ``model``: the user knows their layer without that prefix.
    if make_flat_module.__name__ in meta.get("namespace", "") and scope.startswith("model"):
        scope = scope.removeprefix("model").removeprefix(".")
    return scope or None


def _float_intermediates(model: Any) -> tuple[list[_Node], dict[str, int]]:
    """Nodes in graph order, and each float node output's element type (from shape inference)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.output, *graph.input)
             if v.type.HasField("tensor_type")}
    nodes = [_Node(n.name, n.op_type, tuple(o for o in n.output if o), _scope(n)) for n in graph.node]
    floats = {o: types[o] for node in nodes for o in node.outputs if types.get(o) in _FLOAT_ELEM_TYPES}
    return nodes, floats


def _probe(src: Path, workdir: Path) -> tuple[Any, list[_Node], dict[str, int]]:
    """Copy the graph into ``workdir`` with weights in one external file (any size saves), and return
    the weightless graph, its nodes and its float intermediates."""
    import onnx

    full = onnx.load(str(src))  # loads external data from src's folder
    onnx.save_model(full, str(workdir / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=1024)
    del full
    skeleton = onnx.load(str(workdir / "model.onnx"), load_external_data=False)
    nodes, floats = _float_intermediates(skeleton)
    return skeleton, nodes, floats


def _expose(skeleton: Any, names: Sequence[str], types: Mapping[str, int], path: Path) -> None:
    """Save the graph with ``names`` as extra outputs; the weights stay in the file beside it."""
    import onnx
    from onnx import helper

    existing = {o.name for o in skeleton.graph.output}
    skeleton.graph.output.extend(helper.make_tensor_value_info(n, types[n], None) for n in names if n not in existing)
    onnx.save_model(skeleton, str(path))


def compare_layers(onnx_a: Path | None, onnx_b: Path | None, dataset: Dataset, rtol: float = DEFAULT_RTOL,
                   threads: int = 1) -> LayerComparison:
    """Run both ONNX graphs (CPU, unoptimized, so every tensor keeps its name) with every float intermediate
    exposed, match tensors by name, and compare them in A's graph order (relative L2 error against A).

    Sides without a graph, or graphs without common names, give a LayerComparison whose ``note`` says so."""
    if onnx_a is None or onnx_b is None:
        missing = " and ".join(s for s, p in (("A", onnx_a), ("B", onnx_b)) if p is None)
        return LayerComparison(note=f"no layer comparison: {missing} has no ONNX graph (intermediates are compared "
                                    "between ONNX graphs: onnxruntime packages or .onnx files)")
    from inferforge.backends.onnx_common import create_session

    with tempfile.TemporaryDirectory(prefix="inferforge-compare-") as tmp:
        dirs = Path(tmp) / "a", Path(tmp) / "b"
        for d in dirs:
            d.mkdir()
        skeleton_a, nodes, floats_a = _probe(onnx_a, dirs[0])
        skeleton_b, _, floats_b = _probe(onnx_b, dirs[1])
        matched = [o for node in nodes for o in node.outputs if o in floats_a and o in floats_b]
        only_in_a, only_in_b = len(set(floats_a) - set(floats_b)), len(set(floats_b) - set(floats_a))
        if not matched:
            return LayerComparison((), 0, only_in_a, only_in_b, note="no layer comparison: the two graphs share no intermediate tensor "
                                                  "names (they were not exported from the same architecture)")
        _expose(skeleton_a, matched, floats_a, dirs[0] / "model.onnx")
        _expose(skeleton_b, matched, floats_b, dirs[1] / "model.onnx")
        sessions = [create_session(d / "model.onnx", threads, optimize=False) for d in dirs]
        stats = _layer_stats(sessions, matched, dataset)
    by_output = {o: node for node in nodes for o in node.outputs}
    layers = []
    for name in matched:
        sum_sq_diff, sum_sq_ref, max_abs = stats[name]
        rel = _rel_l2(sum_sq_diff, sum_sq_ref)
        node = by_output[name]
        layers.append(LayerDiff(node.name, node.op_type, name, node.scope, max_abs, rel, rel <= rtol))
    return LayerComparison(tuple(layers), len(matched), only_in_a, only_in_b)


def _layer_stats(sessions: Sequence[Any], names: list[str], dataset: Dataset) -> dict[str, list[float]]:
    """Per tensor, summed over batches: [sum of squared differences, sum of squares of A, max |diff|].
    Streaming keeps memory at one batch of intermediates, whatever the model's depth."""
    stats = {n: [0.0, 0.0, 0.0] for n in names}
    feeds = [{i.name for i in s.get_inputs()} for s in sessions]
    for batch in dataset.batches(BATCH):
        got_a, got_b = ([np.asarray(v) for v in s.run(names, {k: v for k, v in batch.items() if k in feed})]
                        for s, feed in zip(sessions, feeds, strict=True))
        for name, a, b in zip(names, got_a, got_b, strict=True):
            entry = stats[name]
            if a.shape != b.shape:
                entry[0] = entry[2] = math.inf
                continue
            diff = b.astype(np.float64) - a.astype(np.float64)
            entry[0] += float(np.sum(diff ** 2))
            entry[1] += float(np.sum(a.astype(np.float64) ** 2))
            entry[2] = max(entry[2], float(np.max(np.abs(diff), initial=0.0)))
    return stats


# ---------------------------------------------------------------- the verb

def compare_models(a: str, b: str, *, data: str | None = None, samples: int = DEFAULT_SAMPLES,
                   rtol: float = DEFAULT_RTOL, inputs: Sequence[str] = (), threads: int | None = None,
                   layers: bool = True) -> Comparison:
    """Run A and B (package folders or model sources) on the same inputs and compare every output, and
    where both are ONNX graphs, every intermediate tensor.

    ``data``: a folder of .npy/.npz or 'file.py:function' (at most ``samples`` used); None generates
    ``samples`` inputs from A's spec. ``rtol``: the relative L2 error an output or layer may reach.
    ``inputs``: input spec strings for sources that need them. Raises InferforgeError subclasses when a
    side cannot be loaded or the two take different inputs.
    """
    from inferforge.environment import usable_cores

    if not rtol > 0:
        raise InferforgeError(f"--rtol must be a positive number, got {rtol:g}")
    threads = threads or usable_cores()
    side_a, side_b = _open_side(a, inputs, threads), _open_side(b, inputs, threads)
    _check_same_inputs(side_a, side_b)
    dataset = _dataset(data, side_a.spec, samples)
    out_a, out_b = side_a.outputs(dataset), side_b.outputs(dataset)
    pairs, unmatched = _pair_outputs(side_a.spec, side_b.spec)
    outputs = tuple(output_diff(na, out_a[na], out_b[nb], rtol, None if na == nb else nb) for na, nb in pairs)
    layer_report = (compare_layers(side_a.onnx, side_b.onnx, dataset, rtol, threads) if layers
                    else LayerComparison(note="layer comparison not asked for"))
    return Comparison(side_a.description, side_b.description, len(dataset), dataset.origin, rtol, outputs,
                      tuple(unmatched), layer_report)
