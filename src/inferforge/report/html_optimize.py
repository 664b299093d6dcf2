"""The HTML page of an optimize run: summary, the full leaderboard with every reason, four charts, the machine.

Each candidate is drawn in its own colour and marker on every chart (by leaderboard row); filled markers passed,
hollow ones did not; a black ring marks the artifacts the package holds (``report["packaged"]``, written with
the package), or the pick alone where the report does not say.
"""

from __future__ import annotations

from typing import Any

from inferforge.report.charts import (
    figure,
    finish,
    log_if_wide,
    new_figure,
    no_data,
    place_labels,
    plain,
    series_style,
    shortened,
)
from inferforge.report.html_page import environment_section, escaped, facts, number, page, table
from inferforge.report.leaderboard import accuracy_cell, build_cell, deciding_figure
from inferforge.validate import AccuracyBudget, DecidingFigure

MARKER_SIZE = 45  # points², every candidate's marker on the scatter
RING_SIZE = 190  # the packaged ring around it


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


def _score_unit(figure: DecidingFigure) -> tuple[float, str]:
    """The factor and unit the chart shows a score in: the leaderboard's (accuracy in percent, the rest as
    fractions), so the chart and the table give one number one way."""
    return (100.0, " (%)") if figure is DecidingFigure.ACCURACY_DROP else (1.0, "")


def _packaged(report: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """Packaged artifacts by key (``rank``, ``why``), or None where the report does not record them."""
    entries = report.get("packaged")
    return None if entries is None else {e["key"]: e for e in entries}


def _row_label(row: int, c: dict[str, Any], report: dict[str, Any]) -> str:
    """A candidate as legends and chart rows name it: its leaderboard number, key and what became of it."""
    packaged = _packaged(report) or {}
    if c["key"] == report.get("picked"):
        fate = "picked"
    elif c["key"] in packaged:
        fate = f"packaged, rank {packaged[c['key']]['rank']}"
    else:
        fate = "" if c["status"] == "passed" else c["status"]
    return f"#{row} {c['key']}" + (f" ({fate})" if fate else "")


def _is_packaged(c: dict[str, Any], report: dict[str, Any]) -> bool:
    packaged = _packaged(report)
    return c["key"] == report.get("picked") if packaged is None else c["key"] in packaged


def _leaderboard(report: dict[str, Any]) -> str:
    headers = ("#", "candidate", "status", "p50 ms (bs1)", "p99 ms", "best tput /s", "accuracy", "build s",
               "size MB", "packaged", "reason")
    packaged = _packaged(report) or {}
    rows = []
    for i, c in enumerate(report["candidates"], 1):
        bench = c.get("bench")
        best = max(bench["sweep"], key=lambda s: s["throughput"]) if bench and bench.get("sweep") else None
        build = build_cell(c.get("build_seconds"), c.get("artifact_details"))
        size = c.get("artifact_bytes")
        entry = packaged.get(c["key"])
        cls = c["status"] + (" picked" if c["key"] == report.get("picked") else "") + (" packaged" if entry else "")
        rows.append(((str(i), c["key"], c["status"], number(bench and bench["latency"]["p50_ms"], 3),
                      number(bench and bench["latency"]["p99_ms"], 3),
                      f"{best['throughput']:.1f} (bs{best['batch_size']})" if best else "",
                      accuracy_cell(c.get("accuracy")), build, number(size / 1e6 if size else None, 2),
                      f"rank {entry['rank']}: {entry.get('why', '')}" if entry else "",
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
    ring = "packaged" if _packaged(report) is not None else "picked"
    if not measured:
        no_data(ax, "no candidate has both an accuracy and a latency")
        finish(ax, "accuracy-latency", "Accuracy against batch-1 latency", legend=False)
    else:
        decided = deciding_figure(measured[0][1]["accuracy"])
        scale, unit = _score_unit(decided)
        passed = [(c["bench"]["latency"]["p50_ms"], scale * float(c["accuracy"]["score"]))
                  for _, c in measured if c["status"] == "passed"]
        threshold = _threshold(report, measured[0][1]["accuracy"])
        threshold = None if threshold is None else scale * threshold
        floor = _score_floor([y for _, y in passed] + ([threshold] if threshold is not None else []),
                             [scale * float(c["accuracy"]["score"]) for _, c in measured])
        labels: list[tuple[int, float, float, str]] = []
        ringed: list[tuple[float, float]] = []
        for i, c in measured:
            x, y = c["bench"]["latency"]["p50_ms"], scale * float(c["accuracy"]["score"])
            label = f"#{i}"
            if c["status"] != "passed":
                rejected_notes.append(f"#{i} {c['key']}: {shortened(c.get('reason', ''))}")
                if floor is not None and y < floor:  # far below the rest: pinned to the floor, value written
                    label, y = f"#{i} ({y:.4g}{unit.strip(' ()')})", floor
            style = series_style(i)
            ax.scatter([x], [y], marker=style.marker, s=MARKER_SIZE, linewidths=1.2, zorder=3,
                       facecolors=style.colour if c["status"] == "passed" else "none", edgecolors=style.colour,
                       label=plain(_row_label(i, c, report))).set_gid(f"accuracy-latency-series-{i}")
            labels.append((i, x, y, label))
            if _is_packaged(c, report):
                ringed.append((x, y))
        if ringed:
            ax.scatter(*zip(*ringed, strict=True), marker="o", s=RING_SIZE, facecolors="none", edgecolors="black",
                       linewidths=1.0, zorder=2, label=ring).set_gid("accuracy-latency-packaged")
        front = _pareto(passed)
        if len(front) > 1:
            ax.plot(*zip(*front, strict=True), color="#555", linestyle="--", linewidth=1,
                    drawstyle="steps-post", zorder=1, label="Pareto front (passed)")
        if threshold is not None:
            ax.axhline(threshold, color="#c62828", linewidth=1, linestyle=":", label=f"budget ({threshold:.6g})")
        log_if_wide(ax, (c["bench"]["latency"]["p50_ms"] for _, c in measured))
        ax.set_xlabel("p50 latency at batch 1 (ms), lower is better")
        ax.set_ylabel(plain(f"{decided.score_name}{unit}, higher is better"))
        ax.ticklabel_format(axis="y", useOffset=False)  # cosines near 1 read as 0.999998, not 1e-6+9.9999e-1
        ax.grid(alpha=0.3)
        finish(ax, "accuracy-latency", "Accuracy against batch-1 latency")
        place_labels(ax, "accuracy-latency", labels, marker_pt=(RING_SIZE ** 0.5 if ringed else MARKER_SIZE ** 0.5))
    after = ("<ul class=\"rejected\">" + "".join(f"<li>{escaped(n)}</li>" for n in rejected_notes) + "</ul>"
             if rejected_notes else "")
    return figure("accuracy-latency", fig, "Accuracy against batch-1 median latency; numbers are leaderboard rows, "
                  "each candidate in its own colour and marker. Filled markers passed the budget; hollow markers "
                  f"did not (listed below with why); a black ring marks each {ring} artifact.", after)


def _latency_chart(report: dict[str, Any]) -> str:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    benched = [(i, c) for i, c in enumerate(report["candidates"], 1) if c.get("bench")]
    fig = new_figure(10, max(2.5, 0.35 * len(benched) + 1.6))
    ax = fig.add_subplot()
    if not benched:
        no_data(ax, "no candidate was measured")
    for row, (i, c) in enumerate(reversed(benched)):
        lat = c["bench"]["latency"]
        style = series_style(i)
        ax.hlines(row, lat["p50_ms"], lat["p99_ms"], color=style.colour, linewidth=1.2)
        ax.barh(row, lat["p90_ms"] - lat["p50_ms"], left=lat["p50_ms"], height=0.5, color=style.colour, alpha=0.35)
        ax.plot([lat["p99_ms"]], [row], marker="|", markersize=8, color=style.colour)
        ax.plot([lat["mean_ms"]], [row], marker="D", markersize=4, color="black")
        ax.plot([lat["p50_ms"]], [row], marker=style.marker, markersize=7, linestyle="none", zorder=3,
                color=style.colour, markerfacecolor=style.colour if c["status"] == "passed" else "none"
                )[0].set_gid(f"latency-distribution-series-{i}")
    if benched:
        ax.set_yticks(range(len(benched)), [plain(_row_label(i, c, report)) for i, c in reversed(benched)],
                      fontsize=8)
        log_if_wide(ax, [v for _, c in benched for v in (c["bench"]["latency"]["p50_ms"],
                                                          c["bench"]["latency"]["p99_ms"])])
        ax.set_xlabel("latency at batch 1 (ms)")
        ax.grid(axis="x", alpha=0.3)
    handles = [
            Line2D([], [], marker="o", color="#555", linestyle="none", label="p50 (the candidate's marker)"),
            Patch(color="#555", alpha=0.35, label="p50 to p90"),
            Line2D([], [], marker="|", color="#555", markersize=8, label="to p99"),
            Line2D([], [], marker="D", color="black", markersize=4, linestyle="none", label="mean")]
    finish(ax, "latency-distribution", "Batch-1 latency spread", legend=bool(benched), handles=handles)
    return figure("latency-distribution", fig, "Batch-1 latency per candidate: its marker is the median (p50), "
                  "the box spans p50 to p90, the line reaches p99, the black diamond is the mean (the report keeps "
                  "percentiles, not samples).")


def _throughput_chart(report: dict[str, Any]) -> str:
    fig = new_figure(10, 5)
    ax = fig.add_subplot()
    passed = [(i, c) for i, c in enumerate(report["candidates"], 1)
              if c["status"] == "passed" and c.get("bench") and c["bench"].get("sweep")]
    if not passed:
        no_data(ax, "no candidate passed")
    known = _packaged(report) is not None
    for i, c in passed:
        sweep = sorted(c["bench"]["sweep"], key=lambda s: s["batch_size"])
        style = series_style(i)
        ax.plot([s["batch_size"] for s in sweep], [s["throughput"] for s in sweep], marker=style.marker,
                markersize=5, color=style.colour, linestyle="-" if not known or _is_packaged(c, report) else "--",
                linewidth=2.4 if c["key"] == report.get("picked") else 1.2,
                label=plain(_row_label(i, c, report)))[0].set_gid(f"throughput-batch-series-{i}")
    if passed:
        ax.set_xscale("log", base=2)
        sizes = sorted({s["batch_size"] for _, c in passed for s in c["bench"]["sweep"]})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size (log scale)")
        ax.set_ylabel("throughput (samples/s)")
        ax.grid(alpha=0.3)
    finish(ax, "throughput-batch", "Throughput against batch size", legend=bool(passed))
    dashed = " Dashed lines: passed but not packaged." if known else ""
    return figure("throughput-batch", fig, "Throughput (samples/s at the median latency) against batch size on a "
                  "log axis, one line per passed candidate in its colour and marker; the picked one is drawn "
                  "thicker." + dashed)


def _build_chart(report: dict[str, Any]) -> str:
    from matplotlib import rc_context
    from matplotlib.patches import Patch

    built = [(i, c) for i, c in enumerate(report["candidates"], 1) if c.get("build_seconds") is not None]
    fig = new_figure(10, max(2.5, 0.32 * len(built) + 1.6))
    ax = fig.add_subplot()
    if not built:
        no_data(ax, "no candidate was built")
    any_cached = False
    for row, (i, c) in enumerate(reversed(built)):
        cached = "cache" in (c.get("artifact_details") or {})
        any_cached |= cached
        colour = series_style(i).colour
        filled = c["status"] == "passed"
        with rc_context({"hatch.color": "white" if filled else colour}):  # read when the bar is made, any version
            ax.barh(row, c["build_seconds"], height=0.6, color=colour if filled else "white", edgecolor=colour,
                    hatch="//" if cached else None, alpha=0.9)[0].set_gid(f"build-time-series-{i}")
    if built:
        ax.set_yticks(range(len(built)), [plain(_row_label(i, c, report)) for i, c in reversed(built)], fontsize=8)
        ax.set_xlabel("build time (s)")
        ax.grid(axis="x", alpha=0.3)
    handles = [Patch(facecolor="#777", edgecolor="#777", label="passed (bar in the candidate's colour)"),
               Patch(facecolor="white", edgecolor="#777", label="rejected or failed (outlined)")]
    if any_cached:
        with rc_context({"hatch.color": "white"}):
            handles.append(Patch(facecolor="#777", edgecolor="#777", hatch="//", label="from the build cache"))
    finish(ax, "build-time", "Build time per candidate", legend=bool(built), handles=handles)
    note = (" Hatched bars were taken from the build cache (the seconds of the original build)." if any_cached
            else "")
    return figure("build-time", fig, "Build time per candidate, in its colour: filled bars passed, outlined ones "
                  "were rejected or failed." + note)


def _packaged_fact(report: dict[str, Any]) -> str:
    packaged = _packaged(report)
    if packaged is None:
        return "not recorded in this report"
    return ", ".join(f"{key} (rank {e['rank']})" for key, e in sorted(packaged.items(), key=lambda p: p[1]["rank"]))


def optimize_report_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page for an optimize run: ``report`` is ``inferforge.report.report_json(...)``.

    Four inline SVG charts (accuracy against latency, latency spread, throughput against batch size, build
    time), the full leaderboard with every reason, and the environment. Needs matplotlib.
    """
    budget = _budget(report)
    data = report.get("validation_data") or {}
    header = facts([
        ("model", report.get("model", "")), ("created", report.get("created", "")),
        ("picked", report.get("picked") or "none (no candidate passed)"),
        ("packaged", _packaged_fact(report)), ("objective", report.get("objective", "")),
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
