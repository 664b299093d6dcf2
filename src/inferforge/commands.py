"""What the CLI's commands do beyond parsing: build options, show progress and leaderboards.

Kept apart from cli.py so that ``inferforge --help`` imports nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferforge.api import OptimizeResult, optimize
from inferforge.bench import BenchSettings
from inferforge.errors import InferforgeError
from inferforge.progress import SearchProgress, print_table
from inferforge.report import report_json, rich_leaderboard
from inferforge.search import Objective, SearchOptions, candidate_configs
from inferforge.validate import AccuracyBudget, Task

if TYPE_CHECKING:
    from inferforge.serve.adapters import AdapterSpec


def options_from_args(args: argparse.Namespace) -> SearchOptions:
    extra: dict[str, Any] = {}
    if args.threads:
        extra["threads"] = args.threads
    if args.no_cache or args.cache_dir:
        extra["cache_dir"] = None if args.no_cache else args.cache_dir
    if args.time_budget is not None:
        if args.time_budget <= 0:
            raise InferforgeError(f"--time-budget must be a positive number of seconds, got {args.time_budget:g}")
        extra["time_budget_s"] = args.time_budget
    return SearchOptions(
        objective=Objective(args.objective),
        budget=AccuracyBudget(args.max_accuracy_drop, args.min_cosine, args.min_top1_agreement),
        task=Task(args.task),
        bench=BenchSettings(batch_sizes=tuple(args.batch_sizes)),
        backends=tuple(b.strip() for b in args.backends.split(",")) if args.backends else (),
        calibration_samples=args.calibration_samples,
        device=args.target,
        precisions=tuple(p.strip() for p in args.precisions.split(",")) if args.precisions else (),
        thorough=args.thorough,
        **extra,
    )


def run_optimize(model: str, *, inputs: list[str], data: str | None, options: SearchOptions, out: Path | None,
                 name: str | None, fallbacks: int, overwrite: bool, quiet: bool = False,
                 adapter: AdapterSpec | None = None, calibration: str | None = None,
                 calibration_pipeline: str | None = None) -> OptimizeResult:
    """optimize() with a live progress display, then the leaderboard on stdout."""
    label = name or model.rsplit(":", 1)[-1]
    with SearchProgress(len(candidate_configs(options)), f"optimizing {label}") as progress:
        result = optimize(model, inputs=inputs, data=data, options=options, out=out, name=name,
                          fallbacks=fallbacks, overwrite=overwrite, progress=progress, adapter=adapter,
                          calibration=calibration, calibration_pipeline=calibration_pipeline)
    if not quiet:
        print_table(rich_leaderboard(result.search, f"{result.source.name}: validated on {result.dataset.origin}, {len(result.dataset)} samples"))
        if result.package:
            print(f"package: {result.package}")
            if (result.package / "report.html").is_file():
                print(f"report: {result.package / 'report.html'}")
        elif result.best is None:
            print("no candidate passed the accuracy budget: nothing was packaged (see the reasons above)")
    return result


def default_name(model: str) -> str:
    """'models.py:make_resnet' -> 'resnet'; 'path/net.onnx' -> 'net'."""
    if ":" in model and not Path(model).exists():
        return model.rsplit(":", 1)[-1].removeprefix("make_") or "model"
    return Path(model).stem


def optimize_command(args: argparse.Namespace) -> int:
    out = args.out or Path(f"{args.name or default_name(args.model)}.inferforge")
    result = run_optimize(args.model, inputs=args.input, data=args.data, options=options_from_args(args),
                          out=out, name=args.name, fallbacks=args.fallbacks, overwrite=args.overwrite, quiet=args.json,
                          adapter=args.adapter, calibration=args.calibration,
                          calibration_pipeline=args.calibration_pipeline)
    if args.json:
        print(json.dumps(report_json(result.search, result.dataset, result.source.name), indent=2, default=str))
    return 0 if result.best is not None else 3


def bench_command(args: argparse.Namespace) -> int:
    """``inferforge bench``: LoadGen's four scenarios, bench.json and a self-contained report.html."""
    from inferforge.html_report import bench_report_html, write_html
    from inferforge.loadgen import LoadgenSettings, bench

    for flag in ("duration", "latency_bound", "search_steps", "samples_per_query", "max_batch_size", "concurrency"):
        if getattr(args, flag) <= 0:
            raise InferforgeError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    settings = LoadgenSettings(
        scenarios=tuple(s.strip() for s in args.scenarios.split(",") if s.strip()), duration_s=args.duration,
        latency_bound_ms=args.latency_bound, samples_per_query=args.samples_per_query,
        max_batch=args.max_batch_size, concurrency=args.concurrency, search_steps=args.search_steps,
        search_duration_s=min(args.duration, 2.0))
    label = args.model or (args.package.name.split(".")[0] if args.package else "model")
    out = args.out or Path(f"{label}-bench")
    say = (lambda message: print(message, file=sys.stderr)) if args.json else print
    document = bench(args.package, url=args.url, model=args.model, data=args.data, settings=settings, out=out,
                     token=args.token, threads=args.threads, progress=say)
    report = write_html(bench_report_html(document), out / "report.html")
    if args.json:
        print(json.dumps(document, indent=1, default=str))
        return 0
    print(f"{document['model']} ({document['artifact']}, {document['target']})")
    for name, r in document["scenarios"].items():
        rate = f"{r['qps']:.1f}/s" if r.get("qps") is not None else ""
        print(f"  {name:12s} {'VALID' if r['valid'] else 'INVALID':8s} p50 {r['p50_ms']:.3f} ms  p90 "
              f"{r['p90_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  {rate}")
    print(f"LoadGen logs and bench.json: {out}\nreport: {report}")
    return 0
