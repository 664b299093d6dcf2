"""CPU tuning of the picked artifact: intra-op threads for latency, instances x threads for throughput.

The best setting depends on the model and the machine (a small model gains nothing from a
second thread; a large batch prefers one instance using every core; a launch-bound model
prefers two instances of one thread each), so it is measured, not guessed, and recorded in
the package: ``load`` uses the latency threads by default, and ``inferforge serve`` the
throughput instances and threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from inferforge.backends.base import Runner
from inferforge.bench import cycling_call, time_calls


@dataclass(frozen=True)
class TuningSettings:
    latency_seconds: float = 1.0  # per thread count, at batch 1
    throughput_seconds: float = 1.5  # per (instances, threads) setting, at the throughput batch


@dataclass(frozen=True)
class Tuning:
    """What was measured and chosen. Throughput is in samples per second."""

    latency_threads: int
    latency_p50_ms: dict[int, float]  # threads -> p50 at batch 1
    throughput_instances: int
    throughput_threads: int
    throughput_batch: int
    throughput: dict[str, float]  # "instances x threads" -> samples/s

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def thread_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to the core count, and the core count itself."""
    counts = {cores}
    n = 1
    while n < cores:
        counts.add(n)
        n *= 2
    return sorted(counts)


def tune(load: Callable[[int], Runner], feeds: Callable[[int], Sequence[dict[str, np.ndarray]]], cores: int,
         throughput_batch: int, settings: TuningSettings = TuningSettings()) -> Tuning:
    """Measure ``load(threads)`` runners: p50 at batch 1 per thread count, then samples/s for each split
    of the cores into instances x threads (instances call one shared runner from parallel threads).
    ``feeds(batch)``: the inputs the search's objective was timed on (traffic.feeds_for)."""
    latency: dict[int, float] = {}
    for threads in thread_counts(cores):
        call = cycling_call(load(threads), feeds(1))
        stats = time_calls(call, 1, warmup=max(2, call.feeds), min_runs=10, max_runs=5000,
                           min_seconds=settings.latency_seconds, max_seconds=settings.latency_seconds * 3)
        latency[threads] = stats.p50_ms
    throughput: dict[str, float] = {}
    best = (0.0, 1, cores)
    for threads in thread_counts(cores):
        instances = max(1, cores // threads)
        runner = load(threads)  # again: torch's thread count is per process, the last load set it
        rate = _samples_per_second(runner, feeds(throughput_batch)[0], instances, settings.throughput_seconds)
        throughput[f"{instances}x{threads}"] = rate
        if rate > best[0]:
            best = (rate, instances, threads)
    fastest = min(latency.values())
    # Within 5% is noise on a shared machine: take the fewest threads, leaving cores to the rest of the host.
    latency_threads = min(t for t, p50 in latency.items() if p50 <= fastest * 1.05)
    return Tuning(latency_threads, latency, best[1], best[2], throughput_batch, throughput)


def _samples_per_second(runner: Runner, inputs: dict[str, np.ndarray], instances: int, seconds: float) -> float:
    native = runner.to_native(inputs)
    batch = len(next(iter(inputs.values())))
    runner.run_native(native)  # warm

    def worker(deadline: float) -> int:
        calls = 0
        while time.perf_counter() < deadline:
            runner.run_native(native)
            calls += 1
        return calls

    started = time.perf_counter()
    with ThreadPoolExecutor(instances) as pool:
        calls = sum(pool.map(worker, [started + seconds] * instances))
    return calls * batch / (time.perf_counter() - started)
