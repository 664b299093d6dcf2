"""The HTML page of an MLPerf LoadGen bench run: the scenarios, their latency distributions, the Server search."""

from __future__ import annotations

from typing import Any

from inferforge.report.charts import STATUS_COLOURS, figure, log_if_wide, new_figure, no_data, plain
from inferforge.report.html_page import environment_section, facts, number, page, table


def _scenario_table(bench: dict[str, Any]) -> str:
    headers = ("scenario", "valid", "samples", "QPS", "p50 ms", "p90 ms", "p99 ms", "detail", "LoadGen log")
    logs = bench.get("loadgen_logs") or {}
    rows = []
    for name, s in _scenarios(bench):
        detail = ", ".join(f"{k.replace('_', ' ')} {s[k]:g}" for k in
                           ("samples_per_query", "target_qps", "latency_bound_ms", "samples_per_s") if k in s)
        rows.append(((name, "yes" if s.get("valid") else "NO", str(s.get("samples", "")), number(s.get("qps")),
                      number(s.get("p50_ms"), 3), number(s.get("p90_ms"), 3), number(s.get("p99_ms"), 3), detail,
                      logs.get(name, "")), "passed" if s.get("valid") else "failed"))
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
    for name, samples in drawn:
        ax.plot(samples, np.arange(1, len(samples) + 1) / len(samples), label=plain(f"{name} ({len(samples)})"))
    if drawn:
        log_if_wide(ax, [v for _, samples in drawn for v in (float(samples[0]), float(samples[-1]))])
        for q in (0.5, 0.9, 0.99):
            ax.axhline(q, color="#999", linewidth=0.6, linestyle=":")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of queries at or below")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    return figure("latency-cdf", fig, "Cumulative distribution of query latency per scenario (dotted lines: "
                  "p50, p90, p99).")


def _server_search_chart(server: dict[str, Any]) -> str:
    fig = new_figure(10, 4.5)
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
    return figure("server-search", fig, "Server scenario: p99 latency at each offered QPS the search tried; a run "
                  "is valid when its p99 stays under the bound.")


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
        f'<section id="summary">{header}</section>', _scenario_table(bench),
        '<section id="charts"><h2>Charts</h2>' + "".join(charts) + "</section>",
        environment_section(bench.get("environment") or {})])
