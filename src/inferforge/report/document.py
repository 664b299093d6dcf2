"""The run report as JSON: what a package keeps (report.json), ``optimize --json`` prints and the HTML page draws."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from inferforge.data import Dataset
from inferforge.environment import fingerprint
from inferforge.search import SearchResult


def report_json(result: SearchResult, dataset: Dataset, model_name: str) -> dict[str, Any]:
    opts = result.options
    return {
        "model": model_name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "objective": opts.objective.value,
        "budget": vars(opts.budget),
        "task": opts.task.value,
        "threads": opts.threads,
        "batch_sizes": list(opts.bench.batch_sizes),
        "validation_data": {"origin": dataset.origin, "samples": len(dataset), "labels": dataset.labels is not None},
        "picked": result.best.key if result.best else None,
        "candidates": [c.to_json() for c in result.candidates],
        "notes": list(result.notes),
        "environment": fingerprint(),
    }
