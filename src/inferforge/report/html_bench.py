"""The HTML page of an MLPerf LoadGen bench run: its settings, the scenarios, their latency distributions, the
Server search."""

from __future__ import annotations

from typing import Any

from inferforge.report.charts import (
    STATUS_COLOURS,
    figure,
    finish,
    log_if_wide,
    new_figure,
    no_data,
    plain,
    series_style,
)
from inferforge.report.html_page import environment_section, facts, number, page, table

# What each Server search point's marker says, in the chart's legend and its caption alike:
# (group id suffix, legend label, caption phrase, marker style).
SEARCH_MARKERS = (
    ("valid", "valid", "filled circles: LoadGen judged the run valid",
     {"marker": "o", "color": STATUS_COLOURS["passed"]}),
    ("over-bound", "invalid: p99 over the bound", "crosses: invalid, its p99 over the latency bound",
     {"marker": "x", "color": STATUS_COLOURS["failed"]}),
    ("other-check", "invalid: another check failed",
     "hollow triangles: invalid with its p99 within the bound (another of LoadGen's checks failed, such as too "
     "few queries for early stopping)",
     {"marker": "^", "facecolors": "none", "edgecolors": STATUS_COLOURS["rejected"]}),
)
UNITS = (("_per_s", "/s"), ("_ms", " ms"), ("_s", " s"))  # a figure's name ends with its unit


def _setting(name: str, value: object) -> tuple[str, str]:
    """A setting or figure as the page shows it: ('latency bound', '50 ms'), ('samples', '5000/s')."""
    shown = (f"{value:g}" if isinstance(value, float | int) and not isinstance(value, bool) else
             ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value))
    for suffix, unit in UNITS:
        if name.endswith(suffix):
            return name[: -len(suffix)].replace("_", " "), shown + unit
    return name.replace("_", " "), shown


def _settings_section(bench: dict[str, Any]) -> str:
    settings = bench.get("settings")
    shown = facts(_setting(k, v) for k, v in settings.items()) if settings else "<p>not recorded in this report</p>"
    return f'<section id="settings"><h2>Settings</h2>{shown}</section>'


def _why_invalid(s: dict[str, Any]) -> str:
    """LoadGen's own words on an invalid run: its failed checks (and a reason, where the run gave one)."""
    if s.get("valid"):
        return ""
    failed = [c for c in s.get("checks") or [] if not c.rstrip().endswith("Yes")]
    return "; ".join(([s["reason"]] if s.get("reason") else []) + failed)


def _scenario_table(bench: dict[str, Any]) -> str:
    headers = ("scenario", "valid", "samples", "QPS", "p50 ms", "p90 ms", "p99 ms", "detail", "why invalid",
               "LoadGen log")
    logs = bench.get("loadgen_logs") or {}
    rows = []
    for name, s in _scenarios(bench):
        detail = ", ".join(" ".join(_setting(k, s[k])) for k in
                           ("samples_per_query", "target_qps", "latency_bound_ms", "samples_per_s") if k in s)
        rows.append(((name, "yes" if s.get("valid") else "NO", str(s.get("samples", "")), number(s.get("qps")),
                      number(s.get("p50_ms"), 3), number(s.get("p90_ms"), 3), number(s.get("p99_ms"), 3), detail,
                      _why_invalid(s), logs.get(name, "")), "passed" if s.get("valid") else "failed"))
    return '<section id="scenarios"><h2>Scenarios</h2>' + table(headers, rows, numeric=(2, 3, 4, 5, 6)) \
        + "</section>"


def _scenarios(bench: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The scenarios in the order the run took them (serve/loadgen.py runs them in LoadgenSettings' order)."""
    return list((bench.get("scenarios") or {}).items())


def _latency_cdf_chart(bench: dict[str, Any]) -> str:
    import numpy as np

    fig = new_figure(10, 5)
    ax = fig.add_subplot()
    drawn = [(name, np.sort(np.asarray(s["latencies_ms"], dtype=float)))
             for name, s in _scenarios(bench) if s.get("latencies_ms")]
    if not drawn:
        no_data(ax, "no scenario recorded latencies")
    for row, (name, samples) in enumerate(drawn, 1):
        style = series_style(row)
        ax.plot(samples, np.arange(1, len(samples) + 1) / len(samples), color=style.colour, marker=style.marker,
                markevery=max(1, len(samples) // 8), markersize=5,
                label=plain(f"{name} ({len(samples)} queries)"))[0].set_gid(f"latency-cdf-series-{row}")
    if drawn:
        log_if_wide(ax, [v for _, samples in drawn for v in (float(samples[0]), float(samples[-1]))])
        for q in (0.5, 0.9, 0.99):
            ax.axhline(q, color="#999", linewidth=0.6, linestyle=":")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of queries at or below")
        ax.grid(alpha=0.3)
    finish(ax, "latency-cdf", "Query latency per scenario", legend=bool(drawn))
    return figure("latency-cdf", fig, "Cumulative distribution of query latency per scenario, each in its own "
                  "colour and marker (dotted lines: p50, p90, p99).")


def _search_kind(point: dict[str, Any], bound: float | None) -> str:
    """Which of SEARCH_MARKERS a Server search point is drawn with."""
    if point.get("valid"):
        return "valid"
    return "other-check" if bound is not None and point["p99_ms"] <= bound else "over-bound"


def _server_search_chart(server: dict[str, Any]) -> str:
    fig = new_figure(10, 4.5)
    ax = fig.add_subplot()
    bound = server.get("latency_bound_ms")
    points = sorted(server["search"], key=lambda p: p["qps"])
    ax.plot([p["qps"] for p in points], [p["p99_ms"] for p in points], color="#999", linewidth=1, zorder=1)
    said = []
    for kind, label, phrase, style in SEARCH_MARKERS:
        chosen = [p for p in points if _search_kind(p, bound) == kind]
        if chosen:
            ax.scatter([p["qps"] for p in chosen], [p["p99_ms"] for p in chosen], zorder=3, s=40, label=label,
                       **style).set_gid(f"server-search-{kind}")
            said.append(f"{phrase} ({label})")
    if bound is not None:
        ax.axhline(bound, color="#c62828", linestyle="--", linewidth=1, label=f"latency bound {bound:g} ms")
    ax.set_xlabel("offered load (QPS)")
    ax.set_ylabel("p99 latency (ms)")
    ax.grid(alpha=0.3)
    finish(ax, "server-search", "Server: the search for the highest valid QPS")
    final = f" The final run, at {server['target_qps']:g} QPS, is the table's Server row." \
        if server.get("target_qps") is not None else ""
    return figure("server-search", fig, "Server scenario: p99 latency at each offered load the search tried; "
                  + "; ".join(said) + "." + final)


def bench_report_html(bench: dict[str, Any]) -> str:
    """One self-contained HTML page for an MLPerf LoadGen bench run (the ``"kind": "bench"`` JSON).

    Any scenario may be missing; the Server search chart appears only when the Server scenario has a search.
    """
    charts = [_latency_cdf_chart(bench)]
    server = (bench.get("scenarios") or {}).get("Server")
    if server and server.get("search"):
        charts.append(_server_search_chart(server))
    header = facts([("model", bench.get("model", "")), ("target", bench.get("target", "")),
                     ("artifact", bench.get("artifact", "")), ("created", bench.get("created", ""))])
    return page(f"inferforge bench: {bench.get('model', '')}", [
        f'<section id="summary">{header}</section>', _settings_section(bench), _scenario_table(bench),
        '<section id="charts"><h2>Charts</h2>' + "".join(charts) + "</section>",
        environment_section(bench.get("environment") or {})])
