"""Top operators by self time, as each runtime's own profiler reports them: the type every runner returns.

``Runner.profile_operators`` is part of the backend contract: a torch runner asks torch.profiler
(``torch_operators`` here), ONNX Runtime's runner its session profiling, OpenVINO's its performance
counters. A runner that cannot be profiled says why (``unavailable``), never made-up numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOP_OPERATORS = 15
WARMUP_RUNS = 3
PROFILED_RUNS = 10  # runs under an event-recording profiler (it slows each run; a few suffice)


@dataclass(frozen=True)
class OperatorTime:
    name: str  # aten op, ONNX op type, or OpenVINO node type
    calls_per_run: float
    self_ms_per_run: float
    share: float  # of the profiled self time of all operators


@dataclass(frozen=True)
class OperatorProfile:
    """The top operators by self time, or why there are none (``unavailable``)."""

    profiler: str  # "torch.profiler", "onnxruntime", "openvino", or "none"
    time_kind: str  # what self_ms measures, e.g. "self CPU time"
    operators: tuple[OperatorTime, ...]
    profiled_runs: int
    trace_path: str | None = None
    unavailable: str | None = None


def top_operators(totals: Mapping[str, tuple[int, float]], runs: int) -> tuple[OperatorTime, ...]:
    """``totals``: op name -> (calls, self microseconds) over ``runs`` runs; the top by self time."""
    grand = sum(us for _, us in totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])[:TOP_OPERATORS]
    return tuple(OperatorTime(name, calls / runs, us / runs / 1e3, us / grand) for name, (calls, us) in ranked if us > 0)


def write_trace(trace_path: Path | None, events: list[dict[str, Any]]) -> None:
    if trace_path is not None:
        Path(trace_path).write_text(json.dumps({"traceEvents": events}))


def torch_operators(call: Callable[[], object], synchronize: Callable[[], None], on_cuda: bool, runs: int,
                    trace_path: Path | None) -> OperatorProfile:
    """torch.profiler over ``runs`` of ``call()`` (each followed by ``synchronize()``): self CUDA time of each
    aten op on a GPU, self CPU time on a CPU."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_cuda else [])]
    with profile(activities=activities) as prof:
        for _ in range(runs):
            call()
            synchronize()
    totals: dict[str, tuple[int, float]] = {}
    for event in prof.key_averages():
        us = float(getattr(event, "self_device_time_total", 0.0)) if on_cuda else float(event.self_cpu_time_total)
        totals[event.key] = (int(event.count), us)
    if trace_path is not None:
        prof.export_chrome_trace(str(trace_path))
    operators = top_operators(totals, runs)
    reason = None if operators else ("torch.profiler recorded no operators: this artifact's compiled code runs "
                                     "outside PyTorch's dispatcher")
    return OperatorProfile("torch.profiler", "self CUDA time" if on_cuda else "self CPU time", operators, runs,
                           str(trace_path) if trace_path else None, reason)
