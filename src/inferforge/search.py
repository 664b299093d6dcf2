"""Candidates -> build -> load -> validate -> probe -> benchmark -> rank within the accuracy budget.

The search knows backends only through their contract. Every candidate is
measured, including the reference, so nothing slower than plain eager can win,
and a candidate that fails at any stage is recorded with its reason while the
search goes on. Candidates run in a worker process (worker.py), in the order
their backends give (cheap, likely winners first; the reference and the portable
fallback before everything, and never skipped), until the time budget is spent. The
leaders are then re-measured side by side and ranked with intervals (ranking.py), on the
data's own shapes where the data has them (traffic.py).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.backends import backend_names, get_backend
from inferforge.backends.base import PROTECTED_ORDER, SEARCH_ORDER, Backend, BuildConfig
from inferforge.bench import SPEC_SHAPE
from inferforge.cache import dataset_fingerprint
from inferforge.candidate import (
    VALIDATION_BATCH,
    CandidateResult,
    Progress,
    SearchContext,
    Status,
    over_deadline,
)
from inferforge.data import Dataset
from inferforge.errors import InferforgeError
from inferforge.options import Objective, SearchOptions
from inferforge.probes import make_probes
from inferforge.ranking import confirm, contenders, rank
from inferforge.source import ModelSource, SourceKind
from inferforge.traffic import Traffic, timing_inputs
from inferforge.types import Precision
from inferforge.validate import collect_outputs

PROTECTED_WINDOW_S = 60.0  # a protected candidate started near or past the deadline still gets this long
FIRST_PASS_ONLY = "the ranking is the first pass's, one measurement per candidate"
CONFIRM_STARTUP_S = 10.0  # about what loading the leaders again takes before their re-measure


@dataclass
class SearchResult:
    candidates: list[CandidateResult]  # ranked: passed best-first, then rejected, failed, skipped
    options: SearchOptions
    reference_name: str
    notes: list[str] = field(default_factory=list)  # how the search ran, what the user should know
    traffic: Traffic | None = None  # the data's own shapes the objective was decided on (None: the spec's)

    @property
    def passed(self) -> list[CandidateResult]:
        return [c for c in self.candidates if c.status is Status.PASSED]

    @property
    def best(self) -> CandidateResult | None:
        return self.passed[0] if self.passed else None

    def reference(self) -> CandidateResult | None:
        """The plain way to run the model that the pick is compared with: the reference backend's FP32
        candidate (eager PyTorch) on the pick's device, where it was measured."""
        pick = self.best
        return next((c for c in self.candidates if pick is not None and c.bench is not None
                     and c.config.precision is Precision.FP32 and c.config.device == pick.config.device
                     and get_backend(c.config.backend).search_order(c.config) == SEARCH_ORDER["reference"]), None)

    def pick_reason(self) -> str:
        """Why the best candidate won, short: the objective's figure, where it stood in the re-measure in
        turns (fastest, with the runner-up's interval; or tied with the fastest), and the ranking's note
        when a rule overrode the fastest (a tie broken for the simpler artifact, a lower precision not
        measurably faster)."""
        pick = self.best
        if pick is None:
            return ""
        parts = [f"the pick for {self.options.objective.value}"]
        if pick.bench is not None:
            parts[0] += (f" ({pick.bench.latency.p50_ms:.3g} ms at batch {pick.bench.latency.batch_size})"
                         if self.options.objective is Objective.LATENCY else
                         f" ({pick.bench.best_throughput:.4g} samples/s at batch {pick.bench.best.batch_size})")
        confirmed = pick.confirmation
        others = sorted((c for c in self.passed if c is not pick and c.confirmation is not None),
                        key=lambda c: c.confirmation.ratio)  # type: ignore[union-attr]
        if confirmed is not None and confirmed.ratio == 1.0 and confirmed.low == 1.0:
            runner_up = f", the runner-up {others[0].key} at {others[0].confirmation.describe()}" if others else ""
            parts.append(f"fastest of the {len(others) + 1} re-measured in turns{runner_up}")  # type: ignore[union-attr]
        elif confirmed is not None:
            parts.append(f"{confirmed.describe()} the fastest in the re-measure in turns")
        parts += [n for n in self.notes if n.startswith(f"picked {pick.key} over")]
        return "; ".join(parts)


def candidate_configs(options: SearchOptions) -> list[tuple[Backend, BuildConfig]]:
    """Every candidate the options ask for, in the order the search tries them (Backend.search_order)."""
    names = options.backends or tuple(backend_names())
    unknown = set(names) - set(backend_names())
    if unknown:
        raise InferforgeError(f"unknown backend(s) {sorted(unknown)}; known: {', '.join(backend_names())}")
    known_precisions = {p.value for p in Precision}
    if set(options.precisions) - known_precisions:
        raise InferforgeError(f"unknown precision(s) {sorted(set(options.precisions) - known_precisions)}; "
                              f"known: {', '.join(sorted(known_precisions))}")
    pairs = []
    for name in names:
        backend = get_backend(name)
        configs = backend.configs(options.device) + (backend.thorough_configs(options.device) if options.thorough
                                                     else [])
        pairs += [(backend, config) for config in configs
                  if not options.precisions or config.precision.value in options.precisions]
    if options.device != "cpu" and options.cpu_fallback:  # a GPU package keeps a portable CPU fallback
        for name in names:
            backend = get_backend(name)
            if backend.portable:
                pairs.append((backend, BuildConfig(name, Precision.FP32, "cpu", backend.options_type())))
    return sorted(pairs, key=lambda pair: pair[0].search_order(pair[1]))  # stable: registry order within a band


def protected(backend: Backend, config: BuildConfig) -> bool:
    """The reference and the portable fallback: built first and never skipped by the time budget."""
    return backend.search_order(config) < PROTECTED_ORDER


def reference_runner(source: ModelSource, threads: int) -> Callable[[dict[str, np.ndarray]], dict[str, Any]]:
    """FP32 reference: the PyTorch module under inference_mode, or unoptimized ORT for ONNX."""
    if source.kind is SourceKind.ONNX:
        from inferforge.backends.onnx_common import create_session

        assert source.path is not None
        session = create_session(source.path, threads, optimize=False)
        names = source.spec.output_names
        return lambda batch: dict(zip(names, session.run(None, batch), strict=True))
    import torch

    torch.set_num_threads(threads)

    def run(batch: dict[str, np.ndarray]) -> dict[str, Any]:
        with torch.inference_mode():
            return dict(source.module.named_outputs(*[torch.from_numpy(np.ascontiguousarray(batch[n]))
                                                      for n in source.spec.input_names]))

    return run


def reference_outputs(source: ModelSource, dataset: Dataset, threads: int) -> dict[str, np.ndarray]:
    """FP32 reference outputs on the whole dataset."""
    return collect_outputs(reference_runner(source, threads), dataset, VALIDATION_BATCH)


def run_search(source: ModelSource, dataset: Dataset, options: SearchOptions, workdir: Path,
               progress: Progress | None = None, *, calibration: Dataset | None = None,
               deadline: float | None = None) -> SearchResult:
    """Try every candidate; never raises for a candidate's failure. ``calibration`` feeds static INT8.
    ``deadline`` (time.monotonic()) is when the time budget ends; by default, the budget counted from now."""
    from inferforge.worker import make_evaluator

    report = progress or (lambda key, stage: None)
    if deadline is None and options.time_budget_s is not None:
        deadline = time.monotonic() + options.time_budget_s
    pairs = candidate_configs(options)
    run_reference = reference_runner(source, options.threads)
    reference = collect_outputs(run_reference, dataset, VALIDATION_BATCH)
    traffic = timing_inputs(source.spec, dataset, source.dim_ranges)
    probes = make_probes(source.spec, dataset, run_reference, source.dim_ranges, traffic)
    context = SearchContext(source, dataset, calibration, reference, probes, options, workdir,
                            source.fingerprint(), dataset_fingerprint(calibration), traffic)
    evaluator = make_evaluator(context, report)
    results: list[CandidateResult] = []
    queue = list(pairs)
    try:
        while queue:
            backend, config = queue.pop(0)
            guarded = protected(backend, config)
            over = None if guarded else over_deadline(deadline, options.time_budget_s)
            # The reference and the fallback always start, and get at least PROTECTED_WINDOW_S to finish.
            stop_at = deadline if deadline is None or not guarded else max(deadline,
                                                                           time.monotonic() + PROTECTED_WINDOW_S)
            batch = ([CandidateResult(config, Status.SKIPPED, over)] if over else
                     evaluator.run(backend, config, stop_at))
            for result in batch:
                report(result.key, result.status.value)
                results.append(result)
            retry = backend.retry_after_failure(config, batch[0].reason) if batch[0].status is Status.FAILED else None
            if retry is not None:
                queue.insert(0, (backend, retry))
            gc.collect()
        ranked = rank(results, options.objective)
        ranked, ranking_notes = _confirmed(ranked, evaluator, options, deadline, report)
    finally:
        evaluator.close()
    timed_on = (f"the objective was decided on {traffic.description}; the spec's example shape is timed beside "
                "it" if traffic else f"the objective was decided on {SPEC_SHAPE}")
    notes = [*source.notes, evaluator.note,
             f"every candidate was also checked against eager on {len(probes)} probe inputs the search made "
             "(other batch sizes and lengths, float inputs negated and scaled, integer inputs at their ends)",
             timed_on, *ranking_notes]
    return SearchResult(ranked, options, source.name, notes, traffic)


def _confirmed(ranked: list[CandidateResult], evaluator: Any, options: SearchOptions, deadline: float | None,
               report: Progress) -> tuple[list[CandidateResult], list[str]]:
    """The leaders re-measured in turns (ranking.py), when there are two and the time budget allows."""
    chosen = contenders(ranked, options.objective)
    if not chosen:
        return ranked, []
    if options.bench.confirm_max_rounds < 2:
        return ranked, [f"the leaders were not re-measured side by side (BenchSettings.confirm_max_rounds is under "
                        f"2): {FIRST_PASS_ONLY}"]
    needed = CONFIRM_STARTUP_S + options.bench.confirm_seconds
    if deadline is not None and deadline - time.monotonic() < needed:
        return ranked, [f"the leaders were not re-measured side by side: less than {needed:.0f} s of the time "
                        f"budget was left; {FIRST_PASS_ONLY}"]
    stop_at = time.monotonic() + options.candidate_timeout_s if deadline is None else deadline
    report(f"{len(chosen)} leaders", "re-measuring side by side")
    times = evaluator.remeasure(chosen, stop_at)
    if isinstance(times, str):
        return ranked, [f"{FIRST_PASS_ONLY}: {times}"]
    return confirm(ranked, times, options.objective)
