"""What a search is asked to do: objective, accuracy budget, candidates, time and isolation limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from inferforge.bench import BenchSettings
from inferforge.cache import default_cache_dir
from inferforge.environment import usable_cores
from inferforge.errors import SpecError
from inferforge.validate import AccuracyBudget, Task


class Objective(StrEnum):
    LATENCY = "latency"  # lowest p50 at batch 1
    THROUGHPUT = "throughput"  # most samples/s over the batch sweep


# Where a search can run its candidates ("cuda" also keeps CPU fallbacks, see cpu_fallback).
DEVICES = ("cpu", "cuda")

# A throughput search on a GPU: the large batches where fused kernels and CUDA graphs pay off (the gain from
# 256 to 1024 is measured in docs/benchmarks.md); the CUDA-graph buckets go up to 1024.
GPU_THROUGHPUT_BATCH_SIZES = (1, 64, 256, 512, 1024)


def default_batch_sizes(device: str, objective: Objective) -> tuple[int, ...]:
    """The batch sweep when the user names none: BenchSettings' default, or the large batches of a GPU
    throughput search."""
    if device == "cuda" and objective is Objective.THROUGHPUT:
        return GPU_THROUGHPUT_BATCH_SIZES
    return BenchSettings().batch_sizes


@dataclass(frozen=True)
class SearchOptions:
    objective: Objective = Objective.LATENCY
    budget: AccuracyBudget = AccuracyBudget()
    task: Task = Task.AUTO
    bench: BenchSettings = BenchSettings()
    threads: int = field(default_factory=usable_cores)
    backends: tuple[str, ...] = ()  # empty: every backend
    device: str = "cpu"
    calibration_samples: int = 128  # static INT8: samples read to choose activation scales
    tune: bool = True  # measure threads / instances for the picked artifact (tune.py)
    precisions: tuple[str, ...] = ()  # empty: every precision the backends propose
    cpu_fallback: bool = True  # with a GPU device: also build CPU candidates, so the package runs anywhere
    cache_dir: Path | None = field(default_factory=default_cache_dir)  # built artifacts reused (cache.py); None: off
    # The whole run (loading the model, every candidate, packaging) ends within about this many seconds: no
    # candidate starts after it and a running one is stopped at it, except the reference and the portable
    # fallback, which always run first. None: no limit.
    time_budget_s: float | None = None
    thorough: bool = False  # also the candidates that take minutes to build (Backend.thorough_configs)
    # Each candidate builds, validates and benchmarks in a worker process, so a crash, hang or memory blow-up
    # fails that candidate alone. False: in this process (faster to start; for debugging).
    isolate: bool = True
    candidate_timeout_s: float = 1800.0  # a candidate still running after this is stopped and marked failed
    worker_memory_mb: float | None = None  # a worker above this resident memory is stopped; None: 80% of RAM

    def __post_init__(self) -> None:
        problems = []
        if self.threads < 1:
            problems.append(f"threads must be 1 or more, got {self.threads}")
        if self.calibration_samples < 1:
            problems.append(f"calibration_samples must be 1 or more, got {self.calibration_samples}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            problems.append(f"time_budget_s must be a positive number of seconds, got {self.time_budget_s}")
        if not self.candidate_timeout_s > 0:
            problems.append(f"candidate_timeout_s must be positive, got {self.candidate_timeout_s}")
        if self.worker_memory_mb is not None and not self.worker_memory_mb > 0:
            problems.append(f"worker_memory_mb must be positive, got {self.worker_memory_mb}")
        if problems:
            raise SpecError("search options: " + "; ".join(problems))
