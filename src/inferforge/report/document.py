"""The run report as JSON: what a package keeps (report.json), ``optimize --json`` prints and the HTML page draws."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from inferforge.data import Dataset
from inferforge.environment import fingerprint
from inferforge.search import SearchResult


def report_json(result: SearchResult, dataset: Dataset, model_name: str) -> dict[str, Any]:
    """The run as JSON. A package's copy also carries ``packaged`` (see ``packaged_json``), which the search
    alone cannot know; the HTML page marks those artifacts, and says so where a report lacks the field."""
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


def packaged_json(manifest_entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The report's ``packaged`` field from the manifest's artifact entries: each packaged artifact's rank, key
    and why it is there, by rank (``load`` takes the first this host can run)."""
    return sorted(({"rank": e["rank"], "key": e["key"], "why": e.get("why", "")} for e in manifest_entries),
                  key=lambda e: e["rank"])
