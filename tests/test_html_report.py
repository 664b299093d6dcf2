"""The HTML reports: one self-contained file each, with every candidate and reason, and charts a browser draws."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html import escape
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


def synthetic_bench() -> dict[str, Any]:
    rng = np.random.default_rng(0)

    def scenario(scale: float, **extra: Any) -> dict[str, Any]:
        lat = np.sort(rng.lognormal(np.log(scale), 0.3, 2000))
        return {"valid": True, "samples": 2000, "qps": 1000 / scale, "p50_ms": float(np.percentile(lat, 50)),
                "p90_ms": float(np.percentile(lat, 90)), "p99_ms": float(np.percentile(lat, 99)),
                "latencies_ms": lat.tolist(), **extra}

    search = [{"qps": q, "p99_ms": 2.0 + q / 50, "valid": 2.0 + q / 50 <= 10.0} for q in (100, 200, 400, 600)]
    return {
        "kind": "bench", "model": "cnn <test>", "target": "in-process", "artifact": "onnxruntime-fp32",
        "created": "2026-01-01T00:00:00+00:00",
        "environment": {"machine": "x86_64", "cpu": "Test CPU", "cores": 2, "libraries": {"torch": "2.14.1"},
                        "gpu": "Test GPU"},
        "scenarios": {"SingleStream": scenario(1.0), "MultiStream": scenario(4.0, samples_per_query=8),
                      "Server": scenario(3.0, target_qps=400.0, latency_bound_ms=10.0, search=search),
                      "Offline": scenario(20.0, samples_per_s=5000.0)},
        "loadgen_logs": {"SingleStream": "logs/SingleStream/mlperf_log_summary.txt"},
    }


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
    assert f'class="passed picked"><td class="num">1</td><td>{optimize_report["picked"]}<' in page
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


@pytest.mark.skipif(browser() is None, reason="no headless browser: `apt-get install chromium` (make test does)")
def test_pages_render_in_a_headless_browser(optimize_report: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    for name, page in (("report", optimize_report_html(optimize_report)), ("bench", bench_report_html(synthetic_bench()))):
        path = write_html(page, tmp_path / f"{name}.html")
        dom = run_browser("--dump-dom", path.as_uri()).stdout
        body = re.search(r"<body([^>]*)>", dom)
        assert body, dom[:500]
        attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))
        assert attrs.get("ready") == "1", attrs
        assert attrs.get("charts") == str(len(CHART.findall(page))), attrs
        assert not attrs.get("errors"), attrs["errors"]

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
