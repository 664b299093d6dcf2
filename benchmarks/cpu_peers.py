"""inferforge against the plain ways a user would run a model on CPU, in one run.

Models: ResNet-50 and MobileNetV3-Large (torchvision, random weights: judged by top-1
agreement with FP32 on generated images), all-MiniLM-L6-v2 (real weights, real
sentences: mean-pooled embedding cosine against FP32) and the demo's digits CNN
(trained here: test accuracy). Batch 1 and 16; MiniLM also with sentence lengths as
they come (padded to the batch's longest, not to 128).

Peers, each with its library's default settings: PyTorch eager FP32, ``torch.compile``,
ONNX Runtime FP32, OpenVINO FP32 (``compile_model(..., "CPU")``), OpenVINO INT8 (NNCF
``quantize`` on the same calibration samples inferforge gets), and ONNX Runtime INT8
dynamic (``quantize_dynamic``) for the encoder. Then inferforge's FP32 pick (search
limited to FP32) and its overall pick (every precision, within the default accuracy
budget), each loaded from its package as a user would deploy it. Every row is timed by
the same function with the same settings, in this one process, and its accuracy is
measured the same way on the same evaluation data. On each row every peer is timed in turns
(bench.interleave: A B C ..., B C ... A, rounds of blocks of calls), and each inferforge pick is
compared with the fastest peer round by round, with a 95% bootstrap interval on the ratio.

    .venv/bin/python benchmarks/cpu_peers.py [--models resnet50,mobilenetv3,minilm,digits] [--write docs/benchmarks.md]

With --write, the table replaces the section between the cpu_peers markers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

import inferforge
from inferforge.bench import BenchSettings, interleave, one_call_ms, ratio_interval
from inferforge.data import Dataset
from inferforge.environment import cpu_model, usable_cores, version_of
from inferforge.options import Objective, SearchOptions
from inferforge.validate import AccuracyBudget, AccuracyReport, DecidingFigure, Task, collect_outputs, compare

# Every row: all peers in turns, blocks of about 0.1 s, at least 12 rounds and 20 s (fewer rounds when a row's
# peers are slow: bench.interleave stops at 3x the seconds).
TIMING = BenchSettings(confirm_min_rounds=12, confirm_max_rounds=60, confirm_seconds=20.0, confirm_block_seconds=0.1)
Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class Workload:
    """One model with what it is judged and timed on."""

    name: str
    model: Any
    inputs: tuple[str, ...]  # spec strings for optimize (which dims are dynamic, value ranges)
    evaluation: Dataset  # accuracy: labels where the task has them
    calibration: Dataset  # static INT8 (inferforge and NNCF get the same samples)
    task: Task
    timed: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # row label -> one batch


def _images(name: str, factory: Callable[[], Any]) -> Workload:
    torch.manual_seed(0)
    model = factory().eval()
    rng = np.random.default_rng(0)
    evaluation = rng.standard_normal((64, 3, 224, 224)).astype(np.float32)
    calibration = np.random.default_rng(1).standard_normal((32, 3, 224, 224)).astype(np.float32)
    work = Workload(name, model, ("image:float32[B,3,224,224]",), Dataset({"image": evaluation}, None, "generated N(0,1)"),
                    Dataset({"image": calibration}, None, "generated N(0,1), another seed"), Task.CLASSIFY)
    work.timed = {f"bs{b}": {"image": evaluation[:b]} for b in (1, 16)}
    return work


def _resnet50() -> Workload:
    import torchvision

    return _images("resnet50", lambda: torchvision.models.resnet50(weights=None))


def _mobilenetv3() -> Workload:
    import torchvision

    return _images("mobilenetv3", lambda: torchvision.models.mobilenet_v3_large(weights=None))


def _minilm() -> Workload:
    from inferforge.demo import minilm

    model, _ = minilm.make_model()
    data = minilm.make_data()
    dataset = Dataset(data, None, "the demo's real sentences")
    work = Workload("minilm", model, ("input_ids:int64[B,S=128]:0..30521", "attention_mask:int64[B,S=128]:0..1"),
                    dataset, dataset, Task.EMBED)
    lengths = data["attention_mask"].sum(1)
    median = int(np.argsort(lengths)[len(lengths) // 2])
    for b in (1, 16):
        work.timed[f"bs{b} seq 128"] = dataset.take(b)
    for b, start in ((1, median), (16, 0)):
        rows = dataset.take(b, start)
        longest = int(rows["attention_mask"].sum(1).max())
        work.timed[f"bs{b} seq {longest} (as they come)"] = {k: np.ascontiguousarray(v[:, :longest])
                                                             for k, v in rows.items()}
    return work


def _digits() -> Workload:
    from inferforge.demo import digits

    model, _ = digits.make_model()
    x_train, x_test, _, y_test = digits._split()
    work = Workload("digits", model, (f"image:float32[B,{','.join(map(str, x_test.shape[1:]))}]",),
                    Dataset({"image": x_test}, y_test, "digits test split"),
                    Dataset({"image": x_train[:128]}, None, "digits train split"), Task.CLASSIFY)
    work.timed = {f"bs{b}": {"image": x_test[:b]} for b in (1, 16)}
    return work


MODELS = {"resnet50": _resnet50, "mobilenetv3": _mobilenetv3, "minilm": _minilm, "digits": _digits}


# ---- peers: each returns a numpy -> {output name: array} callable -----------------------------------------------

def _torch_run(module: Any, outputs: list[str]) -> Run:
    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            result = module(*(torch.from_numpy(v) for v in feed.values()))
        return dict(zip(outputs, [result.numpy()], strict=True))

    return run


def _export_onnx(work: Workload, path: Path) -> None:
    import inspect

    example = tuple(torch.from_numpy(v) for v in work.calibration.take(2).values())
    params = list(inspect.signature(work.model.forward).parameters)[: len(example)]
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    if work.task is Task.EMBED:
        dims[1] = torch.export.Dim("sequence", min=2, max=128)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(work.model, example, str(path), dynamo=True, input_names=list(work.calibration.inputs),
                          dynamic_shapes={p: dims for p in params})


def _ort_run(path: Path, outputs: list[str]) -> Run:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # default options

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, session.run(None, feed)[:1], strict=True))

    return run


def _openvino_run(model: Any, outputs: list[str]) -> tuple[Run, str]:
    """The compiled model's callable, and the precision OpenVINO chose to compute in (its default is bf16
    on CPUs with native bf16, f32 elsewhere)."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU")  # default hints

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, list(compiled(feed).values())[:1], strict=True))

    return run, str(compiled.get_property("INFERENCE_PRECISION_HINT")).split("'")[-2]


def _nncf_int8(onnx_path: Path, work: Workload) -> Any:
    import nncf
    import openvino as ov

    samples = [work.calibration.take(1, i) for i in range(len(work.calibration))]
    model_type = nncf.ModelType.TRANSFORMER if work.task is Task.EMBED else None  # as NNCF's docs advise
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset(samples), model_type=model_type,
                             subset_size=len(samples))


@dataclass(frozen=True)
class Peer:
    run: Run
    note: str = ""
    fp32: bool = False  # computes in FP32: one of the peers the FP32 goal is judged against


def peers(work: Workload, outputs: list[str], tmp: Path) -> dict[str, Peer]:
    """Every peer that builds here, by name. A peer that fails to build is reported and left out."""
    built = {"eager fp32": Peer(_torch_run(work.model, outputs), fp32=True)}
    built["torch.compile default"] = Peer(_torch_run(torch.compile(work.model), outputs),
                                          "compiled at first call of each shape", fp32=True)
    onnx_path = tmp / f"{work.name}.onnx"
    _export_onnx(work, onnx_path)
    built["onnxruntime fp32 default"] = Peer(_ort_run(onnx_path, outputs), fp32=True)
    run, precision = _openvino_run(str(onnx_path), outputs)
    built["openvino default"] = Peer(run, f"OpenVINO computes in {precision} by default here",
                                     precision in ("f32", "float32"))  # the property reads "float32" on 2026.4
    started = time.perf_counter()
    try:
        run, precision = _openvino_run(_nncf_int8(onnx_path, work), outputs)
        built["openvino int8 (nncf default)"] = Peer(run, f"quantized in {time.perf_counter() - started:.0f} s; "
                                                          f"non-int8 parts in {precision}")
    except Exception as exc:  # reported, never hidden
        print(f"  openvino int8 failed: {exc}", flush=True)
    if work.task is Task.EMBED:  # ORT's docs: dynamic for transformers, static for CNNs
        from onnxruntime.quantization import quantize_dynamic

        quantized = tmp / f"{work.name}-int8.onnx"
        quantize_dynamic(str(onnx_path), str(quantized))
        built["onnxruntime int8 dynamic default"] = Peer(_ort_run(quantized, outputs))
    return built


# ---- inferforge ---------------------------------------------------------------------------------------------------

def inferforge_pick(work: Workload, precisions: tuple[str, ...], threads: int, out: Path) -> Peer:
    options = SearchOptions(objective=Objective.LATENCY, task=work.task, threads=threads, precisions=precisions,
                            bench=BenchSettings(batch_sizes=(1, 16)))
    started = time.perf_counter()
    result = inferforge.optimize(work.model, inputs=list(work.inputs), data=work.evaluation, options=options,
                                 out=out, name=work.name, calibration=work.calibration)
    search_s = time.perf_counter() - started
    print(result.leaderboard(), flush=True)
    if result.package is None:
        raise RuntimeError(f"{work.name}: no inferforge candidate passed for precisions {precisions or 'all'}")
    runner = inferforge.load(out)  # as a user deploys it: the threads the package's tuning chose
    key = runner.selection.key  # type: ignore[attr-defined]
    return Peer(runner, f"{key}, {runner.threads()} threads; search {search_s:.0f} s")  # numpy in, numpy out


# ---- measuring ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    model: str
    shape: str  # "bs1", "bs16 seq 128", ...
    peer: str
    rounds: np.ndarray  # ms per call of each interleaved round, aligned with the other peers' of the row
    accuracy: str  # the figure the task is judged on, as text
    passed: bool
    note: str
    fp32_peer: bool

    @property
    def p50_ms(self) -> float:
        return float(np.median(self.rounds))

    @property
    def spread(self) -> float:
        """Coefficient of variation over the rounds."""
        return float(np.std(self.rounds) / np.mean(self.rounds))


def judge(run: Run, work: Workload, reference: dict[str, np.ndarray], spec: Any) -> AccuracyReport:
    return compare(reference, collect_outputs(run, work.evaluation), spec, work.evaluation, work.task,
                   AccuracyBudget())


def describe(report: AccuracyReport) -> str:
    if report.decided_by is DecidingFigure.ACCURACY_DROP:
        return f"accuracy {100 * (report.accuracy or 0):.2f}%"
    if report.decided_by is DecidingFigure.TOP1_AGREEMENT:
        return f"top-1 agreement {100 * (report.top1_agreement or 0):.1f}%"
    return f"cosine {report.cosine:.4f}"


def bench_model(name: str, threads: int) -> list[Row]:
    from inferforge.source import load_source

    work = MODELS[name]()
    torch.set_num_threads(threads)
    example = {k: torch.from_numpy(v) for k, v in work.calibration.take(2).items()}
    spec = load_source(work.model, inputs=list(work.inputs), example_inputs=example, name=name).spec
    outputs = [o.name for o in spec.outputs][:1]
    spec = replace(spec, outputs=spec.outputs[:1])
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        candidates = peers(work, outputs, tmp)
        for label, precisions in (("inferforge fp32 pick", ("fp32",)), ("inferforge pick", ())):
            try:
                candidates[label] = inferforge_pick(work, precisions, threads, tmp / label.replace(" ", "-"))
            except Exception as exc:
                print(f"  {label} failed: {exc}", flush=True)
        reference = collect_outputs(candidates["eager fp32"].run, work.evaluation)
        reports = {label: judge(peer.run, work, reference, spec) for label, peer in candidates.items()}
        for shape, feed in work.timed.items():
            calls = {label: (lambda run=peer.run, feed=feed: run(feed)) for label, peer in candidates.items()}
            first = {label: one_call_ms(call) for label, call in calls.items()}
            times = interleave(calls, dict.fromkeys(calls, 1), first, TIMING)
            for label, peer in candidates.items():
                row = Row(name, shape, label, times[label], describe(reports[label]), reports[label].passed,
                          peer.note, peer.fp32)
                rows.append(row)
                print(f"  {name} {shape} {label}: {row.p50_ms:.2f} ms (spread {row.spread:.2f}, {len(row.rounds)} "
                      f"rounds) {row.accuracy} {peer.note}", flush=True)
    return rows


# ---- report -------------------------------------------------------------------------------------------------------

def render(rows: list[Row], threads: int, command: str) -> str:
    versions = ", ".join(f"{p} {version_of(p)}" for p in ("torch", "onnxruntime", "openvino", "nncf", "torchao"))
    lines = [
        f"Measured {date.today().isoformat()} with `{command}` on {cpu_model()} ({usable_cores()} cores usable, "
        f"{threads} threads for the peers; inferforge's picks load with the threads their package's tuning chose), "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, {versions}, inferforge "
        f"{inferforge.__version__}. Per row, every peer is timed in turns in one process (rounds of about 0.1 s "
        "blocks, each round in a fresh random order and each block after a 60 ms idle pause, so no runtime's "
        "still-spinning threads slow the next one); ms is the median over rounds of the time per call (numpy in, numpy out); samples/s = batch / ms. "
        "\"vs best FP32 peer\" = the fastest of eager, torch.compile, ONNX Runtime FP32 (and OpenVINO's default "
        "where it computes in f32) on that row, divided by this row (higher is faster). Accuracy on the whole "
        "evaluation set against eager FP32; a row outside the default budget (accuracy drop <= 1 point, top-1 "
        "agreement >= 99%, cosine >= 0.99) is marked.",
        "",
        "| model | shape | peer | ms | samples/s | spread | vs best FP32 peer | accuracy vs FP32 | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    best = best_fp32(rows)
    for r in rows:
        flag = "" if r.passed else " (outside budget)"
        batch = int(r.shape.split()[0].removeprefix("bs"))
        lines.append(f"| {r.model} | {r.shape} | {r.peer} | {r.p50_ms:.2f} | {1e3 * batch / r.p50_ms:.1f} | "
                     f"{r.spread:.2f} | {best[(r.model, r.shape)].p50_ms / r.p50_ms:.2f}x | "
                     f"{r.accuracy}{flag} | {r.note} |")
    lines += ["", "The picks against the fastest peer on the same row: the median over rounds of the peer's time "
              "divided by the pick's (higher is faster), with its 95% bootstrap interval (goals of issue 21: the "
              "FP32 pick >= 0.95x the fastest FP32 peer, the full pick >= 1.0x the fastest peer within budget "
              "on every row and >= 1.2x on half of them):", ""]
    lines += goal_lines(rows, best)
    return "\n".join(lines) + "\n"


def best_fp32(rows: list[Row]) -> dict[tuple[str, str], Row]:
    best: dict[tuple[str, str], Row] = {}
    for r in rows:
        key = (r.model, r.shape)
        if r.fp32_peer and (key not in best or r.p50_ms < best[key].p50_ms):
            best[key] = r
    return best


def _versus(mine: Row, peer: Row) -> str:
    ratio, low, high = ratio_interval(peer.rounds, mine.rounds)
    return f"**{ratio:.2f}x** [{low:.2f}, {high:.2f}] {peer.peer} ({peer.p50_ms:.2f} ms)"


def goal_lines(rows: list[Row], best: dict[tuple[str, str], Row]) -> list[str]:
    lines = ["| model | shape | inferforge fp32 pick | vs fastest FP32 peer | inferforge pick | "
             "vs fastest peer within budget |", "|---|---|---|---|---|---|"]
    met = {"fp32 >= 0.95x": 0, "pick >= 1.0x": 0, "pick >= 1.2x": 0}
    for key, fp32_peer in best.items():
        found = {r.peer: r for r in rows if (r.model, r.shape) == key}
        any_peer = min((r for r in found.values() if not r.peer.startswith("inferforge") and r.passed),
                       key=lambda r: r.p50_ms)
        cells = []
        for label, peer, goal in (("inferforge fp32 pick", fp32_peer, "fp32 >= 0.95x"),
                                  ("inferforge pick", any_peer, "pick >= 1.0x")):
            mine = found.get(label)
            if mine is None:
                cells += ["none passed", ""]
                continue
            ratio = float(np.median(peer.rounds / mine.rounds))
            met[goal] += ratio >= (0.95 if goal.startswith("fp32") else 1.0)
            if goal == "pick >= 1.0x":
                met["pick >= 1.2x"] += ratio >= 1.2
            cells += [f"{mine.p50_ms:.2f} ms ({mine.note.split(';')[0]})", _versus(mine, peer)]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    lines += ["", f"Rows meeting each goal, of {len(best)}: " + ", ".join(f"{k}: {v}" for k, v in met.items()) + "."]
    return lines


def write_section(path: Path, body: str, marker: str = "cpu_peers") -> None:
    """Replace what lies between ``<!-- {marker}:start -->`` and ``<!-- {marker}:end -->`` (appended if absent)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(end)
    path.write_text(f"{before}{start}\n{body}{end}{after}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--write", type=Path, help="markdown file whose cpu_peers section gets the table")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    for name in args.models.split(","):
        print(f"== {name}", flush=True)
        rows += bench_model(name, args.threads)
    table = render(rows, args.threads, "python benchmarks/cpu_peers.py " + " ".join(sys.argv[1:]))
    print(table)
    if args.write:
        write_section(args.write, table)
    print(f"cpu_peers finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
