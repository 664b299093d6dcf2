"""Measure a runner: latency percentiles at batch 1, throughput over a batch sweep, peak memory.

Timing lives here and nowhere else (perf_counter_ns around the runner's native
call, inputs prepared beforehand). A run is repeated until the median is stable
or the time limit is hit; the coefficient of variation says how noisy it was.
On CUDA the work is asynchronous: each call is timed with CUDA events recorded on
the stream around it and waited for before the next call, so launch gaps count and
queued work never spills into the next sample.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from inferforge.backends.base import Runner


@dataclass(frozen=True)
class BenchSettings:
    """How long to measure. Defaults suit a 2-core machine and models up to ResNet-50."""

    batch_sizes: tuple[int, ...] = (1, 8, 32)
    warmup_runs: int = 3
    min_runs: int = 20
    max_runs: int = 2000
    min_seconds: float = 1.0
    max_seconds: float = 6.0
    sweep_min_runs: int = 3
    sweep_seconds: float = 1.5


@dataclass(frozen=True)
class LatencyStats:
    batch_size: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    cv: float  # standard deviation / mean
    throughput: float  # samples per second at the median latency


@dataclass(frozen=True)
class BenchReport:
    latency: LatencyStats  # batch 1 (or the smallest batch)
    sweep: tuple[LatencyStats, ...]
    threads: int
    peak_rss_mb: float  # peak resident memory above what the process held before loading
    load_seconds: float
    load_rss_mb: float = 0.0  # resident memory the loaded artifact added, before any call
    peak_gpu_mb: float = 0.0  # CUDA: peak memory torch allocated on the GPU while loaded and measured
    end_to_end: LatencyStats | None = None  # CUDA, batch 1: numpy in, host-to-device, compute, back to numpy

    @property
    def best_throughput(self) -> float:
        return max(s.throughput for s in self.sweep)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["best_throughput"] = self.best_throughput
        return data


def time_calls(call: Callable[[], Any], batch_size: int, warmup: int, min_runs: int, max_runs: int,
               min_seconds: float, max_seconds: float, device: str = "cpu") -> LatencyStats:
    """Warm up, then time ``call`` until min_runs and min_seconds are both reached (or a cap)."""
    timed = _cuda_timer(call) if device == "cuda" else _host_timer(call)
    for _ in range(warmup):
        timed()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < max_runs:
        samples.append(timed())
        elapsed = time.perf_counter() - started
        if (len(samples) >= min_runs and elapsed >= min_seconds) or elapsed >= max_seconds:
            break
    return summarize(samples, batch_size)


def _host_timer(call: Callable[[], Any]) -> Callable[[], float]:
    def timed() -> float:
        t0 = time.perf_counter_ns()
        call()
        return (time.perf_counter_ns() - t0) / 1e6

    return timed


def _cuda_timer(call: Callable[[], Any]) -> Callable[[], float]:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def timed() -> float:
        start.record()
        call()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    return timed


def summarize(samples_ms: Sequence[float], batch_size: int) -> LatencyStats:
    arr = np.asarray(samples_ms)
    p50 = float(np.percentile(arr, 50))
    mean = float(arr.mean())
    cv = float(statistics.pstdev(samples_ms) / mean) if mean > 0 else 0.0
    return LatencyStats(batch_size, len(arr), p50, float(np.percentile(arr, 90)), float(np.percentile(arr, 99)),
                        mean, cv, batch_size * 1000.0 / p50 if p50 > 0 else 0.0)


def measure(runner: Runner, make_inputs: Callable[[int], dict[str, np.ndarray]],
            settings: BenchSettings) -> tuple[LatencyStats, ...]:
    """Latency at each batch size (the smallest measured longest); inputs are prepared before timing."""
    sweep = []
    for i, batch in enumerate(sorted(set(settings.batch_sizes))):
        native = runner.to_native(make_inputs(batch))

        def call(native: list[Any] = native) -> Any:
            return runner.run_native(native)

        if i == 0:
            stats = time_calls(call, batch, settings.warmup_runs, settings.min_runs, settings.max_runs,
                               settings.min_seconds, settings.max_seconds, runner.device)
        else:
            stats = time_calls(call, batch, 1, settings.sweep_min_runs, settings.max_runs,
                               settings.sweep_seconds, settings.sweep_seconds * 4, runner.device)
        sweep.append(stats)
    return tuple(sweep)


def end_to_end(runner: Runner, inputs: dict[str, np.ndarray], settings: BenchSettings) -> LatencyStats:
    """The whole call a user makes with host arrays: conversion, copies to and from the device, compute."""
    return time_calls(lambda: runner(inputs), len(next(iter(inputs.values()))), settings.warmup_runs,
                      settings.min_runs, settings.max_runs, settings.min_seconds, settings.max_seconds)


@contextmanager
def gpu_peak_sampler(device: str) -> Iterator[Callable[[], float]]:
    """Peak GPU memory torch allocated inside the block, above what was allocated before it (MiB)."""
    if device != "cuda":
        yield lambda: 0.0
        return
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    yield lambda: max(0.0, (torch.cuda.max_memory_allocated() - before) / 2**20)


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def peak_rss_sampler(interval_s: float = 0.005) -> Iterator[Callable[[], float]]:
    """Sample RSS in a thread; yields a function returning the peak seen so far (MiB)."""
    peak = [current_rss_mb()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            peak[0] = max(peak[0], current_rss_mb())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: max(peak[0], current_rss_mb())
    finally:
        stop.set()
        thread.join()
