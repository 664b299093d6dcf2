from __future__ import annotations

import time

import pytest

from inferforge.bench import current_rss_mb, peak_rss_sampler, summarize, time_calls


def test_summarize_percentiles_cv_and_throughput() -> None:
    stats = summarize([1.0] * 98 + [10.0, 20.0], batch_size=4)
    assert stats.p50_ms == 1.0
    assert stats.p99_ms > 9.0
    assert stats.throughput == pytest.approx(4000.0)
    assert stats.cv > 1.0


def test_time_calls_meets_min_runs_and_time() -> None:
    calls = []
    stats = time_calls(lambda: calls.append(1), batch_size=1, warmup=2, min_runs=10, max_runs=1000,
                       min_seconds=0.05, max_seconds=5)
    assert stats.runs >= 10
    assert len(calls) == stats.runs + 2


def test_time_calls_measures_what_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fake clock each call takes a known time (2, 4, 6, ... ms): the figures are exactly those calls',
    with no timing window that a busy machine could miss."""
    clock = {"ns": 0}
    durations = iter(range(2, 100, 2))
    monkeypatch.setattr(time, "perf_counter_ns", lambda: clock["ns"])

    def call() -> None:
        clock["ns"] += next(durations) * 1_000_000

    stats = time_calls(call, 1, warmup=0, min_runs=5, max_runs=5, min_seconds=0, max_seconds=5)
    assert stats.runs == 5
    assert stats.p50_ms == pytest.approx(6.0)  # the calls took 2, 4, 6, 8 and 10 ms


def test_peak_rss_sees_a_temporary_allocation() -> None:
    before = current_rss_mb()
    with peak_rss_sampler(interval_s=0.001) as peak:
        block = bytearray(200 * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
        time.sleep(0.05)
        del block
    assert peak() - before > 150
