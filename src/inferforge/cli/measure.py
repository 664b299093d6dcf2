"""Commands that measure what was built: ``inferforge bench`` (MLPerf LoadGen scenarios), ``compare`` (two
packages or models on the same inputs) and ``profile`` (stages, operators, roofline).

Defaults come from LoadgenSettings and from the signatures of compare_models() and profile_package().
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from inferforge.cli.args import field_default, name_list, parameter_default

if TYPE_CHECKING:
    from inferforge.serve.loadgen import LoadgenSettings

BENCH_HELP = "MLPerf LoadGen scenarios on a package (in-process) or a running server (--url), with an HTML report"
COMPARE_HELP = ("run the same inputs through two packages or models, per-output differences, and the first layer "
                "where ONNX candidates diverge")
PROFILE_HELP = "time per stage, top operators, a Chrome trace and the roofline of a package's artifact"

# flag -> LoadgenSettings field (which checks that each is positive)
LOADGEN_FIELDS = {"duration": "duration_s", "latency_bound": "latency_bound_ms", "search_steps": "search_steps",
                  "samples_per_query": "samples_per_query", "max_batch_size": "max_batch", "concurrency": "concurrency"}


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from inferforge.serve.loadgen import SCENARIOS, LoadgenSettings

    def setting(name: str) -> object:
        return field_default(LoadgenSettings, name)

    parser.add_argument("package", type=Path, nargs="?", help="package folder (with --url: only supplies the spec)")
    parser.add_argument("--url", help="http://HOST:PORT or grpc://HOST:PORT of inferforge serve (or any v2 server)")
    parser.add_argument("--model", help="served model name (default: the package's)")
    parser.add_argument("--token", help="bearer token for the server")
    parser.add_argument("--scenarios", type=name_list, default=setting("scenarios"),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--duration", type=float, default=setting("duration_s"),
                        help="minimum seconds per scenario run")
    parser.add_argument("--latency-bound", type=float, default=setting("latency_bound_ms"), metavar="MS",
                        help="Server: p99 bound for the QPS search")
    parser.add_argument("--search-steps", type=int, default=setting("search_steps"),
                        help="Server: runs spent searching for peak QPS")
    parser.add_argument("--samples-per-query", type=int, default=setting("samples_per_query"),
                        help="MultiStream samples per query")
    parser.add_argument("--max-batch-size", type=int, default=setting("max_batch"),
                        help="largest batch per call in-process, or per request with --url")
    parser.add_argument("--concurrency", type=int, default=setting("concurrency"), help="--url: requests in flight")
    parser.add_argument("--data", help="inputs: a folder of .npy/.npz or file.py:function (default: generated)")
    parser.add_argument("--threads", type=int, help="intra-op threads in-process (default: the package's)")
    parser.add_argument("--out", type=Path, help="where LoadGen's logs, bench.json and report.html go "
                        "(default ./<model>-bench)")
    parser.add_argument("--json", action="store_true", help="print bench.json on stdout")


def run_bench(args: argparse.Namespace) -> int:
    """LoadGen's scenarios, bench.json and a self-contained report.html."""
    from inferforge.report.html_bench import bench_report_html
    from inferforge.report.html_page import write_html
    from inferforge.serve.loadgen import bench

    settings = loadgen_settings(args)
    label = args.model or (args.package.name.split(".")[0] if args.package else "model")
    out = args.out or Path(f"{label}-bench")
    say = (lambda message: print(message, file=sys.stderr)) if args.json else print
    document = bench(args.package, url=args.url, model=args.model, data=args.data, settings=settings, out=out,
                     token=args.token, threads=args.threads, progress=say)
    report = write_html(bench_report_html(document), out / "report.html")
    if args.json:
        print(json.dumps(document, indent=1, default=str))
        return 0
    print(f"{document['model']} ({document['artifact']}, {document['target']}); latency bound "
          f"{settings.latency_bound_ms:g} ms (Server p99); latencies in ms, rates in samples/s")
    for name, r in document["scenarios"].items():
        rate = f"{r['qps']:.1f} samples/s" if r.get("qps") is not None else ""
        print(f"  {name:12s} {'VALID' if r['valid'] else 'INVALID':8s} p50 {r['p50_ms']:.3f}  p90 "
              f"{r['p90_ms']:.3f}  p99 {r['p99_ms']:.3f}  {rate}"
              + (f"  at {r['target_qps']:g} QPS target" if r.get("target_qps") is not None else ""))
        if not r["valid"]:
            print(f"      INVALID ({r.get('verdict', '?')}): {r.get('invalid_reason', 'see LoadGen log')}")
    print(f"LoadGen logs and bench.json: {out}\nreport: {report}")
    return 0


def loadgen_settings(args: argparse.Namespace) -> LoadgenSettings:
    """LoadgenSettings from the command line; InferforgeError for a number that is not positive."""
    from inferforge.serve.loadgen import LoadgenSettings

    # The QPS search's own runs are shorter than the scenario runs, never longer.
    search_duration = min(args.duration, field_default(LoadgenSettings, "search_duration_s"))
    return LoadgenSettings(scenarios=args.scenarios, search_duration_s=search_duration,
                           **{field: getattr(args, flag) for flag, field in LOADGEN_FIELDS.items()})


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    from inferforge.compare import compare_models

    parser.add_argument("a", help="package folder or model (file.py:factory, .pt, .pt2, .onnx)")
    parser.add_argument("b", help="package folder or model")
    parser.add_argument("--data", help="inputs: a folder of .npy/.npz or file.py:function (default: generated)")
    parser.add_argument("--input", action="append", default=[], metavar="SPEC", help="input spec for a model")
    parser.add_argument("--samples", type=int, default=parameter_default(compare_models, "samples"),
                        help="generated samples (without --data)")
    parser.add_argument("--rtol", type=float, default=parameter_default(compare_models, "rtol"),
                        help="relative L2 error counted as a divergence")
    parser.add_argument("--json", action="store_true")


def run_compare(args: argparse.Namespace) -> int:
    """Print the comparison (a table, or JSON with --json). 0 when every output is within tolerance, 1 when some
    differ."""
    from inferforge.compare import compare_models
    from inferforge.report.compare_text import print_comparison

    result = compare_models(args.a, args.b, data=args.data, samples=args.samples, rtol=args.rtol,
                            inputs=args.input or ())
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print_comparison(result)
    return 0 if result.within_tolerance else 1


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    from inferforge.profile import profile_package

    parser.add_argument("package", type=Path)
    parser.add_argument("--batch-size", type=int, default=parameter_default(profile_package, "batch_size"),
                        help="samples per profiled call")
    parser.add_argument("--runs", type=int, default=parameter_default(profile_package, "runs"),
                        help="timed calls per view")
    parser.add_argument("--trace", type=Path, help="Chrome trace file to write "
                        "(default: ./<package name>-profile-trace.json)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the package's)")
    parser.add_argument("--json", action="store_true")


def run_profile(args: argparse.Namespace) -> int:
    """Print the breakdown (or JSON with ``--json``); the trace goes to ``--trace``."""
    from inferforge.profile import format_report, profile_package

    trace = args.trace or Path.cwd() / f"{Path(args.package).name}-profile-trace.json"
    report = profile_package(args.package, batch_size=args.batch_size, runs=args.runs, trace_path=trace,
                             threads=args.threads)
    print(json.dumps(report.to_json(), indent=2, default=str) if args.json else format_report(report))
    return 0
