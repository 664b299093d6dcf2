"""The HTML reports: one self-contained file each, with every candidate and reason, and charts a browser draws."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html import escape, unescape
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FP32_EXACT, fast_options

from inferforge.report.html_bench import bench_report_html
from inferforge.report.html_optimize import optimize_report_html
from inferforge.report.html_page import write_html

CHART = re.compile(r'<figure class="chart" id="([^"]+)"><svg\b')
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
pytestmark = pytest.mark.filterwarnings("ignore:inferforge. calibrating INT8 on inputs generated")


@pytest.fixture(scope="module")
def optimize_report() -> dict[str, Any]:
    """A real search report, made to have rejected candidates (a budget only FP32 meets) and one failed one."""
    import inferforge
    from inferforge.report import report_json

    result = inferforge.optimize("models:make_cnn", options=fast_options(backends=("eager", "onnxruntime"),
                                                                          budget=FP32_EXACT))
    report = report_json(result.search, result.dataset, result.source.name)
    # A build failure needs a broken backend; its JSON shape is CandidateResult.to_json with nothing measured.
    report["candidates"].append({
        "key": "openvino-int8", "config": {"backend": "openvino", "precision": "int8", "device": "cpu", "options": {}},
        "status": "failed", "reason": "build: <NNCF> could not quantize & gave up", "build_seconds": 0.2,
        "artifact_bytes": None, "artifact_details": None, "accuracy": None, "bench": None})
    return report


BENCH_SETTINGS = {"scenarios": ["SingleStream", "MultiStream", "Server", "Offline"], "duration_s": 5.0,
                  "latency_bound_ms": 10.0, "samples_per_query": 8, "max_batch": 32, "concurrency": 8,
                  "search_steps": 6, "search_duration_s": 2.0, "samples": 256}
# How the page lists each of them: the unit the name ends with goes after the value.
BENCH_SETTINGS_SHOWN = [("scenarios", "SingleStream, MultiStream, Server, Offline"), ("duration", "5 s"),
                        ("latency bound", "10 ms"), ("samples per query", "8"), ("max batch", "32"),
                        ("concurrency", "8"), ("search steps", "6"), ("search duration", "2 s"), ("samples", "256")]


def synthetic_bench() -> dict[str, Any]:
    rng = np.random.default_rng(0)

    def scenario(scale: float, **extra: Any) -> dict[str, Any]:
        lat = np.sort(rng.lognormal(np.log(scale), 0.3, 2000))
        return {"valid": True, "samples": 2000, "qps": 1000 / scale, "p50_ms": float(np.percentile(lat, 50)),
                "p90_ms": float(np.percentile(lat, 90)), "p99_ms": float(np.percentile(lat, 99)),
                "latencies_ms": lat.tolist(), **extra}

    search = [{"qps": q, "p99_ms": 2.0 + q / 50, "valid": 2.0 + q / 50 <= 10.0} for q in (100, 200, 400, 600)]
    search.append({"qps": 50.0, "p99_ms": 3.0, "valid": False})  # too few queries: invalid, yet under the bound
    return {
        "kind": "bench", "model": "cnn <test>", "target": "in-process", "artifact": "onnxruntime-fp32",
        "created": "2026-01-01T00:00:00+00:00", "settings": dict(BENCH_SETTINGS),
        "environment": {"machine": "x86_64", "cpu": "Test CPU", "cores": 2, "libraries": {"torch": "2.14.1"},
                        "gpu": "Test GPU"},
        "scenarios": {"SingleStream": scenario(1.0),
                      "MultiStream": scenario(4.0, samples_per_query=8, valid=False, checks=[
                          "Min duration satisfied : Yes", "Min queries satisfied : NO"]),
                      "Server": scenario(3.0, target_qps=400.0, latency_bound_ms=10.0, search=search),
                      "Offline": scenario(20.0, samples_per_s=5000.0)},
        "loadgen_logs": {"SingleStream": "logs/SingleStream/mlperf_log_summary.txt"},
    }


# Modelled on the digits demo (issue 18): 13 passed candidates with equal accuracy, three of them within 10 µs
# of each other, one rejected far below the rest, one failed build, two skipped; three packaged.
SYNTHETIC_P50_MS = (0.0558, 0.0601, 0.0652, 0.259, 0.272, 0.292, 0.330, 0.327, 0.412, 0.468, 0.513, 0.555, 0.625)
SYNTHETIC_KEYS = ("onnxruntime-int8-mode-static", "onnxruntime-int8-mode-dynamic", "onnxruntime-fp32",
                  "torchscript-fp32", "aoti-fp32", "openvino-fp32", "openvino-int8", "source-fp32",
                  "inductor-fp32-freezing", "torch-int8-int8-mode-static", "torch-int8-int8", "inductor-fp32",
                  "eager-fp32")
SYNTHETIC_BATCHES = (1, 2, 8, 32, 128)


def synthetic_optimize_report() -> dict[str, Any]:
    def accuracy(value: float) -> dict[str, Any]:
        return {"samples": 450, "decided_by": "accuracy drop", "accuracy": value, "reference_accuracy": 0.9844,
                "accuracy_drop": 0.9844 - value, "passed": value >= 0.9744, "cosine": 0.9999, "top1_agreement": 1.0,
                "score": value, "violations": [], "outputs": []}

    def bench(p50: float) -> dict[str, Any]:
        def at(batch: int) -> dict[str, Any]:
            ms = p50 * batch ** 0.6
            return {"batch_size": batch, "runs": 200, "p50_ms": ms, "p90_ms": 1.2 * ms, "p99_ms": 2.0 * ms,
                    "mean_ms": 1.1 * ms, "cv": 0.3, "throughput": 1000 * batch / ms}
        return {"latency": at(1), "sweep": [at(b) for b in SYNTHETIC_BATCHES], "threads": 2}

    def candidate(key: str, status: str, **fields: Any) -> dict[str, Any]:
        backend, precision = key.split("-")[:2]
        return {"key": key, "config": {"backend": backend, "precision": precision, "device": "cpu", "options": {}},
                "status": status, "reason": "", "build_seconds": None, "artifact_bytes": None,
                "artifact_details": None, "accuracy": None, "bench": None, **fields}

    candidates = [candidate(key, "passed", build_seconds=1.0 + i, artifact_bytes=200_000 * (i + 1),
                            artifact_details={"cache": "reused"} if i < 2 else {}, accuracy=accuracy(0.9844),
                            bench=bench(p50))
                  for i, (key, p50) in enumerate(zip(SYNTHETIC_KEYS, SYNTHETIC_P50_MS, strict=True))]
    candidates += [
        candidate("onnxruntime-int8-mode-static-per-tensor", "rejected", build_seconds=1.2, accuracy=accuracy(0.11),
                  bench=bench(0.05), reason="accuracy drop 87.44 points > 1.00"),
        candidate("openvino-int8-nncf", "failed", build_seconds=0.2, reason="build: <NNCF> gave up"),
        candidate("openvino-bf16", "skipped", reason="this CPU has no native bf16"),
        candidate("eager-bf16", "skipped", reason="this CPU has no native bf16")]
    return {
        "model": "digits", "created": "2026-12-03T12:40:13+00:00", "objective": "latency",
        "budget": {"max_accuracy_drop": 0.01, "min_cosine": 0.99, "min_top1_agreement": 0.99}, "task": "classify",
        "threads": 2, "batch_sizes": list(SYNTHETIC_BATCHES),
        "validation_data": {"origin": "factory digits", "samples": 450, "labels": True},
        "picked": SYNTHETIC_KEYS[0], "candidates": candidates, "notes": [], "environment": {"cores": 2},
        "packaged": [{"rank": 0, "key": SYNTHETIC_KEYS[0], "why": "the pick for latency"},
                     {"rank": 1, "key": SYNTHETIC_KEYS[3], "why": "what `inferforge export --format torchscript` "
                                                                 "copies"},
                     {"rank": 2, "key": SYNTHETIC_KEYS[4], "why": "a torch.export program"}]}


def assert_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "@import" not in page and "url(http" not in page


def test_optimize_page_has_every_candidate_reason_and_four_charts(optimize_report: dict[str, Any]) -> None:
    page = optimize_report_html(optimize_report)
    assert CHART.findall(page) == ["accuracy-latency", "latency-distribution", "throughput-batch", "build-time"]
    candidates = optimize_report["candidates"]
    rows = re.findall(r'<tr class="(passed|rejected|failed|skipped)[^"]*"><td class="num">(\d+)</td><td>([^<]+)</td>',
                      page)
    assert [(status, key) for status, _, key in rows] == [(c["status"], c["key"]) for c in candidates]
    rejected = [c for c in candidates if c["status"] == "rejected"]
    assert rejected, "FP32_EXACT should reject the INT8 and bf16 candidates"
    for c in rejected + [candidates[-1]]:
        assert c["reason"] and escape(c["reason"]) in page
    assert "&lt;NNCF&gt; could not quantize &amp; gave up" in page  # escaped, not markup
    assert re.search(rf'class="passed picked[^"]*"><td class="num">1</td><td>{optimize_report["picked"]}<', page)
    assert_self_contained(page)



REF = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [2.0, 1.0, 0.0]])


@pytest.mark.parametrize("labels, task", [(np.array([0, 1, 2, 0]), "auto"), (None, "classify"), (None, "generic")])
def test_each_deciding_figure_renders_the_same_in_markdown_terminal_and_html(labels: np.ndarray | None,
                                                                            task: str) -> None:
    """The terminal and Markdown read the search's objects, the HTML page its JSON report: one cell and one
    budget sentence for all three."""
    from inferforge.backends.base import BuildConfig
    from inferforge.data import Dataset
    from inferforge.options import SearchOptions
    from inferforge.report import (
        accuracy_cell,
        columns,
        leaderboard_rows,
        markdown_leaderboard,
        report_json,
        report_markdown,
    )
    from inferforge.search import CandidateResult, SearchResult, Status
    from inferforge.types import ModelSpec, TensorSpec
    from inferforge.validate import AccuracyBudget, DecidingFigure, Task, compare

    spec = ModelSpec((TensorSpec.parse("x:float32[B,4]"),), (TensorSpec.parse("logits:float32[B,3]"),))
    dataset = Dataset({"x": np.zeros((4, 4), np.float32)}, labels, "test")
    worse = REF.copy()
    worse[0] = [0.0, 3.0, 1.0]
    budget = AccuracyBudget(max_accuracy_drop=0.3, min_cosine=0.5, min_top1_agreement=0.7)
    accuracy = compare({"logits": REF}, {"logits": worse}, spec, dataset, Task(task), budget)
    result = SearchResult([CandidateResult(BuildConfig("eager"), Status.PASSED, accuracy=accuracy)],
                          SearchOptions(budget=budget, task=Task(task)), "eager-fp32")
    cell = accuracy_cell(accuracy.to_json())
    assert cell.startswith({DecidingFigure.ACCURACY_DROP: "acc 75.00%", DecidingFigure.TOP1_AGREEMENT:
                            "top1 agree 0.7500", DecidingFigure.COSINE: "cos 0.825"}[accuracy.decided_by])
    assert leaderboard_rows(result)[0][columns(result).index("accuracy")] == cell  # what rich_leaderboard draws
    assert f"| {cell} |" in markdown_leaderboard(result)
    page = optimize_report_html(json.loads(json.dumps(report_json(result, dataset, "m"), default=str)))  # as saved
    assert f"<td>{escape(cell)}</td>" in page
    assert f"- budget: {budget.describe()}" in report_markdown(result, dataset, "m")
    assert f"<dt>budget</dt><dd>{escape(budget.describe())}</dd>" in page

def test_bench_page_has_scenarios_and_charts() -> None:
    page = bench_report_html(synthetic_bench())
    assert CHART.findall(page) == ["latency-cdf", "server-search"]
    for name in ("SingleStream", "MultiStream", "Server", "Offline", "mlperf_log_summary.txt", "Test GPU"):
        assert name in page
    assert "cnn &lt;test&gt;" in page and "cnn <test>" not in page
    assert_self_contained(page)

    partial = synthetic_bench()
    del partial["scenarios"]["Server"], partial["scenarios"]["Offline"]
    assert CHART.findall(bench_report_html(partial)) == ["latency-cdf"]


def test_write_html_replaces_whole_file(tmp_path: Path) -> None:
    target = write_html("<p>old</p>", tmp_path / "sub" / "report.html")
    write_html("<p>new</p>", target)
    assert target.read_text(encoding="utf-8") == "<p>new</p>"
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temporary left behind


def browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def run_browser(*args: str) -> subprocess.CompletedProcess[str]:
    exe = browser()
    assert exe is not None
    return subprocess.run([exe, "--headless=new", "--no-sandbox", "--disable-gpu", *args], capture_output=True,
                          text=True, timeout=60, check=True)


SVG = "{http://www.w3.org/2000/svg}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
OPTIMIZE_CHARTS = ("accuracy-latency", "latency-distribution", "throughput-batch", "build-time")
BENCH_CHARTS = ("latency-cdf", "server-search")


def chart_svgs(page: str) -> dict[str, ET.Element]:
    """Each chart's inline SVG, parsed, by figure id."""
    return {m.group(1): ET.fromstring(m.group(2))
            for m in re.finditer(r'<figure class="chart" id="([^"]+)">(<svg\b.*?</svg>)', page, re.DOTALL)}


def captions(page: str) -> dict[str, str]:
    return {m.group(1): unescape(m.group(2)) for m in
            re.finditer(r'<figure class="chart" id="([^"]+)">.*?<figcaption>(.*?)</figcaption>', page, re.DOTALL)}


def group(svg: ET.Element, *ids: str) -> ET.Element | None:
    """The first ``<g>`` whose id is one of ``ids`` (our names first, then matplotlib's own)."""
    found = {g.get("id"): g for g in svg.iter(f"{SVG}g")}
    return next((found[i] for i in ids if i in found), None)


def shape(d: str) -> tuple[Any, ...]:
    """A path's shape whatever its place and size: its commands and its points scaled into [-1, 1]."""
    pts = np.array([float(v) for v in re.findall(r"-?\d+(?:\.\d*)?(?:e-?\d+)?", d)]).reshape(-1, 2)
    pts = pts - (pts.max(0) + pts.min(0)) / 2
    pts = pts / max(float(np.abs(pts).max()), 1e-9)
    return re.sub(r"[^A-Za-z]", "", d), tuple(np.round(pts, 1).ravel().tolist())


def style_of(element: ET.Element, prop: str) -> str | None:
    found = re.search(rf"(?:^|;)\s*{prop}:\s*([^;]+)", element.get("style", ""))
    return found.group(1).strip() if found else None


def drawn(svg: ET.Element, g: ET.Element) -> tuple[str | None, str | None, tuple[Any, ...] | None]:
    """(edge colour, fill, marker shape) of what a group draws: a marker used from the defs, else its own path."""
    defs = {p.get("id"): p.get("d", "") for p in svg.iter(f"{SVG}path") if p.get("id")}
    use = next(g.iter(f"{SVG}use"), None)
    if use is not None:
        return style_of(use, "stroke"), style_of(use, "fill"), shape(defs[use.get(XLINK_HREF, "").lstrip("#")])
    path = next(g.iter(f"{SVG}path"), None)
    if path is None:
        return None, None, None
    is_marker = (g.get("id") or "").startswith("PathCollection") or "-series-" in (g.get("id") or "")
    return style_of(path, "stroke"), style_of(path, "fill"), shape(path.get("d", "")) if is_marker else None


def marks(g: ET.Element) -> int:
    """How many markers a scatter group draws (matplotlib writes a few as paths, many as uses of one def)."""
    return len(list(g.iter(f"{SVG}use"))) or len(list(g.iter(f"{SVG}path")))


def legend_entries(svg: ET.Element, chart: str) -> list[tuple[str, str | None, tuple[Any, ...] | None]]:
    """(label, colour, marker shape) per legend entry: a legend lists each handle's groups, then its text."""
    legend = group(svg, f"{chart}-legend", "legend_1")
    assert legend is not None, f"{chart}: no legend"
    entries, handle = [], []
    for child in legend:
        text = "".join(t for t in child.itertext()).strip() if child.find(f".//{SVG}text") is not None else None
        if text is None:
            handle.append(child)
            continue
        styles = [drawn(svg, h) for h in handle]
        marker = next((st for st in styles if st[2] is not None), styles[-1] if styles else (None, None, None))
        entries.append((text, marker[0] or marker[1], marker[2]))
        handle = []
    return entries


def axis_ticks(svg: ET.Element, chart: str, axis: str) -> list[str]:
    g = group(svg, f"{chart}-{axis}-axis", f"matplotlib.axis_{'1' if axis == 'x' else '2'}")
    assert g is not None, f"{chart}: no {axis} axis"
    return ["".join(t.itertext()).strip() for t in g.iter(f"{SVG}text")]


def tick_number(text: str) -> float | None:
    try:
        return float(text.replace("\u2212", "-").replace(",", ""))
    except ValueError:
        return None


def test_every_candidate_has_its_own_colour_and_marker_in_every_chart_and_legend() -> None:
    report = synthetic_optimize_report()
    svgs = chart_svgs(optimize_report_html(report))
    rows = list(enumerate(report["candidates"], 1))
    row_of = {c["key"]: i for i, c in rows}
    drawn_rows = {"throughput-batch": [i for i, c in rows if c["status"] == "passed" and c["bench"]],
                  "accuracy-latency": [i for i, c in rows if c["accuracy"] and c["bench"]],
                  "latency-distribution": [i for i, c in rows if c["bench"]]}
    colour_of: dict[int, set[str | None]] = {}
    for chart, wanted in drawn_rows.items():
        svg = svgs[chart]
        # the legend names each candidate once ("#3 onnxruntime-fp32 (...)"), no two share a (colour, marker) pair
        if chart != "latency-distribution":  # that one names its rows on the axis, its legend says what it draws
            named = [(label, colour, marker) for label, colour, marker in legend_entries(svg, chart)
                     if (found := re.match(r"(?:#\d+ )?(\S+)", label)) and found.group(1) in row_of]
            assert sorted(row_of[re.sub(r"^#\d+ ", "", label).split()[0]] for label, _, _ in named) == wanted, \
                f"{chart}: the legend does not name each candidate drawn: {legend_entries(svg, chart)}"
            pairs = [(colour, marker) for _, colour, marker in named]
            assert all(m is not None for _, m in pairs), f"{chart}: a legend entry without a marker"
            assert len(set(pairs)) == len(pairs), f"{chart}: legend entries share a colour and marker: {named}"
        # and the series themselves, by group id
        series = {i: group(svg, f"{chart}-series-{i}") for i in wanted}
        assert all(g is not None for g in series.values()), f"{chart}: rows drawn without their series id"
        styles = {i: drawn(svg, g) for i, g in series.items() if g is not None}
        pairs = [(edge, marker) for edge, _, marker in styles.values()]
        assert len(set(pairs)) == len(pairs), f"{chart}: two candidates drawn alike: {styles}"
        for i, (edge, _, _) in styles.items():
            colour_of.setdefault(i, set()).add(edge)
    assert all(len(c) == 1 for c in colour_of.values()), f"a candidate changes colour between charts: {colour_of}"
    # the first ten rows differ in colour alone, so no two lines read the same (eager and onnxruntime were both
    # orange)
    first = [next(iter(colour_of[i])) for i in range(1, 11)]
    assert len(set(first)) == 10, first


def test_titles_legends_units_and_the_batch_size_axis() -> None:
    report = synthetic_optimize_report()
    page = optimize_report_html(report)
    svgs = chart_svgs(page)
    # the batch-size axis is logarithmic and ticks every batch size measured
    ticks = [tick_number(t) for t in axis_ticks(svgs["throughput-batch"], "throughput-batch", "x")]
    assert [t for t in ticks if t is not None] == list(SYNTHETIC_BATCHES), ticks
    # accuracy: the chart's axis in the table's unit (percent), and its ticks around the table's figure
    assert "acc 98.44%" in page
    label = "".join(axis_ticks(svgs["accuracy-latency"], "accuracy-latency", "y"))
    assert "(%)" in label, label
    values = [v for t in axis_ticks(svgs["accuracy-latency"], "accuracy-latency", "y") if (v := tick_number(t))]
    step = values[1] - values[0]
    assert min(values) - step <= 98.44 <= max(values) + step, f"accuracy ticks {values} are not in percent"
    for chart, svg in {**svgs, **chart_svgs(bench_report_html(synthetic_bench()))}.items():
        assert legend_entries(svg, chart), f"{chart}: an empty legend"
        title = group(svg, f"{chart}-title")
        assert title is not None and "".join(title.itertext()).strip(), f"{chart}: no title"


def test_packaged_artifacts_are_marked_on_the_page_and_the_chart() -> None:
    report = synthetic_optimize_report()
    page = optimize_report_html(report)
    for entry in report["packaged"]:
        row = re.search(rf'<tr class="([^"]*)"><td class="num">\d+</td><td>{re.escape(entry["key"])}</td>(.*?)</tr>',
                        page)
        assert row and "packaged" in row.group(1).split(), entry
        assert f"<td>rank {entry['rank']}: {escape(entry['why'])}</td>" in row.group(2)
    summary = re.search(r"<dt>packaged</dt><dd>(.*?)</dd>", page)
    assert summary and all(f"{e['key']} (rank {e['rank']})" in summary.group(1) for e in report["packaged"])
    svg = chart_svgs(page)["accuracy-latency"]
    ring = group(svg, "accuracy-latency-packaged")
    assert ring is not None and marks(ring) == len(report["packaged"])
    labels = {label.split()[0]: label for label, _, _ in legend_entries(svg, "accuracy-latency")}
    keys = [c["key"] for c in report["candidates"]]
    for entry in report["packaged"][1:]:
        assert f"(packaged, rank {entry['rank']})" in labels[f"#{keys.index(entry['key']) + 1}"]
    assert "(picked)" in labels["#1"] and "packaged" in labels
    # a report written before packages recorded it says so rather than marking nothing silently
    del report["packaged"]
    assert "<dt>packaged</dt><dd>not recorded in this report</dd>" in optimize_report_html(report)


def test_captions_say_what_the_markers_show() -> None:
    report = synthetic_optimize_report()
    page = optimize_report_html(report)
    svg, caption = chart_svgs(page)["accuracy-latency"], captions(page)["accuracy-latency"]
    assert "hollow" in caption and "filled" in caption.lower() and "ring" in caption
    for i, c in enumerate(report["candidates"], 1):
        g = group(svg, f"accuracy-latency-series-{i}")
        if g is None:
            continue
        edge, fill, _ = drawn(svg, g)
        assert (fill == edge) if c["status"] == "passed" else (fill == "none"), (c["key"], edge, fill)

    bench = synthetic_bench()
    page = bench_report_html(bench)
    svg, caption = chart_svgs(page)["server-search"], captions(page)["server-search"]
    server = bench["scenarios"]["Server"]
    bound = server["latency_bound_ms"]
    expected = {"valid": sum(p["valid"] for p in server["search"]),
                "over-bound": sum(not p["valid"] and p["p99_ms"] > bound for p in server["search"]),
                "other-check": sum(not p["valid"] and p["p99_ms"] <= bound for p in server["search"])}
    assert all(expected.values()), "the synthetic search should have each kind of point"
    for kind, count in expected.items():
        g = group(svg, f"server-search-{kind}")
        assert g is not None and marks(g) == count, (kind, count)
    for label, _, _ in legend_entries(svg, "server-search"):
        assert label.startswith("latency bound") or label in caption, (label, caption)


def test_bench_page_lists_its_settings_and_why_a_scenario_is_invalid() -> None:
    page = bench_report_html(synthetic_bench())
    settings = re.search(r'<section id="settings">(.*?)</section>', page)
    assert settings, "no settings section"
    for name, shown in BENCH_SETTINGS_SHOWN:
        assert f"<dt>{name}</dt><dd>{shown}</dd>" in settings.group(1), (name, shown)
    multi = re.search(r"<tr class=\"failed\"><td>MultiStream</td>(.*?)</tr>", page)
    assert multi and "Min queries satisfied : NO" in multi.group(1)
    assert "latency bound 10 ms" in page  # the Server row's detail, with its unit


# Run in the page once it has loaded: every chart text's box as the browser lays it out, with its groups' ids.
MEASURE = """<script>window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll("figure.chart").forEach(function (fig) {
    fig.querySelectorAll("svg text").forEach(function (t) {
      var r = t.getBoundingClientRect(), ids = [];
      for (var e = t.parentElement; e && e.tagName !== "svg"; e = e.parentElement) { if (e.id) { ids.push(e.id); } }
      out.push([fig.id, t.textContent, r.left, r.top, r.width, r.height, ids]);
    });
  });
  document.body.dataset.texts = JSON.stringify(out);
});</script>"""


def rendered(page: str, path: Path) -> tuple[dict[str, str], list[list[Any]]]:
    """The page's body data attributes and its chart texts' boxes, as headless Chromium lays them out."""
    write_html(page.replace("</body>", MEASURE + "</body>"), path)
    dom = run_browser("--dump-dom", path.as_uri()).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attrs = {k: unescape(v) for k, v in re.findall(r'data-(\w+)="([^"]*)"', body.group(1))}
    return attrs, json.loads(attrs.get("texts", "[]"))


def overlapping(texts: list[list[Any]]) -> list[tuple[str, str, str]]:
    """Pairs of texts of one chart whose boxes overlap by more than a pixel each way."""
    boxes = [(chart, text, x, y, w, h) for chart, text, x, y, w, h, _ in texts if text.strip() and w and h]
    return [(a[0], a[1], b[1]) for a, b in itertools.combinations(boxes, 2) if a[0] == b[0]
            and min(a[2] + a[4], b[2] + b[4]) - max(a[2], b[2]) > 1 and min(a[3] + a[5], b[3] + b[5]) - max(a[3], b[3]) > 1]


@pytest.mark.skipif(browser() is None, reason="no headless browser: `apt-get install chromium` (make test does)")
def test_pages_render_in_a_headless_browser(optimize_report: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    pages = {"report": optimize_report_html(optimize_report),
             "synthetic": optimize_report_html(synthetic_optimize_report()),
             "bench": bench_report_html(synthetic_bench())}
    for name, page in pages.items():
        attrs, texts = rendered(page, tmp_path / f"{name}.html")
        assert attrs.get("ready") == "1", attrs
        assert attrs.get("charts") == str(len(CHART.findall(page))), attrs
        assert not attrs.get("errors"), attrs["errors"]
        # no two labels, ticks, legend entries or titles of one chart cover each other ("#8#9")
        assert not overlapping(texts), f"{name}: overlapping chart texts: {overlapping(texts)}"
        if name == "synthetic":
            # the batch-size axis as drawn: ticks evenly spaced in log(batch), not in batch
            ticks = [(v, x + w / 2) for chart, text, x, _, w, _, ids in texts
                     if chart == "throughput-batch" and any(i in ("throughput-batch-x-axis", "matplotlib.axis_1")
                                                             for i in ids) and (v := tick_number(text))]
            sizes, centres = np.array(ticks).T
            assert np.corrcoef(np.log(sizes), centres)[0, 1] > 0.999, ticks
            assert np.corrcoef(sizes, centres)[0, 1] < 0.99, ticks
            labels = [text for chart, text, *_ in texts if chart == "accuracy-latency" and text.startswith("#")]
            assert {f"#{i}" for i in range(1, 15)} <= {t.split()[0] for t in labels}, labels

    shot = tmp_path / "report.png"
    run_browser(f"--screenshot={shot}", "--window-size=1280,2400", (tmp_path / "report.html").as_uri())
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50 and pixels.std() > 10, "the screenshot looks blank"
    keep = Path(os.environ.get("INFERFORGE_SCREENSHOT_DIR", tmp_path))
    keep.mkdir(parents=True, exist_ok=True)
    if keep != tmp_path:
        shutil.copy(shot, keep / "report.png")
