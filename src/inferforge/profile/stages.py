"""Call stages: where one ``runner(inputs)`` call spends its time.

The stages are timed in the same loop as whole calls, alternating which comes first, so noise and
cache state hit both alike and their medians can be compared: the stage medians add up to the
whole-call median (the ratio is reported), which says the breakdown misses nothing.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferforge.backends.base import Runner, convert
from inferforge.operator_profile import WARMUP_RUNS
from inferforge.types import check_inputs


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
