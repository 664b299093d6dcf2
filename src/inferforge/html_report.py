"""Self-contained HTML pages for an optimize run report and a LoadGen bench run.

A report is read where it was made and where it was mailed to, often on machines with no network, so each page
is one file: charts are inline SVG drawn by matplotlib, styles are inline, and a Content-Security-Policy forbids
fetching anything. The one script only records that the page loaded, how many charts it drew and any error, so a
headless browser can prove the page renders. Every string taken from a report is escaped.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from inferforge.report import accuracy_cell, build_cell

STATUS_COLOURS = {"passed": "#2e7d32", "rejected": "#e65100", "failed": "#c62828", "skipped": "#757575"}
SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
REASON_CHARS = 90  # a reason beside a chart is cut here; the table keeps it whole

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.passed td:nth-child(3){color:#2e7d32}tr.rejected td:nth-child(3){color:#e65100}
tr.failed td:nth-child(3){color:#c62828}tr.skipped{color:#777}tr.picked{background:#eef7ee;font-weight:600}
figure.chart{margin:20px 0}figure.chart svg{max-width:100%;height:auto}figcaption{color:#555;font-size:13px}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 14px}dt{font-weight:600}dd{margin:0}
"""

# window.onerror is set before anything else can fail; data-* attributes are what a headless browser reads back.
_SCRIPT = """
(function () {
  var errors = [];
  window.onerror = function (message, source, line) {
    errors.push(message + " (" + source + ":" + line + ")");
    if (document.body) { document.body.dataset.errors = errors.join("\\n"); }
    return false;
  };
  window.addEventListener("load", function () {
    if (errors.length) { document.body.dataset.errors = errors.join("\\n"); }
    document.body.dataset.charts = String(document.querySelectorAll("figure.chart > svg").length);
    document.body.dataset.ready = "1";
  });
})();
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _plain(text: str) -> str:
    """Text for matplotlib: a ``$`` in a candidate key or reason would otherwise start mathtext."""
    return text.replace("$", r"\$")


def _short(reason: str) -> str:
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"


def _num(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure that needs no display and no pyplot state (so nothing leaks between reports)."""
    import matplotlib

    matplotlib.use("Agg")  # the only backend a server or CI box is sure to have
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Any, chart_id: str) -> str:
    """The figure as an ``<svg>`` element; ids are salted per chart so two inline SVGs never share one."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": chart_id}):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(chart_id: str, fig: Any, caption: str, after: str = "") -> str:
    return (f'<figure class="chart" id="{_e(chart_id)}">{_svg(fig, chart_id)}'
            f"<figcaption>{_e(caption)}</figcaption>{after}</figure>")


def _no_data(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, _plain(what), ha="center", va="center", transform=ax.transAxes, color="#777")
    ax.set_xticks([])
    ax.set_yticks([])


def _log_if_wide(ax: Any, values: Iterable[float], axis: str = "x", ratio: float = 20.0) -> None:
    """A log axis when values span more than ``ratio``: one slow candidate must not flatten the rest."""
    positive = [v for v in values if v and v > 0]
    if positive and max(positive) / min(positive) > ratio:
        from matplotlib.ticker import NullFormatter, StrMethodFormatter

        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        target = ax.xaxis if axis == "x" else ax.yaxis
        target.set_major_formatter(StrMethodFormatter("{x:g}"))  # 0.05, not 5×10⁻²
        target.set_minor_formatter(NullFormatter())


def _table(headers: Sequence[str], rows: Iterable[tuple[Sequence[str], str]], numeric: Iterable[int] = ()) -> str:
    """Rows are (cells, css class); cells are escaped here."""
    numeric_cols = set(numeric)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{_e(cls)}">' + "".join(
            f'<td class="num">{_e(c)}</td>' if i in numeric_cols else f"<td>{_e(c)}</td>" for i, c in enumerate(cells))
        + "</tr>" for cells, cls in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _facts(pairs: Iterable[tuple[str, object]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in pairs) + "</dl>"


def _environment(env: dict[str, Any]) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in (env.get("libraries") or {}).items() if v)
    pairs: list[tuple[str, object]] = [
        ("machine", env.get("machine", "")), ("system", env.get("system", "")), ("python", env.get("python", "")),
        ("cpu", env.get("cpu", "")), ("cores", env.get("cores", "")),
        ("cpu flags", ", ".join(env.get("cpu_flags") or [])), ("libraries", libs)]
    if env.get("gpu"):
        capability = f" (compute capability {env['cuda_capability']})" if env.get("cuda_capability") else ""
        pairs.append(("gpu", f"{env['gpu']}{capability}"))
    facts = _facts((k, v) for k, v in pairs if v not in ("", None))
    return '<section id="environment"><h2>Environment</h2>' + facts + "</section>"


def _page(title: str, sections: Iterable[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script></head>"
            f"<body><h1>{_e(title)}</h1>{''.join(sections)}</body></html>\n")


# ---- optimize report -------------------------------------------------------------------------------------------

def _score_label(decided_by: str) -> str:
    return {"accuracy drop": "accuracy", "top-1 agreement": "top-1 agreement"}.get(decided_by, "mean cosine")


def _threshold(report: dict[str, Any], accuracy: dict[str, Any]) -> float | None:
    """Where the budget puts the bar on the score axis, if the score is one the budget bounds."""
    budget = report.get("budget") or {}
    decided_by = accuracy.get("decided_by")
    if decided_by == "accuracy drop" and accuracy.get("reference_accuracy") is not None:
        return float(accuracy["reference_accuracy"]) - float(budget.get("max_accuracy_drop", 0.0))
    if decided_by == "top-1 agreement":
        return budget.get("min_top1_agreement")
    return budget.get("min_cosine")


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
        rows.append(((str(i), c["key"], c["status"], _num(bench and bench["latency"]["p50_ms"], 3),
                      _num(bench and bench["latency"]["p99_ms"], 3),
                      f"{best['throughput']:.1f} (bs{best['batch_size']})" if best else "",
                      accuracy_cell(c.get("accuracy")), build, _num(size / 1e6 if size else None, 2),
                      "picked" if c["key"] == report.get("picked") else c.get("reason", "")), cls))
    return '<section id="leaderboard"><h2>Leaderboard</h2>' + _table(headers, rows, numeric=(0, 3, 4, 5, 7, 8)) \
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
    fig = _new_figure(10, 5.5)
    ax = fig.add_subplot()
    measured = [(i, c) for i, c in enumerate(report["candidates"], 1) if c.get("accuracy") and c.get("bench")]
    rejected_notes = []
    if not measured:
        _no_data(ax, "no candidate has both an accuracy and a latency")
    else:
        score_name = _score_label(measured[0][1]["accuracy"].get("decided_by", ""))
        passed = [(c["bench"]["latency"]["p50_ms"], float(c["accuracy"]["score"])) for _, c in measured if c["status"] == "passed"]
        threshold = _threshold(report, measured[0][1]["accuracy"])
        floor = _score_floor([y for _, y in passed] + ([threshold] if threshold is not None else []),
                             [float(c["accuracy"]["score"]) for _, c in measured])
        points: dict[str, list[tuple[float, float]]] = {"passed": [], "picked": [], "rejected": []}
        for i, c in measured:
            x, y = c["bench"]["latency"]["p50_ms"], float(c["accuracy"]["score"])
            label, kind = f"#{i}", "picked" if c["key"] == report.get("picked") else c["status"]
            if kind == "rejected":
                rejected_notes.append(f"#{i} {c['key']}: {_short(c.get('reason', ''))}")
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
        _log_if_wide(ax, (c["bench"]["latency"]["p50_ms"] for _, c in measured))
        ax.set_xlabel("p50 latency at batch 1 (ms), lower is better")
        ax.set_ylabel(_plain(f"{score_name}, higher is better"))
        ax.ticklabel_format(axis="y", useOffset=False)  # cosines near 1 read as 0.999998, not 1e-6+9.9999e-1
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    after = ("<ul class=\"rejected\">" + "".join(f"<li>{_e(n)}</li>" for n in rejected_notes) + "</ul>"
             if rejected_notes else "")
    return _figure("accuracy-latency", fig, "Accuracy against batch-1 median latency; numbers are leaderboard rows. "
                   "Rejected candidates (crosses) and why are listed below.", after)


def _latency_chart(report: dict[str, Any]) -> str:
    benched = [(i, c) for i, c in enumerate(report["candidates"], 1) if c.get("bench")]
    fig = _new_figure(10, max(2.5, 0.35 * len(benched) + 1.2))
    ax = fig.add_subplot()
    if not benched:
        _no_data(ax, "no candidate was measured")
    for row, (_, c) in enumerate(reversed(benched)):
        lat = c["bench"]["latency"]
        colour = STATUS_COLOURS.get(c["status"], "#555")
        ax.hlines(row, lat["p50_ms"], lat["p99_ms"], color=colour, linewidth=1.2)
        ax.barh(row, lat["p90_ms"] - lat["p50_ms"], left=lat["p50_ms"], height=0.5, color=colour, alpha=0.35)
        ax.plot([lat["p50_ms"]], [row], marker="|", markersize=14, color=colour)
        ax.plot([lat["p99_ms"]], [row], marker="|", markersize=8, color=colour)
        ax.plot([lat["mean_ms"]], [row], marker="D", markersize=4, color="black")
    if benched:
        ax.set_yticks(range(len(benched)), [_plain(f"#{i} {c['key']}") for i, c in reversed(benched)], fontsize=8)
        _log_if_wide(ax, [v for _, c in benched for v in (c["bench"]["latency"]["p50_ms"],
                                                          c["bench"]["latency"]["p99_ms"])])
        ax.set_xlabel("latency at batch 1 (ms)")
        ax.grid(axis="x", alpha=0.3)
    return _figure("latency-distribution", fig, "Batch-1 latency per candidate: the box spans p50 to p90, the line "
                   "reaches p99, the diamond is the mean (the report keeps percentiles, not samples).")


def _throughput_chart(report: dict[str, Any]) -> str:
    fig = _new_figure(10, 5)
    ax = fig.add_subplot()
    passed = [c for c in report["candidates"] if c["status"] == "passed" and c.get("bench") and c["bench"].get("sweep")]
    if not passed:
        _no_data(ax, "no candidate passed")
    for c in passed:
        sweep = sorted(c["bench"]["sweep"], key=lambda s: s["batch_size"])
        ax.plot([s["batch_size"] for s in sweep], [s["throughput"] for s in sweep], marker="o", markersize=4,
                linewidth=2.2 if c["key"] == report.get("picked") else 1.2, label=_plain(c["key"]))
    if passed:
        ax.set_xscale("log", base=2)
        sizes = sorted({s["batch_size"] for c in passed for s in c["bench"]["sweep"]})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("batch size")
        ax.set_ylabel("throughput (samples/s)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(alpha=0.3)
    return _figure("throughput-batch", fig, "Throughput (samples/s at the median latency) against batch size, one "
                   "line per passed candidate; the picked one is drawn thicker.")


def _build_chart(report: dict[str, Any]) -> str:
    built = [(i, c) for i, c in enumerate(report["candidates"], 1) if c.get("build_seconds") is not None]
    fig = _new_figure(10, max(2.5, 0.32 * len(built) + 1.2))
    ax = fig.add_subplot()
    if not built:
        _no_data(ax, "no candidate was built")
    any_cached = False
    for row, (_, c) in enumerate(reversed(built)):
        cached = "cache" in (c.get("artifact_details") or {})
        any_cached |= cached
        ax.barh(row, c["build_seconds"], height=0.6, color=STATUS_COLOURS.get(c["status"], "#555"),
                hatch="//" if cached else None, alpha=0.5 if cached else 0.85)
    if built:
        ax.set_yticks(range(len(built)), [_plain(f"#{i} {c['key']}") for i, c in reversed(built)], fontsize=8)
        ax.set_xlabel("build time (s)")
        ax.grid(axis="x", alpha=0.3)
    note = " Hatched bars were taken from the build cache." if any_cached else ""
    return _figure("build-time", fig, "Build time per candidate, coloured by status." + note)


def optimize_report_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page for an optimize run: ``report`` is ``inferforge.report.report_json(...)``.

    Four inline SVG charts (accuracy against latency, latency spread, throughput against batch size, build
    time), the full leaderboard with every reason, and the environment. Needs matplotlib.
    """
    budget = report.get("budget") or {}
    data = report.get("validation_data") or {}
    header = _facts([
        ("model", report.get("model", "")), ("created", report.get("created", "")),
        ("picked", report.get("picked") or "none (no candidate passed)"), ("objective", report.get("objective", "")),
        ("task", report.get("task", "")),
        ("budget", f"max accuracy drop {budget.get('max_accuracy_drop', 0) * 100:.2f} points, min cosine "
                   f"{budget.get('min_cosine')}, min top-1 agreement {budget.get('min_top1_agreement')}"),
        ("validation data", f"{data.get('origin', '')}, {data.get('samples', '?')} samples, "
                            f"labels: {'yes' if data.get('labels') else 'no'}"),
        ("threads / batch sizes", f"{report.get('threads')} / {', '.join(map(str, report.get('batch_sizes', [])))}"),
    ])
    charts = [_accuracy_chart(report), _latency_chart(report), _throughput_chart(report), _build_chart(report)]
    return _page(f"inferforge report: {report.get('model', '')}", [
        f'<section id="summary">{header}</section>', _leaderboard(report),
        '<section id="charts"><h2>Charts</h2>' + "".join(charts) + "</section>",
        _environment(report.get("environment") or {})])


# ---- LoadGen bench ---------------------------------------------------------------------------------------------

def _scenario_table(bench: dict[str, Any]) -> str:
    headers = ("scenario", "valid", "samples", "QPS", "p50 ms", "p90 ms", "p99 ms", "detail", "LoadGen log")
    logs = bench.get("loadgen_logs") or {}
    rows = []
    for name, s in _scenarios(bench):
        detail = ", ".join(f"{k.replace('_', ' ')} {s[k]:g}" for k in
                           ("samples_per_query", "target_qps", "latency_bound_ms", "samples_per_s") if k in s)
        rows.append(((name, "yes" if s.get("valid") else "NO", str(s.get("samples", "")), _num(s.get("qps")),
                      _num(s.get("p50_ms"), 3), _num(s.get("p90_ms"), 3), _num(s.get("p99_ms"), 3), detail,
                      logs.get(name, "")), "passed" if s.get("valid") else "failed"))
    return '<section id="scenarios"><h2>Scenarios</h2>' + _table(headers, rows, numeric=(2, 3, 4, 5, 6)) \
        + "</section>"


def _scenarios(bench: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    present = bench.get("scenarios") or {}
    return [(name, present[name]) for name in (*SCENARIOS, *sorted(set(present) - set(SCENARIOS))) if name in present]


def _latency_cdf_chart(bench: dict[str, Any]) -> str:
    import numpy as np

    fig = _new_figure(10, 5)
    ax = fig.add_subplot()
    drawn = [(name, np.sort(np.asarray(s["latencies_ms"], dtype=float)))
             for name, s in _scenarios(bench) if s.get("latencies_ms")]
    if not drawn:
        _no_data(ax, "no scenario recorded latencies")
    for name, samples in drawn:
        ax.plot(samples, np.arange(1, len(samples) + 1) / len(samples), label=_plain(f"{name} ({len(samples)})"))
    if drawn:
        _log_if_wide(ax, [v for _, samples in drawn for v in (float(samples[0]), float(samples[-1]))])
        for q in (0.5, 0.9, 0.99):
            ax.axhline(q, color="#999", linewidth=0.6, linestyle=":")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of queries at or below")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    return _figure("latency-cdf", fig, "Cumulative distribution of query latency per scenario (dotted lines: "
                   "p50, p90, p99).")


def _server_search_chart(server: dict[str, Any]) -> str:
    fig = _new_figure(10, 4.5)
    ax = fig.add_subplot()
    points = sorted(server["search"], key=lambda p: p["qps"])
    ax.plot([p["qps"] for p in points], [p["p99_ms"] for p in points], color="#555", linewidth=1)
    for valid, colour, label in ((True, STATUS_COLOURS["passed"], "valid"), (False, STATUS_COLOURS["failed"],
                                                                             "invalid")):
        chosen = [p for p in points if bool(p.get("valid")) is valid]
        if chosen:
            ax.scatter([p["qps"] for p in chosen], [p["p99_ms"] for p in chosen], color=colour, zorder=3,
                       marker="o" if valid else "x", label=label)
    if server.get("latency_bound_ms") is not None:
        ax.axhline(server["latency_bound_ms"], color="#c62828", linestyle="--", linewidth=1,
                   label=f"latency bound {server['latency_bound_ms']:g} ms")
    ax.set_xlabel("offered load (QPS)")
    ax.set_ylabel("p99 latency (ms)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _figure("server-search", fig, "Server scenario: p99 latency at each offered QPS the search tried; a run "
                   "is valid when its p99 stays under the bound.")


def bench_report_html(bench: dict[str, Any]) -> str:
    """One self-contained HTML page for an MLPerf LoadGen bench run (the ``"kind": "bench"`` JSON).

    Any scenario may be missing; the Server search chart appears only when the Server scenario has a search.
    """
    charts = [_latency_cdf_chart(bench)]
    server = (bench.get("scenarios") or {}).get("Server")
    if server and server.get("search"):
        charts.append(_server_search_chart(server))
    header = _facts([("model", bench.get("model", "")), ("target", bench.get("target", "")),
                     ("artifact", bench.get("artifact", "")), ("created", bench.get("created", ""))])
    return _page(f"inferforge bench: {bench.get('model', '')}", [
        f'<section id="summary">{header}</section>', _scenario_table(bench),
        '<section id="charts"><h2>Charts</h2>' + "".join(charts) + "</section>",
        _environment(bench.get("environment") or {})])


def write_html(html: str, path: Path) -> Path:
    """Write ``html`` to ``path`` atomically: a reader (or a crash) never sees half a page.

    The temporary file sits in the same folder, so ``os.replace`` is a rename on one file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
