"""CPU tuning: every split of the cores is measured, the choice is recorded and used by load and serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from conftest import fast_options

import inferforge
from inferforge.manifest import MANIFEST, tuned_threads
from inferforge.tune import TuningSettings, thread_counts, threads_from_rounds, tune


def test_thread_counts_cover_powers_of_two_and_every_core() -> None:
    assert thread_counts(1) == [1]
    assert thread_counts(6) == [1, 2, 4, 6]


def test_optimize_records_tuning_and_load_uses_it(tmp_path: Path) -> None:
    result = inferforge.optimize("models:make_mlp", out=tmp_path / "mlp", name="mlp",
                                 options=fast_options(backends=("eager",), tune=True))
    tuning = result.tuning
    assert tuning is not None
    assert set(tuning.latency_p50_ms) == set(thread_counts(2)) and tuning.latency_threads in (1, 2)
    assert set(tuning.throughput) == {"2x1", "1x2"}
    assert f"{tuning.throughput_instances}x{tuning.throughput_threads}" in tuning.throughput
    manifest = json.loads((tmp_path / "mlp" / MANIFEST).read_text())
    assert manifest["tuning"]["latency_threads"] == tuning.latency_threads
    assert tuned_threads(manifest, manifest["chosen"]) == tuning.latency_threads
    assert tuned_threads(manifest, "some-fallback") is None
    inferforge.load(tmp_path / "mlp")
    assert torch.get_num_threads() == tuning.latency_threads


def test_tune_loads_each_thread_count_for_latency_and_again_for_throughput() -> None:
    calls: list[int] = []

    class Constant:
        def to_native(self, inputs):  # type: ignore[no-untyped-def]
            return [inputs["x"]]

        def run_native(self, args):  # type: ignore[no-untyped-def]
            return [args[0]]

    def load(threads: int) -> Constant:
        calls.append(threads)
        return Constant()

    chosen = tune(load, lambda n: [{"x": np.zeros((n, 4), np.float32)}], cores=2, throughput_batch=4,  # type: ignore[arg-type]
                  settings=TuningSettings(latency_seconds=0.05, throughput_seconds=0.05))
    assert calls == [1, 2, 1, 2]  # torch's thread count is per process: reloaded before each throughput run
    assert chosen.throughput_batch == 4 and set(chosen.throughput) == {"2x1", "1x2"}


def test_tuning_leaves_the_callers_torch_threads_as_they_were() -> None:
    import torch

    class Constant:
        def to_native(self, inputs):  # type: ignore[no-untyped-def]
            return [inputs["x"]]

        def run_native(self, args):  # type: ignore[no-untyped-def]
            return [args[0]]

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tune(lambda threads: Constant(), lambda n: [{"x": np.zeros((n, 4), np.float32)}], cores=2,  # type: ignore[arg-type]
             throughput_batch=4, settings=TuningSettings(latency_seconds=0.05, throughput_seconds=0.05))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_tie_at_batch_1_keeps_the_most_threads_and_a_real_gain_keeps_fewer() -> None:
    base = np.ones(20)
    wobble = np.tile([0.98, 1.03], 10)  # round-to-round noise of +-3%: no gap can be told from none
    assert threads_from_rounds({1: {1: base * wobble, 2: base}}) == 2
    assert threads_from_rounds({1: {1: base, 2: base * wobble}}) == 2  # 2 threads a hair slower: still a tie
    one_is_faster = {1: base, 2: base * 1.3}  # e.g. a busy machine stalling the second thread
    assert threads_from_rounds({1: one_is_faster, 16: one_is_faster}) == 1
    two_is_faster = {1: base * 1.6, 2: base}
    assert threads_from_rounds({1: two_is_faster}) == 2


def test_threads_are_chosen_for_every_batch_not_only_batch_1() -> None:
    """One thread 8% faster at batch 1 but 50% slower at batch 16 (a small CNN): two threads lose least."""
    base = np.ones(20)
    assert threads_from_rounds({1: {1: base, 2: base * 1.08}, 16: {1: base * 1.5, 2: base}}) == 2
    assert threads_from_rounds({1: {1: base, 2: base * 1.5}, 16: {1: base * 1.08, 2: base}}) == 1
