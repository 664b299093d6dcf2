"""inferforge against the plain ways a user would run a model on CPU, in one run.

For ResNet-50 (torchvision, random weights) and all-MiniLM-L6-v2 (real weights,
real sentences), at batch 1 and 16: eager FP32, ``torch.compile`` default, ONNX
Runtime with default session options, and the artifact inferforge picks (loaded
from its package, as a user would deploy it). Every row is timed by the same
function with the same settings, in this one process; ratios are against eager.

    .venv/bin/python benchmarks/cpu_peers.py [--models resnet50,minilm] [--write docs/benchmarks.md]

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
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

import inferforge
from inferforge.bench import BenchSettings, LatencyStats, time_calls
from inferforge.environment import cpu_model, usable_cores, version_of
from inferforge.search import Objective, SearchOptions
from inferforge.validate import Task

BATCHES = (1, 16)
TIMING = {"warmup": 3, "min_runs": 20, "max_runs": 2000, "min_seconds": 3.0, "max_seconds": 20.0}
TIMING_BIG = {"warmup": 1, "min_runs": 5, "max_runs": 2000, "min_seconds": 3.0, "max_seconds": 30.0}


def _time(call: Any, batch: int) -> LatencyStats:
    return time_calls(call, batch, **(TIMING if batch == 1 else TIMING_BIG))


def _resnet50() -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    images = np.random.default_rng(0).standard_normal((64, 3, 224, 224)).astype(np.float32)
    return model, {"image": images}, {"task": Task.CLASSIFY}


def _minilm() -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    from inferforge.demo import minilm

    model, _ = minilm.make_model()
    return model, minilm.make_data(), {"task": Task.EMBED}


MODELS = {"resnet50": _resnet50, "minilm": _minilm}


def _batch(data: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    n = len(next(iter(data.values())))
    index = np.arange(batch) % n
    return {k: v[index] for k, v in data.items()}


def bench_model(name: str, threads: int) -> list[dict[str, Any]]:
    model, data, extra = MODELS[name]()
    rows: list[dict[str, Any]] = []
    torch.set_num_threads(threads)

    def add(peer: str, stats: LatencyStats, note: str = "") -> None:
        rows.append({"model": name, "peer": peer, "batch": stats.batch_size, "p50_ms": stats.p50_ms,
                     "cv": stats.cv, "throughput": stats.throughput, "note": note})
        print(f"  {name} bs{stats.batch_size} {peer}: {stats.p50_ms:.2f} ms (cv {stats.cv:.2f}) {note}", flush=True)

    compiled = torch.compile(model)
    for batch in BATCHES:
        args = [torch.from_numpy(v) for v in _batch(data, batch).values()]
        with torch.inference_mode():
            add("eager fp32", _time(lambda args=args: model(*args), batch))
            started = time.perf_counter()
            compiled(*args)
            compile_s = time.perf_counter() - started
            add("torch.compile default", _time(lambda args=args: compiled(*args), batch),
                f"first call {compile_s:.0f} s")

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        example = tuple(torch.from_numpy(v) for v in _batch(data, 2).values())
        names = list(data)
        batch_dim = torch.export.Dim("batch", min=1, max=1024)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            torch.onnx.export(model, example, str(path), dynamo=True, input_names=names,
                              dynamic_shapes={n: {0: batch_dim} for n in _forward_names(model, names)})
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # default options
        for batch in BATCHES:
            feed = _batch(data, batch)
            add("onnxruntime default", _time(lambda feed=feed: session.run(None, feed), batch))

        options = SearchOptions(objective=Objective.LATENCY, task=extra["task"], threads=threads,
                                bench=BenchSettings(batch_sizes=BATCHES))
        started = time.perf_counter()
        result = inferforge.optimize(model, {k: torch.from_numpy(v[:2]) for k, v in data.items()},
                                     data=_dataset(data), options=options, out=Path(tmp) / "pkg", name=name)
        search_s = time.perf_counter() - started
        runner = inferforge.load(Path(tmp) / "pkg", threads=threads)
        pick = runner.selection.key  # type: ignore[attr-defined]
        for batch in BATCHES:
            native = runner.to_native(_batch(data, batch))
            add("inferforge pick", _time(lambda native=native: runner.run_native(native), batch),
                f"{pick}; search {search_s:.0f} s")
        print(result.leaderboard(), flush=True)
    return rows


def _forward_names(model: Any, names: list[str]) -> list[str]:
    import inspect

    params = list(inspect.signature(model.forward).parameters)
    return params[: len(names)]


def _dataset(data: dict[str, np.ndarray]) -> Any:
    from inferforge.data import Dataset

    return Dataset(data, None, "benchmark inputs")


def render(rows: list[dict[str, Any]], threads: int, command: str) -> str:
    eager = {(r["model"], r["batch"]): r for r in rows if r["peer"] == "eager fp32"}
    lines = [
        f"Measured {date.today().isoformat()} with `{command}` on {cpu_model()} ({usable_cores()} cores usable, "
        f"{threads} threads), {platform.system()} {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, onnxruntime {version_of('onnxruntime')}, inferforge {inferforge.__version__}. "
        "Median latency; batch 16 also as samples/s; ratio = eager p50 / row p50 (higher is faster). "
        "All rows from one process, one pass: on this shared machine, gaps under ~1.5x are within noise.",
        "",
        "| model | batch | peer | p50 ms | samples/s | cv | vs eager | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = eager[(r["model"], r["batch"])]["p50_ms"] / r["p50_ms"]
        lines.append(f"| {r['model']} | {r['batch']} | {r['peer']} | {r['p50_ms']:.2f} | {r['throughput']:.1f} | "
                     f"{r['cv']:.2f} | {ratio:.2f}x | {r['note']} |")
    return "\n".join(lines) + "\n"


def write_section(path: Path, body: str, marker: str = "cpu_peers") -> None:
    """Replace what lies between ``<!-- {marker}:start -->`` and ``<!-- {marker}:end -->`` (appended if absent)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    before, _, rest = text.partition(start)
    _, _, after = rest.partition(end)
    path.write_text(f"{before}{start}\n{body}{end}{after}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,minilm")
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--write", type=Path, help="markdown file whose cpu_peers section gets the table")
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        print(f"== {name}", flush=True)
        rows += bench_model(name, args.threads)
    table = render(rows, args.threads, "python benchmarks/cpu_peers.py " + " ".join(sys.argv[1:]))
    print(table)
    if args.write:
        write_section(args.write, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
