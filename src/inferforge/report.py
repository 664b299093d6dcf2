"""The leaderboard and the run report, as rich tables, Markdown and JSON.

One function lays out the rows; the terminal and Markdown renderings only format them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from inferforge.data import Dataset
from inferforge.environment import fingerprint
from inferforge.search import SearchResult, Status

COLUMNS = ("#", "candidate", "status", "p50 ms (bs1)", "p99 ms", "cv", "best tput /s", "accuracy", "max abs err",
           "build s", "size MB", "load RSS MB", "peak RSS MB", "note")
DATA_SHAPES_P50 = "p50 ms (bs1, data)"  # the latency column's name when the data's own shapes decide
SPEC_SHAPE_P50 = "p50 ms (bs1, spec)"  # the spec's example shape, beside it
CONFIRMED = "vs fastest (95% CI)"  # the interleaved re-measure of the leaders


def columns(result: SearchResult) -> tuple[str, ...]:
    """The leaderboard's columns: a spec-shape column when the data's shapes decided, a re-measure column
    when the leaders were re-measured."""
    cols = list(COLUMNS)
    if any(c.bench is not None and c.bench.example_shape for c in result.candidates):
        cols[cols.index("p50 ms (bs1)")] = DATA_SHAPES_P50
        cols.insert(cols.index(DATA_SHAPES_P50) + 1, SPEC_SHAPE_P50)
    if any(c.confirmation is not None for c in result.candidates):
        cols.insert(cols.index("cv") + 1, CONFIRMED)
    return tuple(cols)


def accuracy_cell(acc: Mapping[str, Any] | None) -> str:
    """A candidate's accuracy as the leaderboards show it, from ``AccuracyReport.to_json()``."""
    if not acc:
        return ""
    if acc.get("accuracy") is not None:
        return f"acc {acc['accuracy'] * 100:.2f}% (drop {(acc.get('accuracy_drop') or 0.0) * 100:.2f})"
    if acc.get("decided_by") == "top-1 agreement" and acc.get("top1_agreement") is not None:
        return f"top1 agree {acc['top1_agreement']:.4f}"
    return f"cos {acc['cosine']:.6f}"


def build_cell(build_seconds: float | None, details: Mapping[str, Any] | None) -> str:
    """Build seconds, marked when the artifact came from the cache (the seconds are the original build's)."""
    if build_seconds is None:
        return ""
    return f"{build_seconds:.1f}" + (" (cached)" if "cache" in (details or {}) else "")


def leaderboard_rows(result: SearchResult) -> list[tuple[str, ...]]:
    cols = columns(result)
    rows: list[tuple[str, ...]] = []
    best = result.best
    for i, c in enumerate(result.candidates, 1):
        b = c.bench
        note = c.reason
        if c is best:
            note = f"picked ({result.options.objective.value})"
        elif c.status is Status.PASSED:
            note = "fallback candidate"
        if b is not None and c.config.device == "cuda":
            gpu = f"GPU peak {b.peak_gpu_mb:.0f} MB"
            if b.end_to_end is not None:
                gpu += f", bs1 with host copies {b.end_to_end.p50_ms:.2f} ms"
            note = f"{note}; {gpu}".lstrip("; ")
        kept = c.artifact.details.get("keep_fp32") if c.artifact else None
        if kept:
            note = f"{note}; kept in FP32: {', '.join(kept)}".lstrip("; ")
        cells = {
            "#": str(i), "candidate": c.key, "status": c.status.value,
            "p99 ms": f"{b.latency.p99_ms:.2f}" if b else "", "cv": f"{b.latency.cv:.2f}" if b else "",
            "best tput /s": f"{b.best_throughput:.1f} (bs{b.best.batch_size})" if b else "",
            "accuracy": accuracy_cell(c.accuracy.to_json() if c.accuracy else None),
            "max abs err": f"{max(o.max_abs for o in c.accuracy.outputs):.1e}" if c.accuracy and c.accuracy.outputs
            else "",
            "build s": build_cell(c.build_seconds, c.artifact.details if c.artifact else None),
            "size MB": f"{c.artifact.size_bytes / 1e6:.1f}" if c.artifact else "",
            "load RSS MB": f"{b.load_rss_mb:.0f}" if b else "", "peak RSS MB": f"{b.peak_rss_mb:.0f}" if b else "",
            "note": note,
            CONFIRMED: c.confirmation.describe() if c.confirmation else "",
            SPEC_SHAPE_P50: f"{b.example_shape[0].p50_ms:.2f}" if b and b.example_shape else "",
        }
        cells["p50 ms (bs1)"] = cells[DATA_SHAPES_P50] = f"{b.latency.p50_ms:.2f}" if b else ""
        rows.append(tuple(cells[col] for col in cols))
    return rows


def rich_leaderboard(result: SearchResult, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in columns(result):
        table.add_column(col, overflow="fold", max_width=60 if col == "note" else None)
    styles = {"passed": "green", "rejected": "yellow", "failed": "red", "skipped": "dim"}
    for row in leaderboard_rows(result):
        table.add_row(*row, style=styles.get(row[2]))
    return table


def markdown_leaderboard(result: SearchResult) -> str:
    cols = columns(result)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in leaderboard_rows(result)]
    return "\n".join(lines)


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


def report_markdown(result: SearchResult, dataset: Dataset, model_name: str) -> str:
    env = fingerprint()
    opts = result.options
    best = result.best
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)
    lines = [
        f"# inferforge report: {model_name}",
        "",
        f"- created: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- picked: **{best.key if best else 'none'}** (objective: {opts.objective.value})",
        f"- validation data: {dataset.origin}, {len(dataset)} samples, labels: {'yes' if dataset.labels is not None else 'no'}",
        f"- budget: max accuracy drop {opts.budget.max_accuracy_drop * 100:.2f} points, min cosine {opts.budget.min_cosine}, "
        f"min top-1 agreement {opts.budget.min_top1_agreement}",
        f"- machine: {env['cpu']} ({env['cores']} cores usable, {env['machine']}), {env['system']}, Python {env['python']}",
        f"- threads: {opts.threads}; batch sizes: {', '.join(map(str, opts.bench.batch_sizes))}",
        *(f"- note: {note}" for note in result.notes),
        f"- libraries: {libs}",
        "",
        "## Leaderboard",
        "",
        markdown_leaderboard(result),
        "",
        "Latency is the median of timed runs at the smallest batch size after warm-up; cv is its coefficient of "
        "variation; throughput is samples/s at the median latency of the best batch size. Where the validation "
        "data pads a dynamic length, the data's samples at their own lengths decide (\"data\"), and the spec's "
        "example shape is shown beside them (\"spec\"). \"vs fastest\" is the leaders' re-measure in turns: the "
        "median ratio of each one's time to the fastest's with its 95% interval; an interval holding 1.00 and "
        "staying under 1.05 is a tie, which goes to the simpler artifact. Peak RSS is the rise in resident memory over load, validation "
        "and benchmark.",
        "",
    ]
    return "\n".join(lines)
