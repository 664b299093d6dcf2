"""The ranking survives noise, and the objective is timed on the data's own shapes (ranking.py, traffic.py)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from conftest import FAST_BENCH, fast_options
from torch import nn

from inferforge.backends import get_backend
from inferforge.backends.base import Artifact
from inferforge.bench import BenchReport, LatencyStats, interleave, ratio_interval
from inferforge.candidate import CandidateResult, Status
from inferforge.data import Dataset
from inferforge.options import Objective
from inferforge.ranking import confirm, contenders, rank
from inferforge.report import CONFIRMED, DATA_SHAPES_P50, SPEC_SHAPE_P50, markdown_leaderboard
from inferforge.traffic import timing_inputs
from inferforge.types import ModelSpec, Precision, TensorSpec


def _spec(*texts: str) -> ModelSpec:
    return ModelSpec(tuple(TensorSpec.parse(t) for t in texts))


def _padded_tokens(lengths: list[int], width: int = 12) -> dict[str, np.ndarray]:
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = np.arange(1, n + 1) + i
        mask[i, :n] = 1
    return {"ids": ids, "mask": mask}


def test_own_lengths_cut_trailing_padding_shared_by_every_input_of_the_dim() -> None:
    spec = _spec("ids:int64[B,S=12]:0..99", "mask:int64[B,S=12]:0..1")
    traffic = timing_inputs(spec, Dataset(_padded_tokens([3, 7, 12, 11, 5]), None, "user"))
    assert traffic is not None
    # 11 real tokens then one pad: a single trailing repeat may be content, so the sample keeps its 12.
    assert traffic.lengths["S"].tolist() == [3, 7, 12, 12, 5]
    assert "S 3..12" in traffic.description and "pads to 12" in traffic.description
    singles = traffic.feeds(1)
    assert sorted(f["ids"].shape[1] for f in singles) == [3, 5, 7, 12, 12]
    batches = timing_inputs(spec, Dataset(_padded_tokens([3, 7, 12, 10, 5]), None, "user")).feeds(2)
    assert len(batches) == 3
    for feed in batches:  # a batch is cut to its longest sample, as dynamic batching pads it
        assert feed["ids"].shape == feed["mask"].shape and feed["ids"].shape[0] == 2
        assert feed["mask"][:, -1].any()


def test_no_timing_shapes_for_generated_data_fixed_dims_or_no_padding() -> None:
    data = _padded_tokens([3, 7, 12])
    dynamic = _spec("ids:int64[B,S=12]:0..99", "mask:int64[B,S=12]:0..1")
    assert timing_inputs(dynamic, Dataset(data, None, "generated from the spec")) is None
    assert timing_inputs(_spec("ids:int64[B,12]:0..99", "mask:int64[B,12]:0..1"), Dataset(data, None, "u")) is None
    assert timing_inputs(dynamic, Dataset(_padded_tokens([12, 12, 11]), None, "user")) is None


def test_a_length_below_the_dim_range_is_raised_to_its_minimum() -> None:
    spec = _spec("ids:int64[B,S=12]:0..99", "mask:int64[B,S=12]:0..1")
    traffic = timing_inputs(spec, Dataset(_padded_tokens([1, 7]), None, "user"), {"S": (2, 512)})
    assert traffic is not None and traffic.lengths["S"].tolist() == [2, 7]


def _sleeper(ms: float):  # noqa: ANN202
    return lambda: time.sleep(ms / 1000)


def test_interleaved_times_tell_a_real_gap_from_a_tie() -> None:
    settings = replace(FAST_BENCH, confirm_min_rounds=8, confirm_max_rounds=8, confirm_seconds=5.0,
                       confirm_block_seconds=0.004)
    times = interleave({"slow": _sleeper(4), "fast": _sleeper(2), "same": _sleeper(2)},
                       {"slow": 1, "fast": 1, "same": 1}, {"slow": 4, "fast": 2, "same": 2}, settings)
    assert all(len(v) == 8 for v in times.values())
    ratio, low, high = ratio_interval(times["slow"], times["fast"])
    assert 1.5 < low <= ratio <= high < 2.5
    _, low, high = ratio_interval(times["same"], times["fast"])
    assert low < 1.2 and high > 0.85


def test_turns_vary_their_order_so_no_candidate_always_follows_the_same_neighbour() -> None:
    sequence: list[str] = []
    calls = {k: (lambda k=k: sequence.append(k)) for k in "abcd"}
    settings = replace(FAST_BENCH, confirm_min_rounds=12, confirm_max_rounds=12, confirm_seconds=30.0,
                       confirm_block_seconds=1.0)
    interleave(calls, dict.fromkeys(calls, 1), dict.fromkeys(calls, 1e3), settings)
    timed = sequence[len(calls):]  # after the warm-up round: per turn, one untimed and one timed call
    turns = timed[::2]
    predecessors = {k: [turns[i - 1] for i in range(1, len(turns)) if turns[i] == k] for k in calls}
    most_common_share = {k: max(p.count(q) for q in p) / len(p) for k, p in predecessors.items()}
    assert max(most_common_share.values()) <= 0.6, predecessors  # a fixed cycle (A B C D, B C D A, ...): 0.75


def test_the_pause_before_a_turn_lets_the_previous_runtimes_leftover_work_end() -> None:
    """A runtime whose threads keep spinning after its call slows whatever runs next (measured in
    docs/benchmarks.md, "Timing in turns"); here the leftover is simulated as a deadline during which
    every other call costs 3 ms more. With the pause, two identical candidates time alike and clean."""
    busy_until = [0.0]

    def spinner() -> None:
        time.sleep(0.001)
        busy_until[0] = time.perf_counter() + 0.02

    def model() -> None:
        time.sleep(0.004 if time.perf_counter() < busy_until[0] else 0.001)

    calls = {"spinner": spinner, "a": model, "b": model}
    base = replace(FAST_BENCH, confirm_min_rounds=10, confirm_max_rounds=10, confirm_block_seconds=0.004)
    fair = interleave(calls, dict.fromkeys(calls, 1), dict.fromkeys(calls, 1.0),
                      replace(base, confirm_settle_seconds=0.03))
    assert max(float(np.median(fair[k])) for k in "ab") < 1.8  # ms: the 1 ms model, not its slowed 4 ms
    hurt = interleave(calls, dict.fromkeys(calls, 1), dict.fromkeys(calls, 1.0), base)
    assert max(float(np.max(hurt[k])) for k in "ab") > 2.0  # without it, a block that follows pays


def _result(backend: str, precision: Precision, p50: float, load_s: float = 0.1) -> CandidateResult:
    config = next(c for c in get_backend(backend).configs("cpu") if c.precision is precision)
    stats = LatencyStats(1, 10, p50, p50, p50, p50, 0.0, 1000 / p50)
    bench = BenchReport(stats, (stats,), 2, 0.0, load_s)
    return CandidateResult(config, Status.PASSED, artifact=Artifact(config, Path("."), (), 0), bench=bench)


def test_a_tie_goes_to_the_simpler_artifact_and_the_report_says_why() -> None:
    rng = np.random.default_rng(0)
    ranked = rank([_result("openvino", Precision.INT8, 9.0), _result("onnxruntime", Precision.FP32, 10.0),
                   _result("eager", Precision.FP32, 30.0)], Objective.LATENCY)
    chosen = contenders(ranked, Objective.LATENCY)
    assert [c.config.backend for c in chosen] == ["openvino", "onnxruntime", "eager"]
    noise = rng.normal(1.0, 0.05, 20)
    times = {"openvino": 9.9 * noise * rng.normal(1.0, 0.08, 20), "onnxruntime": 10.0 * noise,
             "eager": 30.0 * noise}
    keyed = {c.key: times[c.config.backend] for c in chosen}
    order, notes = confirm(ranked, keyed, Objective.LATENCY)
    assert order[0].config.backend == "onnxruntime"  # tied with INT8: FP32 and portable is simpler
    assert order[0].confirmation.tie
    eager = next(c for c in order if c.config.backend == "eager")
    assert not eager.confirmation.tie and eager.confirmation.low > 2.5
    assert any("a tie" in n and "portable" in n for n in notes)


def test_a_clear_gap_is_not_a_tie_even_against_a_simpler_artifact() -> None:
    rng = np.random.default_rng(1)
    ranked = rank([_result("onnxruntime", Precision.FP32, 10.0), _result("openvino", Precision.INT8, 11.0)],
                  Objective.LATENCY)
    noise = rng.normal(1.0, 0.03, 20)
    keyed = {ranked[0].key: 10.0 * noise, ranked[1].key: 6.0 * noise}  # the first pass had them the wrong way
    order, notes = confirm(ranked, keyed, Objective.LATENCY)
    assert order[0].config.backend == "openvino"
    assert order[1].confirmation.low > 1.4
    assert any("not measurably slower" in n for n in notes)


def test_a_wide_interval_is_no_tie_the_median_ranks() -> None:
    rng = np.random.default_rng(2)
    ranked = rank([_result("onnxruntime", Precision.INT8, 10.0), _result("openvino", Precision.INT8, 10.5)],
                  Objective.LATENCY)
    shared = rng.normal(1.0, 0.02, 12)
    # The portable one is 4% slower in the median but swings by 10% from round to round: no tie.
    keyed = {ranked[0].key: 10.4 * shared * rng.normal(1.0, 0.10, 12), ranked[1].key: 10.0 * shared}
    order, _ = confirm(ranked, keyed, Objective.LATENCY)
    loser = order[1].confirmation
    assert order[0].config.backend == "openvino" and loser.low <= 1.0 and loser.high > 1.05 and not loser.tie


def test_a_lower_precision_must_be_measurably_faster_to_win() -> None:
    rng = np.random.default_rng(3)
    shared = rng.normal(1.0, 0.02, 16)
    ranked = rank([_result("onnxruntime", Precision.INT8, 9.6), _result("onnxruntime", Precision.FP32, 10.0)],
                  Objective.LATENCY)
    int8, fp32 = ranked[0].key, ranked[1].key
    # INT8 4% faster in the median, but swinging by 10% a round: not shown to be faster, so FP32 is kept.
    order, notes = confirm(ranked, {int8: 9.6 * shared * rng.normal(1.0, 0.10, 16), fp32: 10.0 * shared},
                           Objective.LATENCY)
    assert order[0].key == fp32 and any("not measurably faster" in n for n in notes)
    # Clearly faster (0.6x the time every round): INT8 wins.
    order, _ = confirm(ranked, {int8: 6.0 * shared, fp32: 10.0 * shared}, Objective.LATENCY)
    assert order[0].key == int8


def test_rejected_and_failed_candidates_are_never_re_measured() -> None:
    passed = _result("onnxruntime", Precision.FP32, 10.0)
    rejected = replace(_result("openvino", Precision.INT8, 5.0), status=Status.REJECTED)
    assert contenders(rank([passed, rejected], Objective.LATENCY), Objective.LATENCY) == []


class PooledTokens(nn.Module):
    """Embedding + linear, mean over real tokens: its cost grows with the length."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.proj = nn.Linear(32, 32)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        states = torch.relu(self.proj(self.embed(ids)))
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def test_search_decides_on_the_datas_own_lengths_and_re_measures_the_leaders(tmp_path: Path) -> None:
    import inferforge

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = _padded_tokens([int(n) for n in rng.integers(3, 9, 24)], width=40)
    options = fast_options(backends=("eager", "onnxruntime", "torchscript"), precisions=("fp32",),
                           bench=replace(FAST_BENCH, confirm_min_rounds=3, confirm_max_rounds=3,
                                         confirm_seconds=0.0, confirm_block_seconds=0.001))
    result = inferforge.optimize(PooledTokens().eval(), inputs=["ids:int64[B,S=40]:0..99", "mask:int64[B,S=40]:0..1"],
                                 data=Dataset(data, None, "user"), options=options, out=None)
    passed = result.search.passed
    assert len(passed) >= 2
    for c in passed:
        assert c.bench.timed_on.startswith("the data's samples at their own lengths")
        assert c.bench.example_shape and c.bench.example_shape[0].batch_size == 1
    assert passed[0].confirmation is not None and passed[0].confirmation.rounds == 3
    board = markdown_leaderboard(result.search)
    assert DATA_SHAPES_P50 in board and SPEC_SHAPE_P50 in board and CONFIRMED in board
    assert any("decided on the data's samples at their own lengths: S 3..8" in n for n in result.search.notes)
    assert any("re-measured in turns" in n for n in result.search.notes)


def test_the_re_measure_can_be_turned_off_and_the_note_says_the_first_pass_ranks() -> None:
    import inferforge

    options = fast_options(backends=("eager", "onnxruntime"), precisions=("fp32",),
                           bench=replace(FAST_BENCH, confirm_max_rounds=0))
    result = inferforge.optimize("models:make_mlp", options=options, out=None)
    assert len(result.search.passed) == 2
    assert all(c.confirmation is None for c in result.search.candidates)
    assert any("not re-measured" in n and "first pass" in n for n in result.search.notes)
