"""``inferforge demo``: optimize the built-in models (``inferforge.demo.DEMOS``) with the default search options,
then load each package back and check its answer against the PyTorch model."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "optimize the built-in models (MiniLM-L6 and a digits CNN) and load them back"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from inferforge.demo import DEMOS

    parser.add_argument("--out", type=Path, default=Path("demo-packages"), help="one package folder per model here")
    parser.add_argument("--only", choices=list(DEMOS), help="run one of them")
    parser.add_argument("--wide", action="store_true", help="leaderboards with every column")
    parser.add_argument("--full", action="store_true", help="search every backend (Inductor, AOTInductor and torch "
                        "INT8 too: several more minutes), not the curated set")


def run(args: argparse.Namespace) -> int:
    return run_demo(args.out, args.only, args.wide, args.full)


def run_demo(out: Path, only: str | None = None, wide: bool = False, full: bool = False) -> int:
    import numpy as np
    import torch

    from inferforge.cli.optimize import run_optimize
    from inferforge.demo import DEMO_BACKENDS, DEMOS
    from inferforge.options import SearchOptions
    from inferforge.package import load
    from inferforge.user_code import resolve_callable
    from inferforge.validate import Task

    started = time.perf_counter()
    if not full:
        print(f"demo: searching the curated backends {', '.join(DEMO_BACKENDS)} (every precision); "
              "`inferforge demo --full` searches them all")
    for name, demo in DEMOS.items():
        if only and name != only:
            continue
        result = run_optimize(demo.model, inputs=list(demo.inputs), data=demo.data,
                              options=SearchOptions(task=Task(demo.task), backends=() if full else DEMO_BACKENDS),
                              out=out / name, name=name, overwrite=True,
                              adapter=resolve_callable(demo.adapter, "demo adapter")(), wide=wide)
        if result.package is None:
            continue
        t0 = time.perf_counter()
        runner = load(result.package)
        load_s = time.perf_counter() - t0
        sample = result.dataset.take(4)
        outputs = runner(sample)
        first = result.source.spec.outputs[0].name
        with torch.inference_mode():
            ref = result.source.module(*[torch.from_numpy(v) for v in sample.values()])[0].numpy()
        err = float(np.abs(outputs[first] - ref).max())
        print(f"loaded {result.package} -> {runner.selection.key} in {load_s:.1f} s; "  # type: ignore[attr-defined]
              f"output {first!r} {list(outputs[first].shape)}: max abs diff vs the PyTorch model {err:.2e}\n")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0
