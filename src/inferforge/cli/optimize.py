"""``inferforge optimize``: search options from the command line, optimize() with a live display, the leaderboard.

Every default is read from the dataclass that owns it (AccuracyBudget, SearchOptions, BenchSettings) or from
optimize()'s signature, and every range is checked there: this module only translates flags into those objects.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferforge.cli.args import (
    adapter,
    field_default,
    fraction,
    int_list,
    joined,
    name_list,
    parameter_default,
    values,
)

if TYPE_CHECKING:
    from inferforge.adapters import AdapterSpec
    from inferforge.api import OptimizeResult
    from inferforge.options import SearchOptions

HELP = "build every candidate, validate, benchmark, pick and package the best"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from inferforge.api import optimize
    from inferforge.bench import BenchSettings
    from inferforge.options import DEVICES, GPU_THROUGHPUT_BATCH_SIZES, Objective, SearchOptions
    from inferforge.types import Precision
    from inferforge.validate import AccuracyBudget, Task

    def option(name: str) -> Any:
        return field_default(SearchOptions, name)

    def budget(name: str) -> Any:
        return field_default(AccuracyBudget, name)

    source = parser.add_argument_group("model and data")
    source.add_argument("model", help="file.py:factory, package.module:factory, or a .pt (TorchScript) / .pt2 / .onnx "
                        "file")
    source.add_argument("--input", action="append", default=[], metavar="SPEC",
                        help="input spec, repeatable: name:dtype[dims][:lo..hi], e.g. input_ids:int64[B,128]:0..30521")
    source.add_argument("--data", help="validation data: a folder of .npy/.npz, or file.py:function (optional "
                        "'labels')")
    source.add_argument("--task", choices=values(Task), default=option("task"),
                        help="what decides accuracy: auto = classify with labels, else output cosine")
    source.add_argument("--name", help="model name (default: from the factory or file)")
    source.add_argument("--adapter", type=adapter, metavar="SPEC",
                        help="let served clients send sentences or photos: text:tokenizer=PATH[,max_length=N]"
                        "[,input=NAME][,max_bytes=N] or image:target=INPUT[,input=NAME][,max_pixels=N],resize=N|HxW,crop=N|HxW,"
                        "color=rgb|bgr|gray,scale=X,mean=A/B/C,std=A/B/C,layout=NCHW|NHWC")

    accuracy = parser.add_argument_group("accuracy budget")
    accuracy.add_argument("--max-accuracy-drop", type=fraction, default=budget("max_accuracy_drop"),
                        help="with labels: e.g. 1%% or 0.01")
    accuracy.add_argument("--min-cosine", type=float, default=budget("min_cosine"),
                        help="without labels: mean cosine per sample")
    accuracy.add_argument("--min-top1-agreement", type=fraction, default=budget("min_top1_agreement"),
                        help="classifiers without labels")
    searching = parser.add_argument_group("search")
    searching.add_argument("--objective", choices=values(Objective), default=option("objective"),
                        help="what the pick is fastest at: p50 latency at batch 1, or samples/s over the batch sweep")
    searching.add_argument("--backends", type=name_list, default=option("backends"),
                        help="comma-separated subset (default: all)")
    # The sweep's default depends on --target and --objective, so the flag stays None until options_from_args.
    searching.add_argument("--batch-sizes", type=int_list, help="throughput sweep, e.g. 1,8,32 (default: "
                        f"{joined(field_default(BenchSettings, 'batch_sizes'))}; a cuda throughput search: "
                        f"{joined(GPU_THROUGHPUT_BATCH_SIZES)})")
    searching.add_argument("--threads", type=int, default=option("threads"),
                        help="intra-op threads (default: the usable cores, %(default)s here)")
    searching.add_argument("--precisions", type=name_list, default=option("precisions"),
                        help=f"comma-separated subset of {joined(values(Precision))} (default: all)")
    searching.add_argument("--time-budget", type=float, metavar="SECONDS", default=option("time_budget_s"),
                        help="start no candidate after this many seconds; the leaderboard lists what was skipped")
    searching.add_argument("--thorough", action="store_true", help="also build candidates that take minutes to compile "
                        "and measured no faster so far (torch.compile max-autotune, torchao INT8 weight-only)")
    searching.add_argument("--cache-dir", type=Path, default=option("cache_dir"), help="reuse builds from here")
    searching.add_argument("--no-cache", action="store_true", help="build every candidate afresh and store nothing")
    searching.add_argument("--target", choices=DEVICES, default=option("device"),
                        help="where the candidates run; cuda also keeps CPU fallbacks in the package")
    int8 = parser.add_argument_group("INT8 calibration")
    int8.add_argument("--calibration", metavar="DATA", help="INT8 calibration samples: a folder of images "
                        "(with --calibration-pipeline), a folder of .npy/.npz, or file.py:function (default: --data)")
    int8.add_argument("--calibration-pipeline", metavar="PIPELINE", help="how to preprocess calibration images, "
                        "e.g. resize=256,crop=224,color=rgb,scale=0.00392157,mean=0.485/0.456/0.406,"
                        "std=0.229/0.224/0.225")
    int8.add_argument("--calibration-samples", type=int, default=option("calibration_samples"),
                        help="samples read for INT8 calibration")
    written = parser.add_argument_group("output")
    written.add_argument("--out", type=Path, help="package folder (default: ./<name>.inferforge)")
    written.add_argument("--fallbacks", type=int, default=parameter_default(optimize, "fallbacks"),
                        help="passed candidates packaged after the best")
    written.add_argument("--overwrite", action="store_true", help="replace an existing package folder (never a file, "
                        "nor a folder that is not a package)")
    written.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    written.add_argument("--wide", action="store_true", help="the leaderboard with every column (p99, cv, errors, "
                        "build time, sizes, memory); by default a compact one that fits the terminal")

def options_from_args(args: argparse.Namespace) -> SearchOptions:
    """SearchOptions from the command line. Out-of-range values are refused by the dataclass that owns the rule
    (AccuracyBudget, SearchOptions: SpecError naming the field, the value and the range)."""
    from inferforge.bench import BenchSettings
    from inferforge.options import Objective, SearchOptions, default_batch_sizes
    from inferforge.validate import AccuracyBudget, Task

    objective = Objective(args.objective)
    return SearchOptions(
        objective=objective,
        budget=AccuracyBudget(max_accuracy_drop=args.max_accuracy_drop, min_cosine=args.min_cosine,
                              min_top1_agreement=args.min_top1_agreement),
        task=Task(args.task),
        bench=BenchSettings(batch_sizes=args.batch_sizes or default_batch_sizes(args.target, objective)),
        threads=args.threads,
        backends=args.backends,
        device=args.target,
        calibration_samples=args.calibration_samples,
        precisions=args.precisions,
        cache_dir=None if args.no_cache else args.cache_dir,
        time_budget_s=args.time_budget,
        thorough=args.thorough,
    )


def check_optimize_args(args: argparse.Namespace, out: Path) -> SearchOptions:
    """Everything about the command line that can be refused before the model is even loaded: numeric
    options, the input paths, the package destination. Returns the search options."""
    from inferforge.calibration import WHAT as CALIBRATION_DATA
    from inferforge.data import check_data_ref
    from inferforge.destination import check_destination
    from inferforge.package import check_fallbacks

    options = options_from_args(args)
    check_fallbacks(args.fallbacks)
    if args.data is not None:
        check_data_ref(args.data)
    if args.calibration is not None:
        check_data_ref(args.calibration, CALIBRATION_DATA)
    check_destination(out, args.overwrite)
    return options


def run_optimize(model: str, *, inputs: list[str], data: str | None, options: SearchOptions, out: Path | None,
                 name: str | None, fallbacks: int | None = None, overwrite: bool, quiet: bool = False,
                 adapter: AdapterSpec | None = None, calibration: str | None = None,
                 calibration_pipeline: str | None = None, wide: bool = False) -> OptimizeResult:
    """optimize() with a live progress display, then the leaderboard on stdout (compact unless ``wide``), the
    pick with its speed-up and reason, and the commands to run next.

    ``fallbacks``: None keeps optimize()'s default."""
    from inferforge.api import optimize
    from inferforge.progress import SearchProgress, print_table
    from inferforge.report import pick_lines, rich_leaderboard
    from inferforge.search import candidate_configs

    label = name or model.rsplit(":", 1)[-1]
    if not quiet:
        print(f"optimizing {label} ({model}) for {options.objective.value} on {options.device}, validated on "
              f"{data or 'inputs generated from its spec (pass --data for real samples)'}", flush=True)
    packaged: dict[str, Any] = {} if fallbacks is None else {"fallbacks": fallbacks}
    with SearchProgress(len(candidate_configs(options)), f"optimizing {label}") as progress:
        result = optimize(model, inputs=inputs, data=data, options=options, out=out, name=name,
                          overwrite=overwrite, progress=progress, adapter=adapter, calibration=calibration,
                          calibration_pipeline=calibration_pipeline, **packaged)
    if not quiet:
        print_table(rich_leaderboard(result.search, f"{result.source.name}: {len(result.dataset)} samples, "
                                     f"{result.dataset.origin}", packaged_ranks(result.package), wide))
        for note in result.search.notes:  # dims kept dynamic or frozen, export ranges applied, how candidates ran
            print(f"note: {note}")
        if result.package:
            print(f"package: {result.package}")
            if (result.package / "report.html").is_file():
                print(f"report: {result.package / 'report.html'}")
        elif result.best is None:
            print("no candidate passed the accuracy budget: nothing was packaged (see the reasons above)")
        for line in pick_lines(result.search, result.package):
            print(line)
    return result


def packaged_ranks(package: Path | None) -> dict[str, int] | None:
    """Artifact key -> rank in the written package (None when nothing was written)."""
    from inferforge.manifest import read_manifest

    if package is None:
        return None
    return {entry["key"]: entry["rank"] for entry in read_manifest(package)["artifacts"]}


def default_name(model: str) -> str:
    """'models.py:make_resnet' -> 'resnet'; 'path/net.onnx' -> 'net'."""
    if ":" in model and not Path(model).exists():
        return model.rsplit(":", 1)[-1].removeprefix("make_") or "model"
    return Path(model).stem


def run(args: argparse.Namespace) -> int:
    """Exit 0 with a package, 3 when no candidate passed the budget."""
    from inferforge.report import report_json

    out = args.out or Path(f"{args.name or default_name(args.model)}.inferforge")
    options = check_optimize_args(args, out)
    result = run_optimize(args.model, inputs=args.input, data=args.data, options=options, out=out, name=args.name,
                          fallbacks=args.fallbacks, overwrite=args.overwrite, quiet=args.json, adapter=args.adapter,
                          calibration=args.calibration, calibration_pipeline=args.calibration_pipeline,
                          wide=args.wide)
    if args.json:
        print(json.dumps(report_json(result.search, result.dataset, result.source.name), indent=2, default=str))
    return 0 if result.best is not None else 3
