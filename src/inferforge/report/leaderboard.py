"""The leaderboard's layout, shared by every rendering: its columns, one row of cells per candidate, and the
accuracy and build cells (the HTML report reads the same cells from the JSON report).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inferforge.search import SearchResult, Status
from inferforge.validate import DecidingFigure

COLUMNS = ("#", "candidate", "status", "p50 ms (bs1)", "p99 ms", "cv", "best tput /s", "accuracy", "max abs err",
           "build s", "size MB", "load RSS MB", "peak RSS MB", "note")
DATA_SHAPES_P50 = "p50 ms (bs1, data)"  # the latency column's name when the data's own shapes decide
SPEC_SHAPE_P50 = "p50 ms (bs1, spec)"  # the spec's example shape, beside it
CONFIRMED = "vs fastest (95% CI)"  # the interleaved re-measure of the leaders
# The terminal's default: what decides and what was packaged; the rest is one flag away (--wide).
COMPACT = ("#", "candidate", "status", "p50 ms (bs1)", DATA_SHAPES_P50, CONFIRMED, "best tput /s", "accuracy", "note")


def columns(result: SearchResult, wide: bool = True) -> tuple[str, ...]:
    """The leaderboard's columns: a spec-shape column when the data's shapes decided, a re-measure column
    when the leaders were re-measured; ``wide=False``: only the ``COMPACT`` ones."""
    cols = list(COLUMNS)
    if any(c.bench is not None and c.bench.example_shape for c in result.candidates):
        cols[cols.index("p50 ms (bs1)")] = DATA_SHAPES_P50
        cols.insert(cols.index(DATA_SHAPES_P50) + 1, SPEC_SHAPE_P50)
    if any(c.confirmation is not None for c in result.candidates):
        cols.insert(cols.index("cv") + 1, CONFIRMED)
    return tuple(cols) if wide else tuple(c for c in cols if c in COMPACT)


def rate(value: float) -> str:
    """Samples per second: whole numbers with thousands separators from 100 up, else three digits."""
    return f"{value:,.0f}" if value >= 100 else f"{value:#.3g}"


def ms(value: float) -> str:
    """Milliseconds with three significant digits whatever the scale (0.0597, 5.75, 23.0, 431)."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}" if value < 1 else f"{value:#.3g}"


def accuracy_cell(acc: Mapping[str, Any] | None) -> str:
    """A candidate's accuracy as the leaderboards show it, from ``AccuracyReport.to_json()``."""
    if not acc:
        return ""
    figure = deciding_figure(acc)
    if figure is DecidingFigure.ACCURACY_DROP and acc.get("accuracy") is not None:
        return f"acc {acc['accuracy'] * 100:.2f}% (drop {(acc.get('accuracy_drop') or 0.0) * 100:.2f})"
    if figure is DecidingFigure.TOP1_AGREEMENT and acc.get("top1_agreement") is not None:
        return f"top1 agree {acc['top1_agreement']:.4f}"
    return f"cos {acc['cosine']:.6f}"


def deciding_figure(acc: Mapping[str, Any]) -> DecidingFigure:
    """The figure that decided, from ``AccuracyReport.to_json()`` as it is or as read back from a report."""
    return DecidingFigure(acc.get("decided_by", DecidingFigure.COSINE))


def build_cell(build_seconds: float | None, details: Mapping[str, Any] | None) -> str:
    """Build seconds, marked when the artifact came from the cache (the seconds are the original build's)."""
    if build_seconds is None:
        return ""
    return f"{build_seconds:.1f}" + (" (cached)" if "cache" in (details or {}) else "")


def leaderboard_rows(result: SearchResult, packaged: Mapping[str, int] | None = None,
                     wide: bool = True) -> list[tuple[str, ...]]:
    """One row of cells per candidate. ``packaged``: artifact key -> rank in the written package (None: no
    package was written, and passed candidates are only "passed")."""
    cols = columns(result, wide)
    rows: list[tuple[str, ...]] = []
    best = result.best
    for i, c in enumerate(result.candidates, 1):
        b = c.bench
        note = c.reason
        if c is best:
            note = f"picked ({result.options.objective.value})" + (", packaged #0" if packaged else "")
        elif packaged and c.key in packaged:
            note = f"packaged #{packaged[c.key]} (fallback)"
        elif c.status is Status.PASSED:
            note = "passed, not packaged" if packaged else "passed"
        if b is not None and c.config.device == "cuda":
            gpu = f"GPU peak {b.peak_gpu_mb:.0f} MB"
            if b.end_to_end is not None:
                gpu += f", bs1 with host copies {ms(b.end_to_end.p50_ms)} ms"
            note = f"{note}; {gpu}".lstrip("; ")
        kept = c.artifact.details.get("keep_fp32") if c.artifact else None
        if kept:
            note = f"{note}; kept in FP32: {', '.join(kept)}".lstrip("; ")
        cells = {
            "#": str(i), "candidate": c.key, "status": c.status.value,
            "p99 ms": ms(b.latency.p99_ms) if b else "", "cv": f"{b.latency.cv:.2f}" if b else "",
            "best tput /s": f"{rate(b.best_throughput)} (bs{b.best.batch_size})" if b else "",
            "accuracy": accuracy_cell(c.accuracy.to_json() if c.accuracy else None),
            "max abs err": f"{max(o.max_abs for o in c.accuracy.outputs):.1e}" if c.accuracy and c.accuracy.outputs
            else "",
            "build s": build_cell(c.build_seconds, c.artifact.details if c.artifact else None),
            "size MB": f"{c.artifact.size_bytes / 1e6:.1f}" if c.artifact else "",
            "load RSS MB": f"{b.load_rss_mb:.0f}" if b else "", "peak RSS MB": f"{b.peak_rss_mb:.0f}" if b else "",
            "note": note,
            CONFIRMED: c.confirmation.describe() if c.confirmation else "",
            SPEC_SHAPE_P50: ms(b.example_shape[0].p50_ms) if b and b.example_shape else "",
        }
        cells["p50 ms (bs1)"] = cells[DATA_SHAPES_P50] = ms(b.latency.p50_ms) if b else ""
        rows.append(tuple(cells[col] for col in cols))
    return rows
