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
from inferforge.calibration import WHAT as CALIBRATION_DATA
from inferforge.data import check_data_ref
from inferforge.destination import check_destination
from inferforge.errors import InferforgeError, SpecError
from inferforge.options import Objective, SearchOptions, default_batch_sizes
from inferforge.progress import SearchProgress, print_table
from inferforge.report import report_json, rich_leaderboard
from inferforge.search import candidate_configs
from inferforge.validate import AccuracyBudget, Task

if TYPE_CHECKING:
    from inferforge.adapters import AdapterSpec


def options_from_args(args: argparse.Namespace) -> SearchOptions:
    """SearchOptions from the command line. An option left out is not passed, so its default is the
    dataclass's own; a value out of range is refused by the dataclass that owns the rule (SpecError)."""
    extra: dict[str, Any] = _given(args, threads="threads", calibration_samples="calibration_samples",
                                   time_budget_s="time_budget")
    if args.no_cache or args.cache_dir:
        extra["cache_dir"] = None if args.no_cache else args.cache_dir
    budget = _given(args, max_accuracy_drop="max_accuracy_drop", min_cosine="min_cosine",
                    min_top1_agreement="min_top1_agreement")
    objective = Objective(args.objective)
    bench = _given(args, batch_sizes="batch_sizes")
    bench.setdefault("batch_sizes", default_batch_sizes(args.target, objective))
    return SearchOptions(
        objective=objective,
        budget=AccuracyBudget(**budget),
        task=Task(args.task),
        bench=BenchSettings(**bench),
        backends=tuple(b.strip() for b in args.backends.split(",")) if args.backends else (),
        device=args.target,
        precisions=tuple(p.strip() for p in args.precisions.split(",")) if args.precisions else (),
        thorough=args.thorough,
        **extra,
    )


def _given(args: argparse.Namespace, **fields: str) -> dict[str, Any]:
    """``{field: args.<flag>}`` for the flags the user gave (argparse default None), so defaults stay in one place."""
    return {field: getattr(args, flag) for field, flag in fields.items() if getattr(args, flag) is not None}


def check_optimize_args(args: argparse.Namespace, out: Path) -> SearchOptions:
    """Everything about the command line that can be refused before the model is even loaded: numeric
    options, the input paths, the package destination. Returns the search options."""
    options = options_from_args(args)
    if args.fallbacks is not None and args.fallbacks < 0:
        raise SpecError(f"--fallbacks must be 0 or more (passed candidates packaged after the best), "
                        f"got {args.fallbacks}")
    if args.data is not None:
        check_data_ref(args.data)
    if args.calibration is not None:
        check_data_ref(args.calibration, CALIBRATION_DATA)
    check_destination(out, args.overwrite)
    return options


def run_optimize(model: str, *, inputs: list[str], data: str | None, options: SearchOptions, out: Path | None,
                 name: str | None, fallbacks: int | None = None, overwrite: bool, quiet: bool = False,
                 adapter: AdapterSpec | None = None, calibration: str | None = None,
                 calibration_pipeline: str | None = None) -> OptimizeResult:
    """optimize() with a live progress display, then the leaderboard on stdout.

    ``fallbacks``: None keeps optimize()'s default."""
    label = name or model.rsplit(":", 1)[-1]
    packaged: dict[str, Any] = {} if fallbacks is None else {"fallbacks": fallbacks}
    with SearchProgress(len(candidate_configs(options)), f"optimizing {label}") as progress:
        result = optimize(model, inputs=inputs, data=data, options=options, out=out, name=name,
                          overwrite=overwrite, progress=progress, adapter=adapter, calibration=calibration,
                          calibration_pipeline=calibration_pipeline, **packaged)
    if not quiet:
        print_table(rich_leaderboard(result.search, f"{result.source.name}: validated on {result.dataset.origin}, {len(result.dataset)} samples"))
        for note in result.search.notes:  # dims kept dynamic or frozen, export ranges applied, how candidates ran
            print(f"note: {note}")
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
    options = check_optimize_args(args, out)
    result = run_optimize(args.model, inputs=args.input, data=args.data, options=options,
                          out=out, name=args.name, fallbacks=args.fallbacks, overwrite=args.overwrite, quiet=args.json,
                          adapter=args.adapter, calibration=args.calibration,
                          calibration_pipeline=args.calibration_pipeline)
    if args.json:
        print(json.dumps(report_json(result.search, result.dataset, result.source.name), indent=2, default=str))
    return 0 if result.best is not None else 3


def bench_command(args: argparse.Namespace) -> int:
    """``inferforge bench``: LoadGen's four scenarios, bench.json and a self-contained report.html."""
    from inferforge.report.html_bench import bench_report_html
    from inferforge.report.html_page import write_html
    from inferforge.serve.loadgen import LoadgenSettings, bench

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
