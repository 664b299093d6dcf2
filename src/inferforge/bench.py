"""Measure a runner: latency percentiles at batch 1, throughput over a batch sweep, peak memory.

Timing lives here and nowhere else (perf_counter_ns around the runner's native
call, inputs prepared beforehand). A run is repeated until the median is stable
or the time limit is hit; the coefficient of variation says how noisy it was.
On CUDA the work is asynchronous: each call is timed with CUDA events recorded on
the stream around it and waited for before the next call, so launch gaps count and
queued work never spills into the next sample.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from inferforge.backends.base import Runner
from inferforge.errors import SpecError

TIE_MARGIN = 1.05  # is_tie: the most a tied choice may plausibly lose
K = TypeVar("K")  # what interleave's callers name their candidates by
SPEC_SHAPE = "the spec's example shape"  # what BenchReport.timed_on says when no data shapes were timed


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
    # The interleaved re-measure of the leading candidates (bench.interleave): rounds of one block each.
    confirm_min_rounds: int = 10
    confirm_max_rounds: int = 60
    confirm_seconds: float = 12.0
    confirm_block_seconds: float = 0.04
    # CPU only: an idle pause before each turn. A runtime's worker threads keep spinning for a while after
    # its last call (ONNX Runtime's pool, OpenMP, TBB): on 2 cores the next candidate's block then runs
    # beside them. Measured 2026-12-03 with four identical ONNX Runtime sessions timed in turns beside
    # torch and OpenVINO: 0.76x..1.06x of each other without a pause, 0.98x..1.02x and the lone session's
    # time with 60 ms (docs/benchmarks.md, "Timing in turns").
    confirm_settle_seconds: float = 0.06

    def __post_init__(self) -> None:
        problems = [] if self.batch_sizes and min(self.batch_sizes) >= 1 else [
            f"batch_sizes {list(self.batch_sizes)} must list sizes of 1 or more"]
        problems += [f"{name} is {getattr(self, name)}, it must be positive" for name in
                     ("min_runs", "max_runs", "max_seconds", "sweep_min_runs", "confirm_block_seconds")
                     if getattr(self, name) <= 0]
        problems += [f"confirm_settle_seconds is {self.confirm_settle_seconds}, it must be 0 or more"] * (
            self.confirm_settle_seconds < 0)
        if problems:
            raise SpecError("BenchSettings: " + "; ".join(problems))


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
    """``latency`` and ``sweep`` are the figures the objective decides on: timed on the data's own shapes
    when the validation data has them (``timed_on`` says so, traffic.py), else on the spec's example shape;
    ``example_shape`` then holds the spec-shape sweep beside them."""

    latency: LatencyStats  # batch 1 (or the smallest batch)
    sweep: tuple[LatencyStats, ...]
    threads: int
    peak_rss_mb: float  # peak resident memory above what the process held before loading
    load_seconds: float
    load_rss_mb: float = 0.0  # resident memory the loaded artifact added, before any call
    peak_gpu_mb: float = 0.0  # CUDA: peak memory torch allocated on the GPU while loaded and measured
    end_to_end: LatencyStats | None = None  # CUDA, batch 1: numpy in, host-to-device, compute, back to numpy
    timed_on: str = SPEC_SHAPE
    example_shape: tuple[LatencyStats, ...] = ()  # the spec's example shape, when the data's shapes decide

    @property
    def best(self) -> LatencyStats:
        """The batch size with the most samples/s."""
        return max(self.sweep, key=lambda s: s.throughput)

    @property
    def best_throughput(self) -> float:
        return self.best.throughput

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


def measure(runner: Runner, feeds_for_batch: Callable[[int], Sequence[dict[str, np.ndarray]]],
            settings: BenchSettings) -> tuple[LatencyStats, ...]:
    """Latency at each batch size (the smallest measured longest). ``feeds_for_batch(b)`` gives one or more
    inputs of batch b: calls cycle through them (samples of different lengths), each warmed up first, and
    all are converted before timing."""
    sweep = []
    for i, batch in enumerate(sorted(set(settings.batch_sizes))):
        call = cycling_call(runner, feeds_for_batch(batch))
        if i == 0:
            stats = time_calls(call, batch, max(settings.warmup_runs, call.feeds), settings.min_runs,
                               settings.max_runs, settings.min_seconds, settings.max_seconds, runner.device)
        else:
            stats = time_calls(call, batch, call.feeds, settings.sweep_min_runs, settings.max_runs,
                               settings.sweep_seconds, settings.sweep_seconds * 4, runner.device)
        sweep.append(stats)
    return tuple(sweep)


class cycling_call:  # noqa: N801 - used like a function
    """Calls ``runner`` on its native inputs, one feed after the other, round and round."""

    def __init__(self, runner: Runner, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        if not feeds:
            raise ValueError("no inputs to time")
        self._native = [runner.to_native(feed) for feed in feeds]
        self._run = runner.run_native
        self._next = 0

    @property
    def feeds(self) -> int:
        return len(self._native)

    def __call__(self) -> Any:
        native = self._native[self._next]
        self._next = (self._next + 1) % len(self._native)
        return self._run(native)


def interleave(calls: Mapping[K, Callable[[], Any]], units: Mapping[K, int], first_pass_ms: Mapping[K, float],
               settings: BenchSettings, device: str = "cpu") -> dict[K, np.ndarray]:
    """Time several candidates in turns, in one process window, so the machine's drifts (another job,
    frequency, cache) hit all of them alike; a ranking from separate runs minutes apart trusts any gap.

    Each round visits every candidate once, in a fresh random order (seeded, so a run repeats): with a fixed
    cycle each candidate always follows the same neighbour and inherits its leftovers. On CPU each turn
    starts with an idle pause (``settings.confirm_settle_seconds``) so the previous runtime's spinning
    threads park, then one untimed call (a runtime whose thread pool slept pays for waking it, which a
    steady stream of calls does not), then a block of calls lasting about ``settings.confirm_block_seconds``
    (from ``first_pass_ms``). Returns, per key, the ms per unit (sample) of each round's block, rounds
    aligned across keys, so ratios can be taken round by round (``ratio_interval``)."""
    keys = list(calls)
    timers = {k: _cuda_timer(calls[k]) if device == "cuda" else _host_timer(calls[k]) for k in keys}
    block = {k: max(1, round(1e3 * settings.confirm_block_seconds / max(first_pass_ms[k], 1e-3))) for k in keys}
    settle = settings.confirm_settle_seconds if device != "cuda" else 0.0
    order = random.Random(len(keys))
    for k in keys:  # warm-up round: every feed of every candidate once more
        for _ in range(block[k]):
            timers[k]()
    times: dict[K, list[float]] = {k: [] for k in keys}
    started = time.perf_counter()
    rounds = 0
    while rounds < settings.confirm_max_rounds:
        for key in order.sample(keys, len(keys)):
            if settle:
                time.sleep(settle)
            calls[key]()  # untimed: the runtime's threads and caches wake after the others ran
            spent = sum(timers[key]() for _ in range(block[key]))
            times[key].append(spent / (block[key] * units[key]))
        rounds += 1
        elapsed = time.perf_counter() - started
        if rounds >= settings.confirm_min_rounds and elapsed >= settings.confirm_seconds:
            break
        if elapsed >= 3 * settings.confirm_seconds and rounds >= 3:  # slow candidates: short of min rounds
            break
    return {k: np.asarray(v) for k, v in times.items()}


def one_call_ms(call: Callable[[], Any]) -> float:
    """A first guess of one call's time after a warm-up call, so ``interleave`` can size its blocks."""
    call()
    started = time.perf_counter()
    call()
    return 1e3 * (time.perf_counter() - started)


def is_tie(low: float, high: float) -> bool:
    """A ratio's interval that cannot tell the gap from none (it holds 1.0) and cannot show it to exceed
    TIE_MARGIN: then the simpler choice may win. An interval of [0.99, 1.11] (ResNet-50, ONNX Runtime INT8
    against OpenVINO INT8) holds 1.0 but leaves an 11% loss plausible, and the simpler artifact then measured
    0.83x in the next run: a wide interval is no tie, and the median ranks."""
    return low <= 1.0 and high <= TIE_MARGIN


def ratio_interval(numerator: np.ndarray, denominator: np.ndarray, confidence: float = 0.95,
                   resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Median of the round-by-round ratios and its bootstrap interval (paired rounds: a noisy round moves
    both sides). Returns (median, low, high)."""
    ratios = np.asarray(numerator, dtype=float) / np.asarray(denominator, dtype=float)
    if len(ratios) < 2:
        value = float(ratios[0]) if len(ratios) else float("nan")
        return value, value, value
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(ratios, size=(resamples, len(ratios)), replace=True), axis=1)
    tail = (1 - confidence) / 2
    return float(np.median(ratios)), float(np.quantile(medians, tail)), float(np.quantile(medians, 1 - tail))


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
