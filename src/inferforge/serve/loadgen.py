"""MLPerf LoadGen scenarios against a package in-process or a running ``inferforge serve``.

LoadGen (``mlcommons-loadgen``) decides when each query is issued and judges the run,
exactly as in MLPerf Inference; inferforge only supplies the system under test:

- SingleStream: one sample at a time, the next issued when the last completes (p90 latency).
- MultiStream: queries of ``samples_per_query`` samples, one after another (p99 per query).
- Server: Poisson arrivals at a target QPS; a query is late past ``latency_bound_ms``. A search
  runs it at rising and halving rates to find the highest QPS whose p99 stays under the bound.
- Offline: every sample at once (peak throughput).

In-process, the runner lives on an instance's own thread (the thread rule of ``serve/instances.py``)
and queries queue on the server's own ``DynamicBatcher``, which runs whatever has queued, up to
``max_batch`` samples, as one batch: Server and Offline measure what a batching server would do.
Against a URL, ``concurrency`` threads each send one query per request; the server batches. LoadGen's own logs (``mlperf_log_summary.txt``
and ``mlperf_log_detail.txt``) are kept per scenario next to our JSON.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.errors import InferforgeError, SpecError
from inferforge.serve.loadgen_target import Predict, SystemUnderTest, Target
from inferforge.serve.remote import RemoteModel, numpy_dtype

SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
EARLY_STOPPING_QUERIES = {"SingleStream": 64, "MultiStream": 662}
MAX_KEPT_LATENCIES = 5000
FINAL_SERVER_TRIES = 3  # per scenario, for the report's distribution chart



@dataclass(frozen=True)
class LoadgenSettings:
    scenarios: tuple[str, ...] = SCENARIOS
    duration_s: float = 5.0  # minimum duration of each scenario run
    latency_bound_ms: float = 50.0  # Server: a query later than this counts against the p99
    samples_per_query: int = 8  # MultiStream
    max_batch: int = 32  # in-process dynamic batching limit
    concurrency: int = 8  # remote: requests in flight
    search_steps: int = 6  # Server: runs spent looking for the highest valid QPS
    search_duration_s: float = 2.0
    samples: int = 256  # distinct samples LoadGen draws from

    def __post_init__(self) -> None:
        wrong = [f"{name} is {getattr(self, name)}" for name in ("duration_s", "latency_bound_ms", "samples_per_query",
                                                                 "max_batch", "concurrency", "search_steps",
                                                                 "search_duration_s", "samples")
                 if getattr(self, name) <= 0]
        if wrong:
            raise SpecError("LoadgenSettings: each must be positive: " + "; ".join(wrong))


@dataclass
class ScenarioResult:
    scenario: str
    valid: bool
    samples: int
    qps: float  # queries per second LoadGen reports (samples/s for Offline)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    latencies_ms: list[float] = field(default_factory=list)  # as our SUT saw them, issue to completion
    extra: dict[str, Any] = field(default_factory=dict)
    log_dir: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(data.pop("extra"))
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in data.items()}


def run_scenarios(target: Target, inputs: Mapping[str, np.ndarray], settings: LoadgenSettings,
                  out_dir: Path, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Every requested scenario (Server with its QPS search) through LoadGen; results keyed by scenario."""
    unknown = set(settings.scenarios) - set(SCENARIOS)
    if unknown:
        raise InferforgeError(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    _import_loadgen()
    count = len(next(iter(inputs.values())))
    single_s = _fastest_call(target.predict, {k: v[:1] for k, v in inputs.items()})  # also the warm-up
    batch_s = _fastest_call(target.predict, {k: v[:settings.max_batch] for k, v in inputs.items()})
    # Offline: LoadGen issues about expected QPS x duration samples, so too low a guess ends the run early.
    offline_qps = 1.5 * target.parallel * min(settings.max_batch, count) / batch_s
    results: dict[str, ScenarioResult] = {}
    for scenario in settings.scenarios:
        if scenario == "Server":
            continue  # after Offline, which tells the search where to start
        progress(f"LoadGen {scenario}: about {expected_seconds(scenario, settings, single_s):.0f} s for a VALID run"
                 + (f" ({EARLY_STOPPING_QUERIES[scenario]} queries)" if scenario in EARLY_STOPPING_QUERIES else ""))
        results[scenario] = _run(scenario, target, inputs, count, settings, out_dir / scenario, single_s,
                                 qps=offline_qps if scenario == "Offline" else None)
    if "Server" in settings.scenarios:
        results["Server"] = _server_search(target, inputs, count, settings, out_dir, single_s,
                                           results.get("Offline"), progress)
    return {name: results[name].to_json() for name in SCENARIOS if name in results}


def _server_search(target: Target, inputs: Mapping[str, np.ndarray], count: int,
                   settings: LoadgenSettings, out_dir: Path, single_s: float,
                   offline: ScenarioResult | None, progress: Callable[[str], None]) -> ScenarioResult:
    """Highest valid QPS: start from Offline's rate (or 1/latency), halve on failure, bisect after."""
    quick = replace(settings, duration_s=settings.search_duration_s)
    qps = 0.8 * (offline.qps if offline else 1.0 / single_s)
    good: float | None = None
    bad: float | None = None
    search: list[dict[str, Any]] = []
    best: ScenarioResult | None = None
    for step in range(settings.search_steps):
        progress(f"LoadGen Server search {step + 1}/{settings.search_steps}: {qps:.1f} QPS")
        trial = _run("Server", target, inputs, count, quick, out_dir / f"Server-search-{step + 1}", single_s,
                     qps=qps)
        verdict = "valid" if trial.valid else trial.extra.get("verdict", TOO_SLOW)
        if verdict == TOO_FEW_QUERIES and "more_queries_needed" in trial.extra:
            # Run long enough for the queries LoadGen asked for, once, up to the full scenario's length.
            longer = min(settings.duration_s * 4, (trial.samples + trial.extra["more_queries_needed"]) * 1.2 / qps)
            progress(f"LoadGen Server search {step + 1}: too few queries at {qps:.1f} QPS; again for {longer:.1f} s")
            trial = _run("Server", target, inputs, count, replace(quick, duration_s=max(longer, quick.duration_s)),
                         out_dir / f"Server-search-{step + 1}-longer", single_s, qps=qps)
            verdict = "valid" if trial.valid else trial.extra.get("verdict", TOO_SLOW)
        search.append({"qps": round(qps, 3), "p99_ms": trial.p99_ms, "valid": trial.valid, "verdict": verdict})
        if trial.valid:
            good = qps
        elif verdict != TOO_FEW_QUERIES:  # too few queries says nothing about speed: never lower the rate for it
            bad = qps
        qps = (good + bad) / 2 if good is not None and bad is not None else (qps * 2 if bad is None else qps / 2)
    if good is None:  # nothing met the bound: report the lowest rate tried, marked invalid
        good = float(min(s["qps"] for s in search))
    for attempt in range(FINAL_SERVER_TRIES):  # a full-length run can miss where a short one passed: step down
        progress(f"LoadGen Server at {good:.1f} QPS (final run)")
        best = _run("Server", target, inputs, count, settings, out_dir / "Server", single_s, qps=good)
        if best.valid or attempt == FINAL_SERVER_TRIES - 1:
            break
        search.append({"qps": round(good, 3), "p99_ms": best.p99_ms, "valid": False,
                       "verdict": best.extra.get("verdict", TOO_SLOW)})
        good *= 0.8
    assert best is not None
    best.extra.update({"target_qps": round(good, 3), "latency_bound_ms": settings.latency_bound_ms,
                       "search": search})
    return best


def _fastest_call(predict: Predict, batch: Mapping[str, np.ndarray], calls: int = 5) -> float:
    """Seconds of the fastest of a few calls: what LoadGen is told to expect (the first calls warm up)."""
    best = float("inf")
    for _ in range(calls):
        started = time.perf_counter()
        predict(batch)
        best = min(best, time.perf_counter() - started)
    return max(1e-5, best)


def _run(scenario: str, target: Target, inputs: Mapping[str, np.ndarray], count: int,
         settings: LoadgenSettings, log_dir: Path, single_s: float, qps: float | None) -> ScenarioResult:
    lg = _import_loadgen()
    test = lg.TestSettings()
    test.scenario = getattr(lg.TestScenario, scenario)
    test.mode = lg.TestMode.PerformanceOnly
    test.min_duration_ms = int(settings.duration_s * 1000)
    test.max_duration_ms = int(1000 * max_duration_s(scenario, settings, single_s))
    # MLPerf's own minimums are for hour-long runs; these are the fewest queries LoadGen's early-stopping
    # check accepts for the percentile each scenario reports, so a short run can still be VALID.
    test.min_query_count = EARLY_STOPPING_QUERIES.get(scenario, 1)
    # Underestimated on purpose: LoadGen pre-generates duration / expected latency queries, and too few
    # leave the minimum duration unmet.
    expected_ns = max(1000, int(single_s * 1e9 / 4))
    test.single_stream_expected_latency_ns = expected_ns
    test.multi_stream_samples_per_query = settings.samples_per_query
    test.multi_stream_expected_latency_ns = expected_ns
    test.offline_expected_qps = max(1.0, qps or 1.0)
    test.server_target_latency_ns = int(settings.latency_bound_ms * 1e6)
    test.server_target_qps = max(0.1, qps or 1.0)
    test.performance_sample_count_override = count
    log_dir.mkdir(parents=True, exist_ok=True)
    log = lg.LogSettings()
    log.log_output.outdir = str(log_dir)
    log.log_output.copy_summary_to_stdout = False
    log.enable_trace = False
    sut_impl = target.system(inputs, settings.max_batch)
    sut = lg.ConstructSUT(sut_impl.issue, sut_impl.flush)
    qsl = lg.ConstructQSL(count, count, lambda _: None, lambda _: None)
    try:
        lg.StartTestWithLogSettings(sut, qsl, test, log)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
        sut_impl.stop()
    return _result(scenario, log_dir, sut_impl)


def expected_seconds(scenario: str, settings: LoadgenSettings, single_s: float) -> float:
    """About how long a VALID run of ``scenario`` takes: its minimum duration, or the queries LoadGen's
    early-stopping check needs at one query's expected time (MultiStream: 662 queries of
    ``samples_per_query`` samples, each about that many single calls at worst), whichever is longer."""
    per_query = single_s * (settings.samples_per_query if scenario == "MultiStream" else 1)
    return max(settings.duration_s, EARLY_STOPPING_QUERIES.get(scenario, 0) * per_query)


def max_duration_s(scenario: str, settings: LoadgenSettings, single_s: float) -> float:
    """Room for the queries a VALID run needs (``expected_seconds``), and four minimum durations at least: a
    run cut off before them is INVALID for lack of queries, not for speed (MultiStream at 5 s ran 70 of the
    662 queries it needs)."""
    return max(4 * settings.duration_s, 2 * expected_seconds(scenario, settings, single_s))


def _result(scenario: str, log_dir: Path, sut: SystemUnderTest) -> ScenarioResult:
    """LoadGen's verdict and figures from its summary; our own per-sample latencies for the charts."""
    summary = (log_dir / "mlperf_log_summary.txt").read_text()

    def figure(pattern: str) -> float:
        match = re.search(pattern + r"\s*:\s*([\d.eE+]+)", summary)
        return float(match.group(1)) if match else float("nan")

    latencies = sorted(sut.latencies)
    kept = latencies[:: max(1, len(latencies) // MAX_KEPT_LATENCIES)][:MAX_KEPT_LATENCIES]
    qps = {"Offline": lambda: figure(r"Samples per second"), "Server": lambda: figure(r"Completed samples per second"),
           "SingleStream": lambda: figure(r"QPS w/o loadgen overhead"),
           # LoadGen reports no rate for MultiStream (its metric is the per-query p99): samples/s as we saw it
           "MultiStream": lambda: len(latencies) / max(1e-9, sut.last_done - sut.first_issue)}[scenario]()
    extra: dict[str, Any] = {}
    if scenario == "MultiStream":
        extra["samples_per_query"] = int(figure(r"samples_per_query"))
    if scenario == "Offline":
        extra["samples_per_s"] = qps
    if sut.errors:
        extra["errors"] = sut.errors[:5]
    # LoadGen's reasons for its verdict (min duration, min queries, early stopping, latency bound).
    extra["checks"] = [line.strip() for line in summary.splitlines() if "satisfied" in line or "constraint" in line]
    valid = "Result is : VALID" in summary and not sut.errors
    if not valid:
        extra["verdict"], extra["invalid_reason"] = invalid_reason(summary, sut.errors)
        needed = re.search(r"Would need to run at least (\d+) more queries", summary)
        if needed:
            extra["more_queries_needed"] = int(needed.group(1))
    return ScenarioResult(scenario, valid, len(latencies), qps, figure(r"50.00 percentile latency \(ns\)") / 1e6,
                          figure(r"90.00 percentile latency \(ns\)") / 1e6,
                          figure(r"99.00 percentile latency \(ns\)") / 1e6, [round(x, 4) for x in kept], extra,
                          str(log_dir))


TOO_SLOW = "too slow"  # the latency bound (Server) was missed: a lower rate may pass
TOO_FEW_QUERIES = "too few queries"  # the run ended before LoadGen could judge its percentile: run longer


def invalid_reason(summary: str, errors: list[str]) -> tuple[str, str]:
    """Why LoadGen called a run INVALID, from its summary: (TOO_SLOW, TOO_FEW_QUERIES or "failed", LoadGen's
    own words). A Server search must not take "too few queries for a valid run" for "too slow"."""
    if errors:
        return "failed", f"requests failed: {errors[0]}"
    failed = [line.split(":")[0].strip().removesuffix(" satisfied") for line in summary.splitlines()
              if "satisfied" in line and line.rstrip().endswith("NO")]
    recommendations = []
    if "Recommendations:" in summary:
        for line in summary.split("Recommendations:", 1)[1].splitlines()[1:]:
            if not line.strip().startswith("*"):
                break
            recommendations.append(line.strip(" *"))
    needed = re.search(r"Would need to run at least (\d+) more queries", summary)
    words = "; ".join([f"{', '.join(failed)} not satisfied" if failed else "INVALID",
                       *(r for r in recommendations if r),
                       *([f"LoadGen would need at least {needed.group(1)} more queries"] if needed else [])])
    if "Performance constraints" in failed:
        return TOO_SLOW, words
    return TOO_FEW_QUERIES, words


def _import_loadgen() -> Any:
    try:
        import mlperf_loadgen
    except ImportError as exc:
        raise InferforgeError("MLPerf LoadGen is not installed: pip install mlcommons-loadgen") from exc
    return mlperf_loadgen


def bench(package: Path | None, *, url: str | None = None, model: str | None = None, data: str | None = None,
          settings: LoadgenSettings = LoadgenSettings(), out: Path, token: str | None = None,
          threads: int | None = None, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the scenarios on a package in-process, or on ``url`` (the package, if given, supplies the spec).
    Writes LoadGen's logs and ``bench.json`` under ``out``; returns the JSON document."""
    from datetime import UTC, datetime

    from inferforge.environment import fingerprint
    from inferforge.manifest import read_manifest

    if package is None and url is None:
        raise InferforgeError("give a package folder, or --url of a running inferforge serve")
    if url is not None:
        RemoteModel(url, model or "", token)  # a malformed URL fails before anything else is read
    manifest = read_manifest(package) if package is not None else None
    spec = _spec(manifest, url, model, token)
    inputs = _inputs(spec, data, settings.samples)
    out.mkdir(parents=True, exist_ok=True)
    if url is not None:
        remote = RemoteModel(url, model or (manifest["model"] if manifest else ""), token)
        artifact, target = "as served", url
        scenarios = run_scenarios(Target.remote(remote.predict, settings.concurrency), inputs, settings, out,
                                  progress=progress)
    else:
        from inferforge.package import load
        from inferforge.serve.instances import ThreadInstance

        assert package is not None and manifest is not None
        instance = ThreadInstance(lambda: load(package, threads=threads))  # loaded and run on its own thread
        try:
            artifact, target = instance.runner.artifact.config.key(), "in-process"
            scenarios = run_scenarios(Target.in_process(instance), inputs, settings, out, progress=progress)
        finally:
            instance.close()
    document = {
        "kind": "bench", "model": model or (manifest["model"] if manifest else ""), "target": target,
        "artifact": artifact, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": asdict(settings), "environment": fingerprint(), "scenarios": scenarios,
        "loadgen_logs": {name: str(Path(r["log_dir"]) / "mlperf_log_summary.txt") for name, r in scenarios.items()},
    }
    import json

    (out / "bench.json").write_text(json.dumps(document, indent=1, default=str))
    return document


def _spec(manifest: dict[str, Any] | None, url: str | None, model: str | None, token: str | None) -> Any:
    """The package's spec, or one built from the server's metadata (fixed sizes only, batch first)."""
    from inferforge.types import ModelSpec, TensorSpec

    if manifest is not None:
        return ModelSpec.from_json(manifest["spec"])
    if not model:
        raise InferforgeError("--url without a package needs --model NAME (the served model to benchmark)")
    assert url is not None
    specs = []
    for item in RemoteModel(url, model, token).metadata():
        dims = item.shape[1:]
        if any(d < 0 for d in dims):
            raise InferforgeError(f"input {item.name!r} has a variable size {list(item.shape)}: give the package "
                                  "(inferforge bench PACKAGE --url ...) or --data so sizes are known")
        specs.append(TensorSpec.parse(f"{item.name}:{numpy_dtype(item.datatype).name}[B,"
                                      f"{','.join(map(str, dims))}]".replace("[B,]", "[B]")))
    return ModelSpec(tuple(specs), ())


def _inputs(spec: Any, data: str | None, samples: int) -> dict[str, np.ndarray]:
    from inferforge.data import generated_dataset, load_dataset

    dataset = load_dataset(data, spec) if data else generated_dataset(spec, samples)
    return {k: np.ascontiguousarray(v) for k, v in dataset.inputs.items()}
