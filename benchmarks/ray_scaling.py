"""`inferforge serve --ray` with 1 and 2 replicas against plain `inferforge serve`, in one run.

All-MiniLM-L6-v2 (the demo's model, eager FP32 search, token inputs [B,128]) is packaged once, then
served four ways through the real CLI, each as a subprocess: ``inferforge serve`` (one process,
``--threads`` intra-op threads), and ``inferforge serve --ray`` on a local Ray cluster with 1 replica
(inferforge's batcher, then Ray Serve's ``@serve.batch``) and with 2 replicas (each replica with ``--threads`` divided among the replicas, one CPU reserved per
replica). The load is serve_bench.py's: closed-loop HTTP clients with the binary tensor extension in
their own process, one sample per request, at each concurrency. Every phase: warm-up, then measured
seconds; requests that fail are counted and stop the run.

    .venv/bin/python benchmarks/ray_scaling.py [--seconds 8] [--concurrency 4,16] [--threads 2]
        [--write docs/scaling.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_bench import (  # noqa: E402
    LoadGenerator,
    PhaseTiming,
    build_package,
    free_port,
    http_request,
    load_phase,
    subprocess_server,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", default="4,16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    import numpy as np

    from inferforge.data import generate_inputs
    from inferforge.manifest import read_manifest
    from inferforge.types import ModelSpec

    tmp = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    package = build_package(tmp / "minilm", ("eager",))
    spec = ModelSpec.from_json(read_manifest(package)["spec"])
    inputs = {k: np.ascontiguousarray(v) for k, v in generate_inputs(spec, 1, seed=3).items()}
    body, headers = http_request(inputs)
    timing = PhaseTiming(args.seconds, args.warmup)
    cli = [sys.executable, "-m", "inferforge.cli", "serve", str(package), "--grpc-port", "-1", "--metrics-port", "-1"]
    ways = {
        "inferforge serve (1 process)": ["--threads", str(args.threads)],
        "inferforge serve --ray, 1 replica": ["--ray", "--replicas", "1", "--threads", str(args.threads)],
        "inferforge serve --ray, 1 replica, Ray's @serve.batch": ["--ray", "--replicas", "1", "--threads",
                                                                  str(args.threads), "--ray-batching", "ray"],
        "inferforge serve --ray, 2 replicas": ["--ray", "--replicas", "2", "--threads",
                                               str(max(1, args.threads // 2))],
    }
    rows = []
    load = LoadGenerator()
    try:
        for label, extra in ways.items():
            port = free_port()
            command = cli + ["--http-port", str(port)] + extra
            print(f"== {label}: {' '.join(command[3:])}", flush=True)
            with subprocess_server(command, f"http://127.0.0.1:{port}/v2/health/ready", tmp / "server.log") as pid:
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    row = load_phase(load, label, pid, lambda: (0, 0, 0.0), timing, concurrency, kind="http",
                                     url=f"http://127.0.0.1:{port}/v2/models/minilm/infer", body=body,
                                     headers=headers)
                    rows.append(row)
    finally:
        load.close()
    table = render(rows, args)
    print(table)
    if args.write:
        from cpu_peers import write_section

        write_section(args.write, table, "ray_scaling")
    return 0


def render(rows: list, args: argparse.Namespace) -> str:
    import ray
    import torch

    base = {r.concurrency: r.throughput for r in rows if "1 process" in r.path}
    lines = [f"Measured {date.today().isoformat()} with `python benchmarks/ray_scaling.py`, {platform.machine()}, "
             f"{len(os.sched_getaffinity(0))} usable cores, Ray {ray.__version__}, torch {torch.__version__}, "
             f"Python {platform.python_version()}; all-MiniLM-L6-v2 eager FP32, one sample per request, closed-loop "
             f"HTTP clients, {args.seconds:g} s per phase after {args.warmup:g} s warm-up; one run.", "",
             "| server | clients | samples/s | vs 1 process | p50 ms | p99 ms | server CPU (cores) | client CPU | other CPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.path} | {r.concurrency} | {r.throughput:.1f} | {r.throughput / base[r.concurrency]:.2f}x | "
                     f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.server_cpu:.2f} | {r.client_cpu:.2f} | {r.other_cpu:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
