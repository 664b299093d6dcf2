"""CPU tuning of the picked artifact: intra-op threads for latency, instances x threads for throughput.

The best setting depends on the model and the machine (a small model gains nothing from a
second thread; a large batch prefers one instance using every core; a launch-bound model
prefers two instances of one thread each), so it is measured, not guessed, and recorded in
the package: ``load`` uses the latency threads by default, and ``inferforge serve`` the
throughput instances and threads.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from inferforge.backends.base import Runner
from inferforge.bench import BenchSettings, cycling_call, interleave, is_tie, one_call_ms, ratio_interval


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
         throughput_batch: int, settings: TuningSettings = TuningSettings(),
         latency_batches: Sequence[int] = (1,)) -> Tuning:
    """Measure ``load(threads)`` runners: per thread count, the p50 at each of ``latency_batches`` (batch 1
    and a batch the user's calls may bring), then samples/s for each split of the cores into instances x
    threads (instances call one shared runner from parallel threads).
    ``feeds(batch)``: the inputs the search's objective was timed on (traffic.feeds_for)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        latency_threads, latency = _latency_threads(load, feeds, sorted({1, *latency_batches}), cores, settings)
        throughput: dict[str, float] = {}
        best = (0.0, 1, cores)
        for threads in thread_counts(cores):
            instances = max(1, cores // threads)
            runner = load(threads)  # again: torch's thread count is per process, the last load set it
            rate = _samples_per_second(runner, feeds(throughput_batch)[0], instances, settings.throughput_seconds)
            throughput[f"{instances}x{threads}"] = rate
            if rate > best[0]:
                best = (rate, instances, threads)
    finally:  # loads and timed calls set torch's per-process threads: the caller keeps the count it had
        if torch is not None and before is not None:
            torch.set_num_threads(before)
    return Tuning(latency_threads, latency, best[1], best[2], throughput_batch, throughput)


def _latency_threads(load: Callable[[int], Runner], feeds: Callable[[int], Sequence[dict[str, np.ndarray]]],
                     batches: Sequence[int], cores: int, settings: TuningSettings) -> tuple[int, dict[int, float]]:
    """The thread count for ``load`` (``threads_from_rounds``), and each count's p50 at batch 1. Every
    (thread count, batch) pair is timed in turns (bench.interleave), each call under its own thread count
    (torch's is per process): measured one after the other, a noisy moment decides."""
    runners = {threads: load(threads) for threads in thread_counts(cores)}
    calls = {(threads, batch): _under_threads(threads, cycling_call(runner, feeds(batch)))
             for threads, runner in runners.items() for batch in batches}
    first = {key: one_call_ms(call) for key, call in calls.items()}
    rounds = BenchSettings(confirm_min_rounds=8, confirm_max_rounds=40,
                           confirm_seconds=settings.latency_seconds * len(calls), confirm_block_seconds=0.03)
    times = interleave(calls, dict.fromkeys(calls, 1), first, rounds)
    by_batch = {batch: {threads: times[(threads, batch)] for threads in runners} for batch in batches}
    return threads_from_rounds(by_batch), {threads: float(np.median(t)) for threads, t in by_batch[batches[0]].items()}


def threads_from_rounds(times: Mapping[int, Mapping[int, np.ndarray]]) -> int:
    """The thread count ``load`` keeps, from rounds timed in turns per batch size, then per thread count.

    The most threads tied with the fastest count at every batch (bench.is_tie on the round-by-round
    ratio): a tie costs nothing, and a larger batch gains from the extra threads. Where no count ties
    everywhere (one thread measurably faster at batch 1, two at batch 16), the count whose worst slowdown
    over the batches is least: ``load`` serves every batch size with one count, and a small loss at one
    batch beats a large one at another (cpu_peers, 2026-12-03: the digits CNN's FP32 pick ran batch 16 at
    0.60 ms where the same runtime on two threads ran 0.39 ms). Fewer threads win where they are faster
    at every batch, as on a machine whose other work stalls a thread at the pool's barrier."""
    slowdown: dict[int, list[float]] = {}
    tied_everywhere: set[int] | None = None
    for rounds in times.values():
        p50 = {threads: float(np.median(t)) for threads, t in rounds.items()}
        fastest = min(p50, key=p50.__getitem__)
        tied = set()
        for threads, t in rounds.items():
            ratio, low, high = ratio_interval(t, rounds[fastest])
            slowdown.setdefault(threads, []).append(ratio)
            if threads == fastest or is_tie(low, high):
                tied.add(threads)
        tied_everywhere = tied if tied_everywhere is None else tied_everywhere & tied
    if tied_everywhere:
        return max(tied_everywhere)
    return min(slowdown, key=lambda threads: (max(slowdown[threads]), -threads))


def _under_threads(threads: int, call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` with torch's intra-op threads set first (a no-op cost for runtimes with their own pools)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return call

    def run() -> Any:
        torch.set_num_threads(threads)
        return call()

    return run


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
