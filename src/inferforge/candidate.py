"""One candidate, start to verdict: build (or take from the cache), load, validate, probe, benchmark.

This runs inside a search worker process (worker.py) or, with isolation off, in the
search's own process; it never raises for the candidate's own failure: the result says
what failed, at which stage, and why. An INT8 candidate outside the budget is retried
with its most harmful layers kept in FP32 (the backend's sensitivity ranking).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.backends.base import Artifact, Backend, BuildConfig
from inferforge.bench import (
    SPEC_SHAPE,
    BenchReport,
    current_rss_mb,
    end_to_end,
    gpu_peak_sampler,
    measure,
    peak_rss_sampler,
)
from inferforge.cache import ArtifactCache
from inferforge.data import Dataset
from inferforge.errors import one_line
from inferforge.options import SearchOptions
from inferforge.probes import Probe, probe_failure, relative_error
from inferforge.source import ModelSource
from inferforge.traffic import Traffic, feeds_for
from inferforge.types import Precision
from inferforge.validate import AccuracyReport, collect_outputs, compare

VALIDATION_BATCH = 16
MIXED_PRECISION_STEPS = (1, 2, 4, 8, 16)  # layers kept in FP32 at each retry, worst first


class Status(StrEnum):
    PASSED = "passed"
    REJECTED = "rejected"  # built and ran, outside the accuracy budget or wrong on a probe input
    FAILED = "failed"  # an error while building, loading or running (a crashed worker too)
    SKIPPED = "skipped"  # cannot be built here, or the time budget was spent


@dataclass
class CandidateResult:
    config: BuildConfig
    status: Status
    reason: str = ""
    artifact: Artifact | None = None
    build_seconds: float | None = None
    accuracy: AccuracyReport | None = None
    bench: Any = None  # BenchReport
    confirmation: Any = None  # ranking.Confirmation: the interleaved re-measure, for the leading candidates

    @property
    def key(self) -> str:
        return self.config.key()

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key, "config": self.config.to_json(), "status": self.status.value, "reason": self.reason,
            "build_seconds": self.build_seconds,
            "artifact_bytes": self.artifact.size_bytes if self.artifact else None,
            "artifact_details": dict(self.artifact.details) if self.artifact else None,
            "accuracy": self.accuracy.to_json() if self.accuracy else None,
            "bench": self.bench.to_json() if self.bench else None,
            "confirmation": asdict(self.confirmation) if self.confirmation else None,
        }


Progress = Callable[[str, str], None]  # (candidate key, stage or final status)


@dataclass
class SearchContext:
    """Everything a candidate is judged with; made once per search, sent once to each worker."""

    source: ModelSource
    dataset: Dataset
    calibration: Dataset | None
    reference: Mapping[str, np.ndarray]  # eager FP32 on the dataset
    probes: list[Probe]  # inputs the user did not give, with eager's answers
    options: SearchOptions
    workdir: Path
    source_fingerprint: str
    calibration_fingerprint: str | None
    traffic: Traffic | None = None  # the data's own shapes, timed and decided on when the data has them

    def timing_feeds(self, batch_size: int) -> list[dict[str, np.ndarray]]:
        """The inputs the objective is decided on, at ``batch_size``."""
        return feeds_for(self.traffic, self.dataset)(batch_size)

    def cache(self) -> ArtifactCache | None:
        return ArtifactCache(self.options.cache_dir) if self.options.cache_dir is not None else None


def evaluate(backend: Backend, config: BuildConfig, context: SearchContext, report: Progress,
             deadline: float | None) -> list[CandidateResult]:
    """The candidate's result, then those of its mixed-precision retries (INT8 outside the budget)."""
    first = _try_candidate(backend, config, context, report)
    return [first, *_mixed_precision_retries(backend, first, context, report, deadline)]


def over_deadline(deadline: float | None, budget_s: float | None) -> str | None:
    """Why no more work starts: the time budget is spent (None: it is not). Deadlines are time.monotonic()."""
    if deadline is None or time.monotonic() < deadline:
        return None
    return f"not tried: the time budget of {budget_s:g} s was spent"


def _build(backend: Backend, config: BuildConfig, context: SearchContext, out_dir: Path) -> tuple[Artifact, float]:
    """The candidate's artifact and what building it cost: from the cache when this exact build is there."""
    cache = context.cache()
    key = cache.key(context.source_fingerprint, config, context.calibration_fingerprint) if cache else None
    if cache is not None and key is not None:
        hit = cache.get(key, config, out_dir)
        if hit is not None:
            return hit.artifact, hit.build_seconds
    started = time.perf_counter()
    artifact = backend.build(context.source, config, out_dir, calibration=context.calibration)
    seconds = time.perf_counter() - started
    if cache is not None and key is not None:
        cache.put(key, artifact, seconds)
    return artifact, seconds


def _try_candidate(backend: Backend, config: BuildConfig, context: SearchContext,
                   report: Progress) -> CandidateResult:
    key = config.key()
    source, dataset, options = context.source, context.dataset, context.options
    reason = backend.unavailable_reason(config, source)
    if reason:
        return CandidateResult(config, Status.SKIPPED, reason)
    out_dir = context.workdir / key
    out_dir.mkdir(parents=True, exist_ok=False)
    report(key, "building")
    started = time.perf_counter()
    try:
        artifact, build_seconds = _build(backend, config, context, out_dir)
    except Exception as exc:
        return CandidateResult(config, Status.FAILED, f"build: {one_line(exc)}",
                               build_seconds=time.perf_counter() - started)
    result = CandidateResult(config, Status.FAILED, artifact=artifact, build_seconds=build_seconds)
    stage = "load"
    try:
        rss_before = current_rss_mb()
        with peak_rss_sampler() as peak, gpu_peak_sampler(config.device) as gpu_peak:
            report(key, "loading")
            started = time.perf_counter()
            runner = backend.load(artifact, source.spec, options.threads)
            load_seconds = time.perf_counter() - started
            load_rss_mb = max(0.0, current_rss_mb() - rss_before)
            stage = "validate"
            report(key, "validating")
            outputs = collect_outputs(runner, dataset, VALIDATION_BATCH)
            result.accuracy = compare(reference=context.reference, candidate=outputs, spec=source.spec,
                                      dataset=dataset, task=options.task, budget=options.budget,
                                      precision=config.precision)
            if not result.accuracy.passed:
                result.status, result.reason = Status.REJECTED, "; ".join(result.accuracy.violations)
                return result
            stage = "probe"
            report(key, "probing")
            validation_error = max((relative_error(context.reference[n], outputs[n]) for n in context.reference),
                                   default=0.0)
            wrong = probe_failure(context.probes, runner, config.precision, validation_error)
            if wrong:
                result.status, result.reason = Status.REJECTED, f"matches on the data, but {wrong}"
                return result
            stage = "benchmark"
            report(key, "benchmarking")
            sweep = measure(runner, context.timing_feeds, options.bench)
            example = measure(runner, lambda batch: [dataset.take(batch)], options.bench) if context.traffic else ()
            whole = end_to_end(runner, dataset.take(1), options.bench) if config.device != "cpu" else None
        result.bench = BenchReport(sweep[0], sweep, options.threads, max(0.0, peak() - rss_before), load_seconds,
                                   load_rss_mb, gpu_peak(), whole,
                                   context.traffic.description if context.traffic else SPEC_SHAPE, example)
    except Exception as exc:
        result.reason = f"{stage}: {one_line(exc)}"
        return result
    result.status = Status.PASSED
    return result


def _mixed_precision_retries(backend: Backend, result: CandidateResult, context: SearchContext,
                             report: Progress, deadline: float | None) -> list[CandidateResult]:
    """Accuracy-aware INT8: an INT8 candidate outside the budget is rebuilt with its most harmful layers
    (the backend's sensitivity ranking) kept in FP32, 1, 2, 4, ... of them, until one passes or a step
    no longer improves the figure the budget is decided on. Every variant is on the leaderboard."""
    config = result.config
    calibration = context.calibration
    if (result.status is not Status.REJECTED or config.precision is not Precision.INT8 or calibration is None
            or result.artifact is None or result.accuracy is None or config.options.with_fp32_layers(()) is None):
        return []
    try:
        layers = backend.sensitive_layers(context.source, config, result.artifact, calibration)
    except Exception as exc:
        result.reason += f"; per-layer sensitivity failed, no mixed-precision retry: {one_line(exc)}"
        return []
    retries: list[CandidateResult] = []
    best_score = result.accuracy.score
    flat_steps = 0  # one step without gain can be noise (a layer that matters little); two end the retries
    # Keeping every layer in FP32 would be FP32 with extra steps: at least one layer stays INT8.
    for count in sorted({min(step, len(layers) - 1) for step in MIXED_PRECISION_STEPS if len(layers) > 1}):
        options = config.options.with_fp32_layers(tuple(layers[:count]))
        if options is None:
            break
        mixed = replace(config, options=options)
        over = over_deadline(deadline, context.options.time_budget_s)
        if over:
            retries.append(CandidateResult(mixed, Status.SKIPPED, over))
            break
        retry = _try_candidate(backend, mixed, context, report)
        retries.append(retry)
        if retry.status is Status.PASSED or retry.accuracy is None:
            break
        flat_steps = flat_steps + 1 if retry.accuracy.score <= best_score else 0
        if flat_steps == 2:
            break
        best_score = max(best_score, retry.accuracy.score)
    return retries
