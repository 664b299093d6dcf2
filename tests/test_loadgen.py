"""inferforge bench: MLPerf LoadGen's four scenarios in-process and against a running server."""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from serve_helpers import serving, wait_until

from inferforge.cli import main
from inferforge.serve.loadgen import SCENARIOS, LoadgenSettings, bench
from inferforge.serve.loadgen_target import Target

# Short runs: enough queries for LoadGen's early-stopping minimums, not figures.
QUICK = LoadgenSettings(duration_s=0.5, search_steps=2, search_duration_s=0.3, samples=64, max_batch=8,
                        concurrency=2)


def _check_scenarios(document: dict, out: Path, settings: LoadgenSettings = QUICK) -> None:
    scenarios = document["scenarios"]
    assert list(scenarios) == list(SCENARIOS)
    for name, result in scenarios.items():
        summary = Path(document["loadgen_logs"][name])
        assert summary.is_file() and f"Scenario : {name}" in summary.read_text()  # LoadGen's own summary kept
        assert result["samples"] > 0 and result["p50_ms"] > 0 and result["p99_ms"] >= result["p50_ms"], name
        assert "errors" not in result, result.get("errors")
    assert scenarios["SingleStream"]["valid"], scenarios["SingleStream"]["checks"]
    assert scenarios["Offline"]["samples_per_s"] > 0
    assert scenarios["MultiStream"]["samples_per_query"] == settings.samples_per_query
    server = scenarios["Server"]
    assert len(server["search"]) >= QUICK.search_steps and server["latency_bound_ms"] == QUICK.latency_bound_ms
    assert json.loads((out / "bench.json").read_text())["scenarios"].keys() == scenarios.keys()


def test_bench_in_process_runs_the_four_scenarios(mlp_package: Path, tmp_path: Path) -> None:
    document = bench(mlp_package, settings=QUICK, out=tmp_path, progress=lambda _: None)
    assert document["target"] == "in-process" and document["artifact"]
    _check_scenarios(document, tmp_path)


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_bench_against_a_running_server(mlp_package: Path, tmp_path: Path, scheme: str) -> None:
    with serving(mlp_package, grpc_port=0) as server:
        url = f"{scheme}://127.0.0.1:{server.server.ports[scheme]}"
        package = mlp_package if scheme == "grpc" else None  # gRPC has no metadata shortcut: the spec comes from it
        # The served package batches at most 4 rows a request: queries are split to that size.
        settings = replace(QUICK, max_batch=4, samples_per_query=4)
        document = bench(package, url=url, model="mlp", settings=settings, out=tmp_path, progress=lambda _: None)
    assert document["target"] == url
    _check_scenarios(document, tmp_path, settings)


def test_bench_cli_writes_json_and_the_html_report(mlp_package: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code = main(["bench", str(mlp_package), "--scenarios", "SingleStream,Offline", "--duration", "0.3",
                 "--out", str(out), "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document["scenarios"]) == {"SingleStream", "Offline"}
    html = (out / "report.html").read_text()
    assert "<svg" in html and "SingleStream" in html


@pytest.mark.parametrize("args, fragment", [
    (["bench"], "give a package folder, or --url"),
    (["bench", "nowhere.inferforge"], "does not exist"),
    (["bench", "--url", "ftp://x"], "expected http://HOST:PORT or grpc://HOST:PORT"),
    (["bench", "--url", "http://127.0.0.1:1"], "needs --model NAME"),
    (["bench", "--url", "http://127.0.0.1:1", "--model", "m"], "cannot reach 127.0.0.1:1"),
])
def test_bench_bad_input_is_one_clear_line(args: list[str], fragment: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err


def test_unknown_scenario_is_refused(mlp_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", str(mlp_package), "--scenarios", "Batch", "--out", str(tmp_path)]) == 2
    assert "unknown scenario(s) ['Batch']" in capsys.readouterr().err


class _HeldInstance:
    """An instance whose first batch waits for the test, so later queries must queue behind it."""

    def __init__(self, fail: bool = False) -> None:
        self.release, self.entered = threading.Event(), threading.Event()
        self.batches: list[int] = []
        self.fail = fail
        self._thread = ThreadPoolExecutor(1)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(len(inputs["x"]))
        self.entered.set()
        if not self.release.wait(30):
            raise TimeoutError("the test never released the instance")
        if self.fail:
            raise RuntimeError("kernel crashed")
        return {"y": inputs["x"] * 2}

    def submit(self, inputs: dict[str, np.ndarray]) -> Future[dict[str, np.ndarray]]:
        return self._thread.submit(self.run, inputs)

    def close(self) -> None:
        self._thread.shutdown()


@pytest.mark.parametrize("fail", [False, True])
def test_in_process_queries_queue_on_the_server_s_batcher(monkeypatch: pytest.MonkeyPatch, fail: bool) -> None:
    """LoadGen's in-process runs batch as the server does: whatever queued, never above max_batch samples;
    every sample completes, and a failing batch marks the run instead of hanging it."""
    import mlperf_loadgen as lg

    completed: list[int] = []
    monkeypatch.setattr(lg, "QuerySamplesComplete", completed.extend)
    monkeypatch.setattr(lg, "QuerySampleResponse", lambda sample_id, data, size: sample_id)
    instance = _HeldInstance(fail)
    system = Target.in_process(instance).system({"x": np.arange(16, dtype=np.float32)[:, None]}, 4)
    try:
        system.issue([SimpleNamespace(id=0, index=0)])
        assert instance.entered.wait(30), "the first query never reached the instance"
        for i in range(1, 11):  # ten one-sample queries, as LoadGen's Server scenario issues them
            system.issue([SimpleNamespace(id=i, index=i)])
        wait_until(lambda: system._batcher.queued_rows == 10, what="ten samples queued")  # type: ignore[attr-defined]
        instance.release.set()
        wait_until(lambda: len(completed) == 11, what="every sample completed")
    finally:
        system.stop()
        instance.close()
    assert instance.batches == [1, 4, 4, 2]
    assert sorted(completed) == list(range(11)) and len(system.latencies) == 11
    assert bool(system.errors) == fail and all("kernel crashed" in e for e in system.errors)


TOO_SLOW_SUMMARY = """Result is : INVALID
  Performance constraints satisfied : NO
  Min duration satisfied : Yes
  Min queries satisfied : Yes
  Early stopping satisfied: NO
Recommendations:
 * Reduce target QPS to improve latency.
Early Stopping Result:
 * Run unsuccessful.
 * Processed 185 queries.
 * Would need to run at least 4469 more queries,
"""
TOO_FEW_SUMMARY = TOO_SLOW_SUMMARY.replace("Performance constraints satisfied : NO",
                                           "Performance constraints satisfied : Yes").replace(
    " * Reduce target QPS to improve latency.\n", "")


def test_loadgens_invalid_verdicts_are_told_apart_and_said_in_its_words() -> None:
    from inferforge.serve.loadgen import TOO_FEW_QUERIES, TOO_SLOW, invalid_reason

    verdict, words = invalid_reason(TOO_SLOW_SUMMARY, [])
    assert verdict == TOO_SLOW and words.startswith("Performance constraints, Early stopping not satisfied; ")
    assert "Reduce target QPS" in words and "4469 more queries" in words
    verdict, words = invalid_reason(TOO_FEW_SUMMARY, [])
    assert verdict == TOO_FEW_QUERIES and words.startswith("Early stopping not satisfied; ")
    assert "4469 more queries" in words and "Run unsuccessful" not in words
    assert invalid_reason(TOO_FEW_SUMMARY, ["HTTP 503"])[0] == "failed"


def test_the_server_search_never_lowers_the_rate_for_too_few_queries(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """LoadGen's early stopping needs a few hundred queries: at a low rate a short run cannot reach them, and a
    search that reads that as "too slow" halves down to nothing (issue 18: 0.6 QPS on MiniLM)."""
    from inferforge.serve import loadgen
    from inferforge.serve.loadgen import TOO_FEW_QUERIES, ScenarioResult

    tried: list[tuple[float, float]] = []

    def fake_run(scenario, target, inputs, count, settings, log_dir, single_s, qps):  # noqa: ANN001, ANN202
        tried.append((qps, settings.duration_s))
        enough = qps * settings.duration_s >= 300  # queries in the run
        if qps > 100:
            return ScenarioResult("Server", False, 10, qps, 1, 1, 99, extra={"verdict": "too slow"})
        if not enough:
            return ScenarioResult("Server", False, int(qps * settings.duration_s), qps, 1, 1, 1,
                                  extra={"verdict": TOO_FEW_QUERIES, "more_queries_needed": 300})
        return ScenarioResult("Server", True, 300, qps, 1, 1, 1)

    monkeypatch.setattr(loadgen, "_run", fake_run)
    settings = LoadgenSettings(duration_s=5.0, search_steps=5, search_duration_s=1.0)
    offline = ScenarioResult("Offline", True, 100, 50.0, 1, 1, 1)
    result = loadgen._server_search(None, {}, 1, settings, tmp_path, 0.01, offline, lambda _: None)  # type: ignore[arg-type]
    search = result.extra["search"]
    assert not [e for e in search if e["qps"] <= 100 and e["verdict"] != "valid"], search
    assert result.valid and result.extra["target_qps"] == 100, search
    assert any(duration > settings.search_duration_s for _, duration in tried)  # ran longer for the queries
