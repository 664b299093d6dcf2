"""The public verb ``optimize``: load the model, search, write the package.

The CLI is a thin shell over this function.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferforge.calibration import load_calibration
from inferforge.candidate import CandidateResult, Progress
from inferforge.data import Dataset, generated_dataset, load_dataset
from inferforge.destination import check_destination
from inferforge.options import SearchOptions
from inferforge.package import check_fallbacks, write_package
from inferforge.report import markdown_leaderboard, report_json, report_markdown
from inferforge.search import SearchResult, candidate_configs, run_search
from inferforge.source import ModelSource, load_source
from inferforge.traffic import feeds_for
from inferforge.tune import Tuning, tune
from inferforge.types import TensorSpec

if TYPE_CHECKING:
    from inferforge.adapters import AdapterSpec

DEFAULT_GENERATED_SAMPLES = 64
TUNING_SECONDS = 15.0  # about what tune.py measures for; not started with less of the time budget left


@dataclass
class OptimizeResult:
    """What ``optimize`` found, and where the package went (None when nothing passed)."""

    source: ModelSource
    search: SearchResult
    dataset: Dataset
    package: Path | None
    tuning: Tuning | None = None

    @property
    def best(self) -> CandidateResult | None:
        return self.search.best

    def leaderboard(self) -> str:
        return markdown_leaderboard(self.search)


def optimize(model: Any, example_inputs: Any = None, *, inputs: Sequence[TensorSpec | str] = (),
             data: str | Dataset | None = None, options: SearchOptions | None = None,
             out: str | Path | None = None, name: str | None = None, fallbacks: int = 2,
             overwrite: bool = False, progress: Progress | None = None,
             workdir: str | Path | None = None, adapter: AdapterSpec | None = None,
             calibration: str | Dataset | None = None, calibration_pipeline: str | None = None) -> OptimizeResult:
    """Build every candidate that applies here, validate, benchmark, pick and package the best.

    ``model``: an nn.Module, 'file.py:factory', 'package.module:factory', or a .pt/.pt2/.onnx path.
    ``data``: a Dataset, a folder of .npy/.npz, or 'file.py:function'; None generates inputs from the spec.
    ``out``: the package folder; None skips packaging. ``adapter``: an input adapter to package
    (an ImageAdapterSpec or TextAdapterSpec), checked against the model before the search starts.
    ``calibration``: samples for static INT8 (a Dataset, a folder of images with ``calibration_pipeline``,
    .npy/.npz, or 'file.py:function'); None calibrates on ``data`` (or, failing that, generated inputs, with a warning).
    Raises InferforgeError subclasses for bad input; candidate failures are recorded in the result, never raised.
    """
    options = options or SearchOptions()
    check_fallbacks(fallbacks)
    # The time budget covers the whole run, from here: loading the model and data counts too.
    deadline = time.monotonic() + options.time_budget_s if options.time_budget_s is not None else None
    if out is not None:
        check_destination(Path(out), overwrite)  # a bad destination fails now, not after every build
    source = load_source(model, inputs=inputs, example_inputs=example_inputs, name=name)
    if adapter is not None:
        from inferforge.adapters import build_adapter

        build_adapter(adapter, source.spec)  # fail now, not after the search
    if isinstance(data, Dataset):
        dataset = data
    elif data is not None:
        dataset = load_dataset(str(data), source.spec)
    else:
        dataset = generated_dataset(source.spec, DEFAULT_GENERATED_SAMPLES)
    calibration_set = _calibration(calibration, calibration_pipeline, source, dataset, options)
    scratch = Path(tempfile.mkdtemp(prefix="inferforge-", dir=workdir))
    try:
        search = run_search(source, dataset, options, scratch, progress, calibration=calibration_set,
                            deadline=deadline)
        package = None
        # CPU threads and instances only: a GPU candidate's speed does not depend on them.
        tuning = None
        if options.tune and search.best is not None and search.best.config.device == "cpu":
            if deadline is None or deadline - time.monotonic() > TUNING_SECONDS:
                tuning = _tune(search, source, dataset)
            else:
                search.notes.append("threads and instances were not tuned: the time budget was spent")
        if out is not None and search.best is not None:
            package = write_package(
                search, source.spec, Path(out), model_name=source.name, source_fingerprint=source.fingerprint(),
                report_json=report_json(search, dataset, source.name),
                report_md=report_markdown(search, dataset, source.name), fallbacks=fallbacks, overwrite=overwrite,
                adapter=adapter, tuning=tuning)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return OptimizeResult(source, search, dataset, package, tuning)


def _calibration(ref: str | Dataset | None, pipeline: str | None, source: ModelSource, dataset: Dataset,
                 options: SearchOptions) -> Dataset | None:
    """Calibration samples, read only when the search has an INT8 candidate to calibrate."""
    if isinstance(ref, Dataset):
        return ref
    if not any(backend.needs_calibration(config) for backend, config in candidate_configs(options)):
        return None
    return load_calibration(ref, source.spec, options.calibration_samples, fallback=dataset, pipeline=pipeline)


def _tune(search: SearchResult, source: ModelSource, dataset: Dataset) -> Tuning:
    """Threads and instances for the picked artifact: the latency threads judged at batch 1 and the smallest
    larger batch the search timed, the instances at its best-throughput batch size."""
    from inferforge.backends import get_backend

    best = search.best
    assert best is not None and best.artifact is not None and best.bench is not None
    backend = get_backend(best.config.backend)
    artifact = best.artifact
    batched = [b for b in search.options.bench.batch_sizes if b > 1]
    return tune(lambda threads: backend.load(artifact, source.spec, threads), feeds_for(search.traffic, dataset),
                search.options.threads, best.bench.best.batch_size, latency_batches=(1, *batched[:1]))
