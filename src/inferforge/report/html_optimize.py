"""The HTML page of an optimize run: summary, the full leaderboard with every reason, four charts, the machine."""

from __future__ import annotations

from typing import Any

from inferforge.report.charts import (
    STATUS_COLOURS,
    figure,
    log_if_wide,
    new_figure,
    no_data,
    plain,
    shortened,
)
from inferforge.report.html_page import environment_section, escaped, facts, number, page, table
from inferforge.report.leaderboard import accuracy_cell, build_cell, deciding_figure
from inferforge.validate import AccuracyBudget


def _budget(report: dict[str, Any]) -> AccuracyBudget | None:
    """The run's budget, from the JSON report (None in a report that lacks one)."""
    budget = report.get("budget")
    return AccuracyBudget(**budget) if budget else None


def _threshold(report: dict[str, Any], accuracy: dict[str, Any]) -> float | None:
    """Where the budget puts the bar on the score axis, if the score is one the budget bounds."""
    budget = _budget(report)
    reference = accuracy.get("reference_accuracy")
    return None if budget is None else deciding_figure(accuracy).score_bar(
        budget, None if reference is None else float(reference))


def _leaderboard(report: dict[str, Any]) -> str:
    headers = ("#", "candidate", "status", "p50 ms (bs1)", "p99 ms", "best tput /s", "accuracy", "build s",
               "size MB", "reason")
    rows = []
    for i, c in enumerate(report["candidates"], 1):
        bench = c.get("bench")
        best = max(bench["sweep"], key=lambda s: s["throughput"]) if bench and bench.get("sweep") else None
        build = build_cell(c.get("build_seconds"), c.get("artifact_details"))
        size = c.get("artifact_bytes")
        cls = c["status"] + (" picked" if c["key"] == report.get("picked") else "")
        rows.append(((str(i), c["key"], c["status"], number(bench and bench["latency"]["p50_ms"], 3),
                      number(bench and bench["latency"]["p99_ms"], 3),
                      f"{best['throughput']:.1f} (bs{best['batch_size']})" if best else "",
                      accuracy_cell(c.get("accuracy")), build, number(size / 1e6 if size else None, 2),
                      "picked" if c["key"] == report.get("picked") else c.get("reason", "")), cls))
    return '<section id="leaderboard"><h2>Leaderboard</h2>' + table(headers, rows, numeric=(0, 3, 4, 5, 7, 8)) \
        + "</section>"


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both lower latency and higher score, by latency."""
    front: list[tuple[float, float]] = []
    for latency, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or score > front[-1][1]:
            front.append((latency, score))
    return front


def _score_floor(kept: list[float], scores: list[float]) -> float | None:
    """Where to cut the score axis so one broken candidate (accuracy 11% against 98%) does not squash the
    passed ones into a line; None when every score fits comfortably."""
    if not kept:
        return None
    span = max(max(kept) - min(kept), 1e-6)
    floor = min(kept) - 0.5 * span
    return floor if min(scores) < min(kept) - 4 * span else None


def _accuracy_chart(report: dict[str, Any]) -> str:
    fig = new_figure(10, 5.5)
    ax = fig.add_subplot()
    measured = [(i, c) for i, c in enumerate(report["candidates"], 1) if c.get("accuracy") and c.get("bench")]
    rejected_notes = []
    if not measured:
        no_data(ax, "no candidate has both an accuracy and a latency")
    else:
        score_name = deciding_figure(measured[0][1]["accuracy"]).score_name
        passed = [(c["bench"]["latency"]["p50_ms"], float(c["accuracy"]["score"])) for _, c in measured if c["status"] == "passed"]
        threshold = _threshold(report, measured[0][1]["accuracy"])
        floor = _score_floor([y for _, y in passed] + ([threshold] if threshold is not None else []),
                             [float(c["accuracy"]["score"]) for _, c in measured])
        points: dict[str, list[tuple[float, float]]] = {"passed": [], "picked": [], "rejected": []}
        for i, c in measured:
            x, y = c["bench"]["latency"]["p50_ms"], float(c["accuracy"]["score"])
            label, kind = f"#{i}", "picked" if c["key"] == report.get("picked") else c["status"]
            if kind == "rejected":
                rejected_notes.append(f"#{i} {c['key']}: {shortened(c.get('reason', ''))}")
                if floor is not None and y < floor:  # far below the rest: pinned to the floor, value written
                    label, y = f"#{i} ({y:.4g})", floor
            points.setdefault(kind, []).append((x, y))
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        for kind, style in (("passed", {"marker": "o", "s": 45, "color": STATUS_COLOURS["passed"]}),
                            ("picked", {"marker": "*", "s": 130, "color": STATUS_COLOURS["passed"], "edgecolor": "k"}),
                            ("rejected", {"marker": "x", "s": 55, "color": STATUS_COLOURS["rejected"]})):
            if points[kind]:
                ax.scatter(*zip(*points[kind], strict=True), zorder=3, label=kind, **style)
        front = _pareto(passed)
        if len(front) > 1:
            ax.plot(*zip(*front, strict=True), color=STATUS_COLOURS["passed"], linestyle="--", linewidth=1,
                    drawstyle="steps-post", zorder=2, label="Pareto front")
        if threshold is not None:
            ax.axhline(threshold, color="#c62828", linewidth=1, linestyle=":", label=f"budget ({threshold:.6g})")
        log_if_wide(ax, (c["bench"]["latency"]["p50_ms"] for _, c in measured))
        ax.set_xlabel("p50 latency at batch 1 (ms), lower is better")
        ax.set_ylabel(plain(f"{score_name}, higher is better"))
        ax.ticklabel_format(axis="y", useOffset=False)  # cosines near 1 read as 0.999998, not 1e-6+9.9999e-1
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    after = ("<ul class=\"rejected\">" + "".join(f"<li>{escaped(n)}</li>" for n in rejected_notes) + "</ul>"
             if rejected_notes else "")
    return figure("accuracy-latency", fig, "Accuracy against batch-1 median latency; numbers are leaderboard rows. "
                  "Rejected candidates (crosses) and why are listed below.", after)


def _latency_chart(report: dict[str, Any]) -> str:
    benched = [(i, c) for i, c in enumerate(report["candidates"], 1) if c.get("bench")]
    fig = new_figure(10, max(2.5, 0.35 * len(benched) + 1.2))
    ax = fig.add_subplot()
    if not benched:
        no_data(ax, "no candidate was measured")
    for row, (_, c) in enumerate(reversed(benched)):
        lat = c["bench"]["latency"]
        colour = STATUS_COLOURS.get(c["status"], "#555")
        ax.hlines(row, lat["p50_ms"], lat["p99_ms"], color=colour, linewidth=1.2)
        ax.barh(row, lat["p90_ms"] - lat["p50_ms"], left=lat["p50_ms"], height=0.5, color=colour, alpha=0.35)
        ax.plot([lat["p50_ms"]], [row], marker="|", markersize=14, color=colour)
        ax.plot([lat["p99_ms"]], [row], marker="|", markersize=8, color=colour)
        ax.plot([lat["mean_ms"]], [row], marker="D", markersize=4, color="black")
    if benched:
        ax.set_yticks(range(len(benched)), [plain(f"#{i} {c['key']}") for i, c in reversed(benched)], fontsize=8)
        log_if_wide(ax, [v for _, c in benched for v in (c["bench"]["latency"]["p50_ms"],
                                                          c["bench"]["latency"]["p99_ms"])])
        ax.set_xlabel("latency at batch 1 (ms)")
        ax.grid(axis="x", alpha=0.3)
    return figure("latency-distribution", fig, "Batch-1 latency per candidate: the box spans p50 to p90, the line "
                  "reaches p99, the diamond is the mean (the report keeps percentiles, not samples).")


def _throughput_chart(report: dict[str, Any]) -> str:
    fig = new_figure(10, 5)
    ax = fig.add_subplot()
    passed = [c for c in report["candidates"] if c["status"] == "passed" and c.get("bench") and c["bench"].get("sweep")]
    if not passed:
        no_data(ax, "no candidate passed")
    for c in passed:
        sweep = sorted(c["bench"]["sweep"], key=lambda s: s["batch_size"])
        ax.plot([s["batch_size"] for s in sweep], [s["throughput"] for s in sweep], marker="o", markersize=4,
                linewidth=2.2 if c["key"] == report.get("picked") else 1.2, label=plain(c["key"]))
    if passed:
        ax.set_xscale("log", base=2)
        sizes = sorted({s["batch_size"] for c in passed for s in c["bench"]["sweep"]})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("batch size")
        ax.set_ylabel("throughput (samples/s)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(alpha=0.3)
    return figure("throughput-batch", fig, "Throughput (samples/s at the median latency) against batch size, one "
                  "line per passed candidate; the picked one is drawn thicker.")


def _build_chart(report: dict[str, Any]) -> str:
    built = [(i, c) for i, c in enumerate(report["candidates"], 1) if c.get("build_seconds") is not None]
    fig = new_figure(10, max(2.5, 0.32 * len(built) + 1.2))
    ax = fig.add_subplot()
    if not built:
        no_data(ax, "no candidate was built")
    any_cached = False
    for row, (_, c) in enumerate(reversed(built)):
        cached = "cache" in (c.get("artifact_details") or {})
        any_cached |= cached
        ax.barh(row, c["build_seconds"], height=0.6, color=STATUS_COLOURS.get(c["status"], "#555"),
                hatch="//" if cached else None, alpha=0.5 if cached else 0.85)
    if built:
        ax.set_yticks(range(len(built)), [plain(f"#{i} {c['key']}") for i, c in reversed(built)], fontsize=8)
        ax.set_xlabel("build time (s)")
        ax.grid(axis="x", alpha=0.3)
    note = " Hatched bars were taken from the build cache." if any_cached else ""
    return figure("build-time", fig, "Build time per candidate, coloured by status." + note)


def optimize_report_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page for an optimize run: ``report`` is ``inferforge.report.report_json(...)``.

    Four inline SVG charts (accuracy against latency, latency spread, throughput against batch size, build
    time), the full leaderboard with every reason, and the environment. Needs matplotlib.
    """
    budget = _budget(report)
    data = report.get("validation_data") or {}
    header = facts([
        ("model", report.get("model", "")), ("created", report.get("created", "")),
        ("picked", report.get("picked") or "none (no candidate passed)"), ("objective", report.get("objective", "")),
        ("task", report.get("task", "")),
        ("budget", budget.describe() if budget else ""),
        ("validation data", f"{data.get('origin', '')}, {data.get('samples', '?')} samples, "
                            f"labels: {'yes' if data.get('labels') else 'no'}"),
        ("threads / batch sizes", f"{report.get('threads')} / {', '.join(map(str, report.get('batch_sizes', [])))}"),
    ])
    charts = [_accuracy_chart(report), _latency_chart(report), _throughput_chart(report), _build_chart(report)]
    return page(f"inferforge report: {report.get('model', '')}", [
        f'<section id="summary">{header}</section>', _leaderboard(report),
        '<section id="charts"><h2>Charts</h2>' + "".join(charts) + "</section>",
        environment_section(report.get("environment") or {})])
