"""Rank the passed candidates so that noise does not pick the winner.

A first pass measures each candidate alone, minutes apart from the others; on a shared
machine medians move by a third between runs, so a single pass trusts gaps that are not
there. The leaders (the best CONTENDERS and any within CONTENDER_RATIO of the best) are
then re-measured in turns, in one process window (bench.interleave), and each is compared
with the fastest round by round, with a bootstrap interval. A gap whose interval holds
1.0 and stays under bench.TIE_MARGIN is a tie, and a tie goes to the simpler artifact: one that
runs no user code, then a portable one, then the higher precision, then the faster to load. The pick is finally
checked against every passing candidate: never measurably slower than any of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferforge.backends import get_backend
from inferforge.bench import cycling_call, interleave, is_tie, ratio_interval
from inferforge.candidate import CandidateResult, SearchContext, Status
from inferforge.options import Objective
from inferforge.types import Precision

# A candidate whose artifact runs the user's code at load (the source artifact) wins only when this much faster:
# a package that loads without executing code is worth a little speed.
USER_CODE_HANDICAP = 1.1
CONTENDERS = 4  # the best this many of the first pass are re-measured side by side ...
CONTENDER_RATIO = 1.5  # ... and any other within this factor of the best (the noise seen between runs here)
CONFIDENCE = 0.95
# Simpler first: full precision before reduced, reduced floating point before quantized.
PRECISION_SIMPLICITY = {Precision.FP32: 0, Precision.TF32: 1, Precision.BF16: 2, Precision.FP16: 2,
                        Precision.FP8: 3, Precision.INT8: 3}
STATUS_ORDER = {Status.PASSED: 0, Status.REJECTED: 1, Status.FAILED: 2, Status.SKIPPED: 3}


@dataclass(frozen=True)
class Confirmation:
    """A candidate's figures from the interleaved re-measure, against the fastest one re-measured with it."""

    batch_size: int
    rounds: int
    ms_per_sample: float  # median over rounds (per call at batch 1)
    ratio: float  # this candidate's time / the fastest's (handicap included), median over rounds
    low: float  # CONFIDENCE interval of the ratio
    high: float
    tie: bool  # bench.is_tie: not told apart from the fastest

    def describe(self) -> str:
        if self.ratio == 1.0 and self.low == 1.0:
            return "fastest"
        return f"{self.ratio:.2f}x [{self.low:.2f}, {self.high:.2f}]" + (" tie" if self.tie else "")


def handicap(c: CandidateResult) -> float:
    return USER_CODE_HANDICAP if get_backend(c.config.backend).runs_user_code else 1.0


def score(c: CandidateResult, objective: Objective) -> float:
    """Lower is better: the first-pass figure the objective decides on, handicap included."""
    if c.bench is None:
        return float("inf")
    if objective is Objective.LATENCY:
        return c.bench.latency.p50_ms * handicap(c)
    return -c.bench.best_throughput / handicap(c)


def rank(results: Sequence[CandidateResult], objective: Objective) -> list[CandidateResult]:
    """Passed candidates best-first by the first pass, then rejected (by the same), failed, skipped."""
    return sorted(results, key=lambda c: (STATUS_ORDER[c.status], score(c, objective)))


def contenders(ranked: Sequence[CandidateResult], objective: Objective) -> list[CandidateResult]:
    """The leaders worth re-measuring: on the leader's device, the best CONTENDERS and any within
    CONTENDER_RATIO of the leader. Fewer than two: nothing to tell apart."""
    passed = [c for c in ranked if c.status is Status.PASSED and c.bench is not None]
    if len(passed) < 2:
        return []
    leader = passed[0]
    same = [c for c in passed if c.config.device == leader.config.device]
    best = _time_per_unit(leader, objective)
    return [c for i, c in enumerate(same)
            if i < CONTENDERS or _time_per_unit(c, objective) <= CONTENDER_RATIO * best]


def timed_batch(c: CandidateResult, objective: Objective) -> int:
    """The batch size a candidate is re-measured at: batch 1 for latency, its own best for throughput."""
    return c.bench.latency.batch_size if objective is Objective.LATENCY else c.bench.best.batch_size


def remeasure(chosen: Sequence[CandidateResult], context: SearchContext) -> dict[str, np.ndarray]:
    """Load the chosen candidates together and time them in turns on the inputs the objective decides on
    (runs where candidates run: the search worker, or the search's own process)."""
    options = context.options
    calls: dict[str, Any] = {}
    units: dict[str, int] = {}
    first_pass: dict[str, float] = {}
    for c in chosen:
        assert c.artifact is not None and c.bench is not None
        batch = timed_batch(c, options.objective)
        runner = get_backend(c.config.backend).load(c.artifact, context.source.spec, options.threads)
        calls[c.key] = cycling_call(runner, context.timing_feeds(batch))
        units[c.key] = 1 if options.objective is Objective.LATENCY else batch
        first_pass[c.key] = next(s.p50_ms for s in c.bench.sweep if s.batch_size == batch)
    device = chosen[0].config.device
    return interleave(calls, units, first_pass, options.bench, device)


def confirm(ranked: Sequence[CandidateResult], times: Mapping[str, np.ndarray],
            objective: Objective) -> tuple[list[CandidateResult], list[str]]:
    """The ranking after the re-measure: the pick (the simplest of those tied with the fastest, and never
    measurably slower than another re-measured one), the other re-measured ones by their ratio, then the rest
    as they were. Returns the new order and notes that say what decided."""
    measured = [c for c in ranked if c.key in times]
    if len(measured) < 2:
        return list(ranked), []
    scaled = {c.key: np.asarray(times[c.key]) * handicap(c) for c in measured}
    fastest = min(measured, key=lambda c: float(np.median(scaled[c.key])))
    confirmed: dict[str, CandidateResult] = {}
    for c in measured:
        ratio, low, high = ratio_interval(scaled[c.key], scaled[fastest.key], CONFIDENCE)
        if c is fastest:
            ratio = low = high = 1.0
        c.confirmation = Confirmation(timed_batch(c, objective), len(times[c.key]),
                                      float(np.median(times[c.key])), ratio, low, high, is_tie(low, high))
        confirmed[c.key] = c
    tied = [c for c in measured if c.confirmation.tie]
    pick = next((c for c in sorted(tied, key=simplicity) if _never_slower(c, measured, scaled)), fastest)
    lower = pick
    pick = _higher_precision_unless_proven(pick, measured, scaled)
    rest = sorted((c for c in measured if c is not pick), key=lambda c: c.confirmation.ratio)
    others = [c for c in ranked if c.key not in confirmed]
    notes = [f"the {len(measured)} leading candidates were re-measured in turns ({len(times[pick.key])} rounds, "
             f"{CONFIDENCE:.0%} intervals on the ratio to the fastest): {_summary(measured)}"]
    if pick is not fastest:
        notes.append(f"picked {pick.key} over {fastest.key}, the fastest by "
                     f"{pick.confirmation.ratio:.2f}x [{pick.confirmation.low:.2f}, {pick.confirmation.high:.2f}]: "
                     f"within the interval, a tie, and {pick.key} {_why_simpler(pick, fastest)}")
    if pick is not lower:
        ratio, low, high = ratio_interval(scaled[pick.key], scaled[lower.key], CONFIDENCE)
        notes.append(f"picked {pick.key} over {lower.key}: {lower.key} computes in {lower.config.precision.value} "
                     f"and is not measurably faster ({pick.key} takes {ratio:.2f}x its time [{low:.2f}, {high:.2f}]); "
                     "a lower precision is taken only where the measurements show it faster")
    notes.append(_never_slower_note(pick, [c for c in others if c.status is Status.PASSED], objective))
    return [pick, *rest, *others], notes


def _higher_precision_unless_proven(pick: CandidateResult, measured: Sequence[CandidateResult],
                                    scaled: Mapping[str, np.ndarray]) -> CandidateResult:
    """The fastest re-measured candidate of a higher precision than ``pick`` that ``pick`` is not measurably
    faster than (the interval of its time over pick's holds 1.0, however wide), and that is not measurably slower
    than any other; else ``pick``. Lower precision costs accuracy, so it must buy speed the measurements show: a
    MobileNetV3 INT8 pick that won its re-measure by 1.04x [0.92, 1.22] over FP32 then ran 0.86x FP32 in the
    next run (docs/benchmarks.md)."""
    level = PRECISION_SIMPLICITY.get
    safer = [c for c in measured if level(c.config.precision, 9) < level(pick.config.precision, 9)
             and ratio_interval(scaled[c.key], scaled[pick.key], CONFIDENCE)[1] <= 1.0
             and _never_slower(c, [m for m in measured if m is not pick], scaled)]
    return min(safer, key=lambda c: float(np.median(scaled[c.key])), default=pick)


def simplicity(c: CandidateResult) -> tuple[Any, ...]:
    """Tie-break, simpler first: no user code at load, portable, higher precision, faster to load."""
    backend = get_backend(c.config.backend)
    return (backend.runs_user_code, not backend.portable, PRECISION_SIMPLICITY.get(c.config.precision, 9),
            c.bench.load_seconds if c.bench is not None else float("inf"))


def _never_slower(pick: CandidateResult, measured: Sequence[CandidateResult], scaled: Mapping[str, np.ndarray]) -> bool:
    """Not measurably slower than any other re-measured candidate (every interval of pick/other holds 1.0)."""
    return all(ratio_interval(scaled[pick.key], scaled[c.key], CONFIDENCE)[1] <= 1.0
               for c in measured if c is not pick)


def _why_simpler(pick: CandidateResult, other: CandidateResult) -> str:
    a, b = get_backend(pick.config.backend), get_backend(other.config.backend)
    if a.runs_user_code != b.runs_user_code:
        return "runs none of the model's Python code at load"
    if a.portable != b.portable:
        return "is portable (runs on any CPU with its Python package alone)"
    if PRECISION_SIMPLICITY.get(pick.config.precision) != PRECISION_SIMPLICITY.get(other.config.precision):
        return f"computes in {pick.config.precision.value} rather than {other.config.precision.value}"
    return (f"loads faster ({pick.bench.load_seconds:.2f} s against {other.bench.load_seconds:.2f} s)"
            if pick.bench is not None and other.bench is not None else "is simpler")


def _summary(measured: Sequence[CandidateResult]) -> str:
    ordered = sorted(measured, key=lambda c: c.confirmation.ratio)
    return "; ".join(f"{c.key} {c.confirmation.ms_per_sample:.3g} ms {c.confirmation.describe()}" for c in ordered)


def _never_slower_note(pick: CandidateResult, unmeasured: Sequence[CandidateResult], objective: Objective) -> str:
    """The final check, said: the pick is not slower than a passing candidate outside the re-measure."""
    same = [c for c in unmeasured if c.config.device == pick.config.device and c.bench is not None]
    if not same:
        return f"{pick.key} is not measurably slower than any passing candidate"
    mine = _time_per_unit(pick, objective)
    nearest = min(_time_per_unit(c, objective) / mine for c in same)
    return (f"{pick.key} is not measurably slower than any re-measured candidate; the {len(same)} other passing "
            f"candidate(s) on {pick.config.device} measured {nearest:.2f}x its time or more in the first pass")


def _time_per_unit(c: CandidateResult, objective: Objective) -> float:
    """First-pass ms per call at batch 1 (latency) or per sample at the best batch (throughput), handicapped."""
    if objective is Objective.LATENCY:
        return c.bench.latency.p50_ms * handicap(c)
    return handicap(c) / c.bench.best_throughput


__all__ = ["CONFIDENCE", "Confirmation", "USER_CODE_HANDICAP", "confirm", "contenders", "rank", "remeasure",
           "score", "simplicity"]
