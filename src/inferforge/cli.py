"""The command line: parse, call the public verbs, print. No logic of its own.

Errors an user can fix exit with status 2 and one message; --debug adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inferforge.errors import InferforgeError


def _fraction(text: str) -> float:
    """'1%' or '0.01' -> 0.01; a bare number above 1 is refused as ambiguous."""
    value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    if not text.endswith("%") and value > 1:
        raise argparse.ArgumentTypeError(f"{text} is above 1: write it as a fraction (0.01) or a percentage ({text}%)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be 1 or more")
    return values


def _adapter(text: str) -> object:
    """'text:tokenizer=PATH,...' or 'image:target=INPUT,...' -> an adapter spec (parse errors are argparse's)."""
    from inferforge.adapters import parse_adapter
    from inferforge.errors import SpecError

    try:
        return parse_adapter(text)
    except SpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferforge", description="Optimize, validate, benchmark and package "
                                     "PyTorch models for inference.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    opt = sub.add_parser("optimize", help="build every candidate, validate, benchmark, pick and package the best")
    opt.add_argument("model", help="file.py:factory, package.module:factory, or a .pt (TorchScript) / .pt2 / .onnx file")
    opt.add_argument("--input", action="append", default=[], metavar="SPEC",
                     help="input spec, repeatable: name:dtype[dims][:lo..hi], e.g. input_ids:int64[B,128]:0..30521")
    opt.add_argument("--data", help="validation data: a folder of .npy/.npz, or file.py:function (optional 'labels')")
    opt.add_argument("--task", choices=["auto", "classify", "embed", "generic"], default="auto",
                     help="what decides accuracy: auto = classify with labels, else output cosine")
    # Numeric options default to None: the dataclass that owns each one (AccuracyBudget, SearchOptions,
    # BenchSettings; optimize() for --fallbacks) supplies the default and refuses values out of its range,
    # before the model is loaded (commands.check_optimize_args).
    opt.add_argument("--max-accuracy-drop", type=_fraction, help="with labels: e.g. 1%% or 0.01")
    opt.add_argument("--min-cosine", type=float, help="without labels: mean cosine per sample")
    opt.add_argument("--min-top1-agreement", type=_fraction, help="classifiers without labels")
    opt.add_argument("--objective", choices=["latency", "throughput"], default="latency")
    opt.add_argument("--backends", help="comma-separated subset (default: all)")
    opt.add_argument("--batch-sizes", type=_int_list, help="throughput sweep, e.g. 1,8,32")
    opt.add_argument("--threads", type=int, help="intra-op threads (default: usable cores)")
    opt.add_argument("--out", type=Path, help="package folder (default: ./<name>.inferforge)")
    opt.add_argument("--name", help="model name (default: from the factory or file)")
    opt.add_argument("--fallbacks", type=int, help="passed candidates packaged after the best")
    opt.add_argument("--overwrite", action="store_true", help="replace an existing package folder (never a file, "
                     "nor a folder that is not a package)")
    opt.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    opt.add_argument("--precisions", help="comma-separated subset of fp32,tf32,bf16,fp16,fp8,int8 (default: all)")
    opt.add_argument("--time-budget", type=float, metavar="SECONDS",
                     help="start no candidate after this many seconds; the leaderboard lists what was skipped")
    opt.add_argument("--thorough", action="store_true", help="also build candidates that take minutes to compile "
                     "and measured no faster so far (torch.compile max-autotune, torchao INT8 weight-only)")
    opt.add_argument("--cache-dir", type=Path, help="reuse builds from here (default $INFERFORGE_CACHE or "
                     "~/.cache/inferforge/artifacts)")
    opt.add_argument("--no-cache", action="store_true", help="build every candidate afresh and store nothing")
    opt.add_argument("--target", choices=["cpu", "cuda"], default="cpu",
                     help="where the candidates run; cuda also keeps CPU fallbacks in the package")
    opt.add_argument("--calibration", metavar="DATA", help="INT8 calibration samples: a folder of images "
                     "(with --calibration-pipeline), a folder of .npy/.npz, or file.py:function (default: --data)")
    opt.add_argument("--calibration-pipeline", metavar="PIPELINE", help="how to preprocess calibration images, e.g. "
                     "resize=256,crop=224,color=rgb,scale=0.00392157,mean=0.485/0.456/0.406,std=0.229/0.224/0.225")
    opt.add_argument("--calibration-samples", type=int, help="samples read for INT8 calibration")
    opt.add_argument("--adapter", type=_adapter, metavar="SPEC",
                     help="let served clients send sentences or photos: text:tokenizer=PATH[,max_length=N][,input=NAME] "
                     "or image:target=INPUT[,input=NAME],resize=N|HxW,crop=N|HxW,color=rgb|bgr|gray,scale=X,"
                     "mean=A/B/C,std=A/B/C,layout=NCHW|NHWC")

    export = sub.add_parser("export", help="the package's model as one file for a runtime without Python "
                            "(LibTorch, ONNX Runtime C++), with its input/output spec and a sample")
    export.add_argument("package", type=Path)
    export.add_argument("--format", required=True, choices=["torchscript", "aoti", "onnx"])
    export.add_argument("--out", required=True, type=Path, help="folder to create")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")

    info = sub.add_parser("info", help="show a package's manifest: chosen artifact, fallbacks, figures")
    info.add_argument("package", type=Path)
    info.add_argument("--json", action="store_true")

    _add_serve_parser(sub)
    _add_measure_parsers(sub)

    demo = sub.add_parser("demo", help="optimize the built-in models (MiniLM-L6 and a digits CNN) and load them back")
    demo.add_argument("--out", type=Path, default=Path("demo-packages"))
    demo.add_argument("--only", choices=["minilm", "digits"], help="run one of the two")
    return parser


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="serve packages over the Open Inference Protocol (HTTP, gRPC, metrics)",
                           description="Serve one package, or a model repository (REPO/<model>/<version>/<package>), "
                           "over KServe v2 HTTP and gRPC with dynamic batching, hot reload and Prometheus metrics. "
                           "Tokens are read from INFERFORGE_TOKEN / INFERFORGE_ADMIN_TOKEN when not given.")
    serve.add_argument("path", type=Path, help="a package folder or a model repository folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port; -1 turns gRPC off")
    serve.add_argument("--metrics-port", type=int, default=8002, help="-1 turns the separate metrics port off")
    serve.add_argument("--token", help="bearer token required for inference and metadata")
    serve.add_argument("--admin-token", help="bearer token for the repository API (disabled without one)")
    serve.add_argument("--poll-seconds", type=float, default=2.0, help="repository scan interval; 0 = no polling")
    serve.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body accepted")
    serve.add_argument("--request-timeout", type=float, default=30.0, help="seconds a request may wait and run")
    serve.add_argument("--max-batch-size", type=int, help="samples per batch (default: the package's best)")
    serve.add_argument("--max-queue-delay-ms", type=float, help="extra wait for fuller batches (default 0)")
    serve.add_argument("--preferred-batch-sizes", type=_int_list, help="e.g. 8,16")
    serve.add_argument("--max-queue-size", type=int, help="samples waiting before 503 (default 16 batches)")
    serve.add_argument("--instances", type=int, help="model instances per model (default 1)")
    serve.add_argument("--instance-kind", choices=["thread", "process"], help="default thread")
    serve.add_argument("--threads", type=int, help="intra-op threads per instance (default: usable cores)")
    serve.add_argument("--trust-source", action="store_true",
                       help="also serve source artifacts, which import and run the model's own Python code "
                       "packaged with it (for models no graph capture takes); only for packages you trust")
    serve.add_argument("--log-level", choices=["debug", "info", "warning"], default="info")
    ray = serve.add_argument_group("Ray Serve (scale out; HTTP only)")
    ray.add_argument("--ray", action="store_true", help="deploy each model on Ray Serve (a running cluster, or a "
                     "local one) behind the same Open Inference Protocol HTTP API, on --host/--http-port")
    ray.add_argument("--replicas", type=int, default=1, help="replicas per model")
    ray.add_argument("--autoscale", type=_int_list, metavar="MIN,MAX", help="autoscale between MIN and MAX replicas")
    ray.add_argument("--target-ongoing-requests", type=float, default=8.0,
                     help="with --autoscale: requests in flight per replica that autoscaling aims at")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0)
    ray.add_argument("--gpus-per-replica", type=float, default=0.0)
    ray.add_argument("--ray-address", help="cluster to join, e.g. auto or ray://HOST:10001 (default: RAY_ADDRESS, "
                     "a cluster started here with `ray start`, else a new local one)")
    ray.add_argument("--ray-batching", choices=["inferforge", "ray"], default="inferforge",
                     help="inferforge's batcher in each replica (counts samples), or Ray Serve's @serve.batch")
    ray.add_argument("--package-transfer", choices=["object-store", "shared"], default="object-store",
                     help="how replicas get the package: Ray's object store, or the path itself on shared storage")


COMMAND_MODULES = {"bench": "commands", "compare": "compare", "profile": "profile", "export": "export"}  # imported when run


def _add_measure_parsers(sub: Any) -> None:
    bench = sub.add_parser("bench", help="MLPerf LoadGen scenarios on a package (in-process) or a running server "
                           "(--url), with an HTML report")
    bench.add_argument("package", type=Path, nargs="?", help="package folder (with --url: only supplies the spec)")
    bench.add_argument("--url", help="http://HOST:PORT or grpc://HOST:PORT of inferforge serve (or any v2 server)")
    bench.add_argument("--model", help="served model name (default: the package's)")
    bench.add_argument("--token", help="bearer token for the server")
    bench.add_argument("--scenarios", default="SingleStream,MultiStream,Server,Offline",
                       help="comma-separated subset of SingleStream,MultiStream,Server,Offline")
    bench.add_argument("--duration", type=float, default=5.0, help="minimum seconds per scenario run")
    bench.add_argument("--latency-bound", type=float, default=50.0, metavar="MS",
                       help="Server: p99 bound for the QPS search")
    bench.add_argument("--search-steps", type=int, default=6, help="Server: runs spent searching for peak QPS")
    bench.add_argument("--samples-per-query", type=int, default=8, help="MultiStream samples per query")
    bench.add_argument("--max-batch-size", type=int, default=32, help="largest batch per call in-process, or per request with --url")
    bench.add_argument("--concurrency", type=int, default=8, help="--url: requests in flight")
    bench.add_argument("--data", help="inputs: a folder of .npy/.npz or file.py:function (default: generated)")
    bench.add_argument("--threads", type=int, help="intra-op threads in-process (default: the package's)")
    bench.add_argument("--out", type=Path, help="where LoadGen's logs, bench.json and report.html go "
                       "(default ./<model>-bench)")
    bench.add_argument("--json", action="store_true", help="print bench.json on stdout")

    compare = sub.add_parser("compare", help="run the same inputs through two packages or models, per-output "
                             "differences, and the first layer where ONNX candidates diverge")
    compare.add_argument("a", help="package folder or model (file.py:factory, .pt, .pt2, .onnx)")
    compare.add_argument("b", help="package folder or model")
    compare.add_argument("--data", help="inputs: a folder of .npy/.npz or file.py:function (default: generated)")
    compare.add_argument("--input", action="append", default=[], metavar="SPEC", help="input spec for a model")
    compare.add_argument("--samples", type=int, default=64, help="generated samples (without --data)")
    compare.add_argument("--rtol", type=float, default=1e-3, help="relative L2 error counted as a divergence")
    compare.add_argument("--json", action="store_true")

    profile = sub.add_parser("profile", help="time per stage, top operators, a Chrome trace and the roofline of "
                             "a package's artifact")
    profile.add_argument("package", type=Path)
    profile.add_argument("--batch-size", type=int, default=1)
    profile.add_argument("--runs", type=int, default=50)
    profile.add_argument("--trace", type=Path, help="Chrome trace file to write")
    profile.add_argument("--threads", type=int)
    profile.add_argument("--json", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "optimize":
            return _optimize(args)
        if args.command == "info":
            return _info(args)
        if args.command == "serve":
            from inferforge.serve.cli import serve_command

            return serve_command(args)
        if args.command in COMMAND_MODULES:
            module = importlib.import_module(f"inferforge.{COMMAND_MODULES[args.command]}")
            return int(getattr(module, f"{args.command}_command")(args))
        from inferforge.demo import run_demo

        return run_demo(args.out, args.only)
    except InferforgeError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        from inferforge.errors import one_line

        print(f"internal error: {one_line(exc)} (run with --debug for the traceback, and please report it)",
              file=sys.stderr)
        return 1


def _optimize(args: argparse.Namespace) -> int:
    from inferforge.commands import optimize_command

    return optimize_command(args)


def _info(args: argparse.Namespace) -> int:
    """The manifest's summary and whether every artifact still matches its checksums; exit 2 when one does not,
    so a script can tell a damaged package from a sound one."""
    from inferforge.manifest import read_manifest

    manifest = read_manifest(args.package)
    integrity = _integrity(args.package, manifest["artifacts"])
    if args.json:
        print(json.dumps({**manifest, "integrity": integrity}, indent=2))
    else:
        print(f"{manifest['model']}: chosen {manifest['chosen']} (objective {manifest['objective']})")
        for entry in manifest["artifacts"]:
            bench = entry.get("bench") or {}
            p50 = bench.get("latency", {}).get("p50_ms")
            figure = f": p50 {p50:.2f} ms" if p50 else ""
            print(f"  #{entry['rank']} {entry['key']}{figure}  [{integrity[entry['key']]}]")
        print("inputs: " + " ".join(f"{s['name']}:{s['dtype']}{s['shape']}" for s in manifest["spec"]["inputs"]))
    damaged = [key for key, state in integrity.items() if state != INTACT]
    if damaged:
        print(f"error: {len(damaged)} of {len(integrity)} artifacts in {args.package} do not match their checksums "
              f"({', '.join(damaged)}): rebuild the package or copy it again", file=sys.stderr)
        return 2
    return 0


INTACT = "intact"


def _integrity(package: Path, entries: list[dict[str, Any]]) -> dict[str, str]:
    """Per artifact key: 'intact', or what is missing or changed (manifest.verify_checksums' words)."""
    from inferforge.errors import PackageError
    from inferforge.manifest import verify_checksums

    states = {}
    for entry in entries:
        try:
            verify_checksums(package, entry)
            states[entry["key"]] = INTACT
        except PackageError as exc:
            states[entry["key"]] = "DAMAGED: " + str(exc).split(": ", 1)[-1].removesuffix(
                ". Rebuild it or copy it again.")
    return states


if __name__ == "__main__":
    sys.exit(main())
