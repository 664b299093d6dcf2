"""Candidates -> build -> load -> validate -> benchmark -> rank within the accuracy budget.

The search knows backends only through their contract. Every candidate is
measured, including the reference, so nothing slower than plain eager can win,
and a candidate that fails at any stage is recorded with its reason while the
search goes on.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.backends import backend_names, get_backend
from inferforge.backends.base import Artifact, Backend, BuildConfig
from inferforge.bench import (
    BenchReport,
    BenchSettings,
    current_rss_mb,
    end_to_end,
    gpu_peak_sampler,
    measure,
    peak_rss_sampler,
)
from inferforge.cache import ArtifactCache, dataset_fingerprint, default_cache_dir
from inferforge.data import Dataset
from inferforge.environment import usable_cores
from inferforge.errors import InferforgeError, one_line
from inferforge.source import ModelSource, SourceKind
from inferforge.types import Precision
from inferforge.validate import AccuracyBudget, AccuracyReport, Task, collect_outputs, compare

VALIDATION_BATCH = 16


class Objective(StrEnum):
    LATENCY = "latency"  # lowest p50 at batch 1
    THROUGHPUT = "throughput"  # most samples/s over the batch sweep


class Status(StrEnum):
    PASSED = "passed"
    REJECTED = "rejected"  # built and ran, outside the accuracy budget
    FAILED = "failed"  # an error while building, loading or running
    SKIPPED = "skipped"  # cannot be built here


@dataclass(frozen=True)
class SearchOptions:
    objective: Objective = Objective.LATENCY
    budget: AccuracyBudget = AccuracyBudget()
    task: Task = Task.AUTO
    bench: BenchSettings = BenchSettings()
    threads: int = field(default_factory=usable_cores)
    backends: tuple[str, ...] = ()  # empty: every backend
    device: str = "cpu"
    calibration_samples: int = 128  # static INT8: samples read to choose activation scales
    tune: bool = True  # measure threads / instances for the picked artifact (tune.py)
    precisions: tuple[str, ...] = ()  # empty: every precision the backends propose
    cpu_fallback: bool = True  # with a GPU device: also build CPU candidates, so the package runs anywhere
    cache_dir: Path | None = field(default_factory=default_cache_dir)  # built artifacts reused (cache.py); None: off
    time_budget_s: float | None = None  # no candidate starts after this many seconds of search; None: no cap
    thorough: bool = False  # also the candidates that take minutes to build (Backend.thorough_configs)


@dataclass
class CandidateResult:
    config: BuildConfig
    status: Status
    reason: str = ""
    artifact: Artifact | None = None
    build_seconds: float | None = None
    accuracy: AccuracyReport | None = None
    bench: BenchReport | None = None

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
        }


@dataclass
class SearchResult:
    candidates: list[CandidateResult]  # ranked: passed best-first, then rejected, failed, skipped
    options: SearchOptions
    reference_name: str

    @property
    def passed(self) -> list[CandidateResult]:
        return [c for c in self.candidates if c.status is Status.PASSED]

    @property
    def best(self) -> CandidateResult | None:
        return self.passed[0] if self.passed else None


Progress = Callable[[str, str], None]  # (candidate key, stage or final status)
CPU_FALLBACK_BACKENDS = ("onnxruntime", "eager")  # built for cpu too when the target is a GPU


def candidate_configs(options: SearchOptions) -> list[tuple[Backend, BuildConfig]]:
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
    if options.device != "cpu" and options.cpu_fallback:  # a GPU package keeps a CPU fallback
        pairs += [(get_backend(name), BuildConfig(name, Precision.FP32, "cpu", get_backend(name).options_type()))
                  for name in CPU_FALLBACK_BACKENDS if name in names]
    return pairs


def reference_outputs(source: ModelSource, dataset: Dataset, threads: int) -> dict[str, np.ndarray]:
    """FP32 reference outputs: the PyTorch module under inference_mode, or unoptimized ORT for ONNX."""
    if source.kind is SourceKind.ONNX:
        from inferforge.backends.onnxruntime import create_session

        assert source.path is not None
        session = create_session(source.path, threads, optimize=False)
        names = source.spec.output_names
        return collect_outputs(lambda batch: dict(zip(names, session.run(None, batch), strict=True)),
                               dataset, VALIDATION_BATCH)
    import torch

    torch.set_num_threads(threads)

    def run(batch: dict[str, np.ndarray]) -> dict[str, Any]:
        with torch.inference_mode():
            return dict(source.module.named_outputs(*[torch.from_numpy(batch[n]) for n in source.spec.input_names]))

    return collect_outputs(run, dataset, VALIDATION_BATCH)


def run_search(source: ModelSource, dataset: Dataset, options: SearchOptions, workdir: Path,
               progress: Progress | None = None, *, calibration: Dataset | None = None) -> SearchResult:
    """Try every candidate; never raises for a candidate's failure. ``calibration`` feeds static INT8."""
    report = progress or (lambda key, stage: None)
    started = time.perf_counter()
    pairs = candidate_configs(options)
    reference = reference_outputs(source, dataset, options.threads)
    cache = _BuildCache.open(options, source, calibration)
    results: list[CandidateResult] = []
    for backend, config in pairs:
        over = _over_budget(options, started) if results else None  # the first candidate always runs
        result = (CandidateResult(config, Status.SKIPPED, over) if over else
                  _try_candidate(backend, config, source, dataset, reference, options, workdir, report,
                                 calibration, cache))
        report(config.key(), result.status.value)
        results.append(result)
        gc.collect()
        for retry in _mixed_precision_retries(backend, result, source, dataset, reference, options, workdir,
                                              report, calibration, cache, started):
            report(retry.key, retry.status.value)
            results.append(retry)
            gc.collect()
    return SearchResult(rank(results, options.objective), options, source.name)


MIXED_PRECISION_STEPS = (1, 2, 4, 8, 16)  # layers kept in FP32 at each retry, worst first


def _over_budget(options: SearchOptions, started: float) -> str | None:
    """Why a candidate is not started: the search's time budget is spent (None: it is not)."""
    elapsed = time.perf_counter() - started
    if options.time_budget_s is None or elapsed < options.time_budget_s:
        return None
    return f"not tried: the time budget of {options.time_budget_s:g} s was spent ({elapsed:.0f} s elapsed)"


@dataclass(frozen=True)
class _BuildCache:
    """The artifact cache with this search's model and calibration fingerprints, computed once."""

    cache: ArtifactCache
    source_fingerprint: str
    calibration_fingerprint: str | None

    @classmethod
    def open(cls, options: SearchOptions, source: ModelSource, calibration: Dataset | None) -> _BuildCache | None:
        if options.cache_dir is None:
            return None
        return cls(ArtifactCache(options.cache_dir), source.fingerprint(), dataset_fingerprint(calibration))

    def key(self, config: BuildConfig) -> str:
        return self.cache.key(self.source_fingerprint, config, self.calibration_fingerprint)


def _build(backend: Backend, config: BuildConfig, source: ModelSource, out_dir: Path, calibration: Dataset | None,
           cache: _BuildCache | None) -> tuple[Artifact, float]:
    """The candidate's artifact and what building it cost: from the cache when this exact build is there."""
    key = cache.key(config) if cache is not None else None
    if cache is not None and key is not None:
        hit = cache.cache.get(key, config, out_dir)
        if hit is not None:
            return hit.artifact, hit.build_seconds
    started = time.perf_counter()
    artifact = backend.build(source, config, out_dir, calibration=calibration)
    seconds = time.perf_counter() - started
    if cache is not None and key is not None:
        cache.cache.put(key, artifact, seconds)
    return artifact, seconds


def _mixed_precision_retries(backend: Backend, result: CandidateResult, source: ModelSource, dataset: Dataset,
                             reference: dict[str, np.ndarray], options: SearchOptions, workdir: Path,
                             report: Progress, calibration: Dataset | None, cache: _BuildCache | None,
                             started: float) -> list[CandidateResult]:
    """Accuracy-aware INT8: an INT8 candidate outside the budget is rebuilt with its most harmful layers
    (the backend's sensitivity ranking) kept in FP32, 1, 2, 4, ... of them, until one passes or a step
    no longer improves the figure the budget is decided on. Every variant is on the leaderboard."""
    config = result.config
    if (result.status is not Status.REJECTED or config.precision is not Precision.INT8 or calibration is None
            or result.artifact is None or result.accuracy is None or not hasattr(config.options, "keep_fp32")):
        return []
    try:
        layers = backend.sensitive_layers(source, config, result.artifact, calibration)
    except Exception as exc:
        result.reason += f"; per-layer sensitivity failed, no mixed-precision retry: {one_line(exc)}"
        return []
    retries: list[CandidateResult] = []
    best_score = result.accuracy.score
    flat_steps = 0  # one step without gain can be noise (a layer that matters little); two end the retries
    # Keeping every layer in FP32 would be FP32 with extra steps: at least one layer stays INT8.
    for count in sorted({min(step, len(layers) - 1) for step in MIXED_PRECISION_STEPS if len(layers) > 1}):
        mixed = replace(config, options=replace(config.options, keep_fp32=tuple(layers[:count])))
        over = _over_budget(options, started)
        if over:
            retries.append(CandidateResult(mixed, Status.SKIPPED, over))
            break
        retry = _try_candidate(backend, mixed, source, dataset, reference, options, workdir, report, calibration,
                               cache)
        retries.append(retry)
        if retry.status is Status.PASSED or retry.accuracy is None:
            break
        flat_steps = flat_steps + 1 if retry.accuracy.score <= best_score else 0
        if flat_steps == 2:
            break
        best_score = max(best_score, retry.accuracy.score)
    return retries


def _try_candidate(backend: Backend, config: BuildConfig, source: ModelSource, dataset: Dataset,
                   reference: dict[str, np.ndarray], options: SearchOptions, workdir: Path,
                   report: Progress, calibration: Dataset | None = None,
                   cache: _BuildCache | None = None) -> CandidateResult:
    key = config.key()
    reason = backend.unavailable_reason(config, source)
    if reason:
        return CandidateResult(config, Status.SKIPPED, reason)
    out_dir = workdir / key
    out_dir.mkdir(parents=True, exist_ok=False)
    report(key, "building")
    started = time.perf_counter()
    try:
        artifact, build_seconds = _build(backend, config, source, out_dir, calibration, cache)
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
            result.accuracy = compare(reference, outputs, source.spec, dataset, options.task, options.budget)
            stage = "benchmark"
            report(key, "benchmarking")
            sweep = measure(runner, lambda batch: dataset.take(batch), options.bench)
            whole = end_to_end(runner, dataset.take(1), options.bench) if config.device != "cpu" else None
        result.bench = BenchReport(sweep[0], sweep, options.threads, max(0.0, peak() - rss_before), load_seconds,
                                   load_rss_mb, gpu_peak(), whole)
    except Exception as exc:
        result.reason = f"{stage}: {one_line(exc)}"
        return result
    if result.accuracy.passed:
        result.status = Status.PASSED
    else:
        result.status = Status.REJECTED
        result.reason = "; ".join(result.accuracy.violations)
    return result


def rank(results: Sequence[CandidateResult], objective: Objective) -> list[CandidateResult]:
    """Passed candidates best-first by the objective, then rejected (by the same), failed, skipped."""
    order = {Status.PASSED: 0, Status.REJECTED: 1, Status.FAILED: 2, Status.SKIPPED: 3}

    def score(c: CandidateResult) -> float:
        if c.bench is None:
            return float("inf")
        return c.bench.latency.p50_ms if objective is Objective.LATENCY else -c.bench.best_throughput

    return sorted(results, key=lambda c: (order[c.status], score(c)))
