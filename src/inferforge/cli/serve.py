"""``inferforge serve``: command-line options into a ServerConfig (or a Ray Serve deployment), then run it.

The one place outside ``serve/`` that imports it. Defaults are ServerConfig's, ModelOptions' and BatchingConfig's;
the Ray flags' are RayScaling's and RayServeConfig's (serve/ray_config.py, which does not import Ray).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from inferforge.cli.args import field_default, given, int_list

if TYPE_CHECKING:
    from inferforge.serve.ray_config import RayServeConfig
    from inferforge.serve.server import ServerConfig

HELP = "serve packages over the Open Inference Protocol (HTTP, gRPC, metrics)"
DESCRIPTION = ("Serve one package, or a model repository (REPO/<model>/<version>/<package>), over KServe v2 HTTP and "
               "gRPC with dynamic batching, hot reload and Prometheus metrics. Tokens are read from INFERFORGE_TOKEN / "
               "INFERFORGE_ADMIN_TOKEN when not given.")
MIB = 1 << 20
BATCHING_FLAGS = ("max_batch_size", "max_queue_delay_ms", "preferred_batch_sizes", "max_queue_size", "instances",
                  "instance_kind")  # BatchingConfig fields; the package suggests the values the user leaves out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from inferforge.adapters import InputLimits
    from inferforge.serve.batcher import INSTANCE_KINDS, BatchingConfig
    from inferforge.serve.model import ModelOptions
    from inferforge.serve.ray_config import BATCHERS, TRANSFERS, RayScaling, RayServeConfig
    from inferforge.serve.server import ServerConfig

    def server(name: str) -> object:
        return field_default(ServerConfig, name)

    parser.add_argument("path", type=Path, help="a package folder or a model repository folder")
    parser.add_argument("--host", default=server("host"), help="address to bind")
    parser.add_argument("--http-port", type=int, default=server("http_port"), help="0 picks a free port")
    parser.add_argument("--grpc-port", type=int, default=server("grpc_port"), help="0 picks a free port; -1 turns "
                        "gRPC off")
    parser.add_argument("--metrics-port", type=int, default=server("metrics_port"),
                        help="-1 turns the separate metrics port off")
    parser.add_argument("--token", help="bearer token required for inference and metadata")
    parser.add_argument("--admin-token", help="bearer token for the repository API (disabled without one)")
    parser.add_argument("--poll-seconds", type=float, default=server("poll_seconds"),
                        help="repository scan interval; 0 = no polling")
    parser.add_argument("--max-body-mb", type=float, default=field_default(ServerConfig, "max_body_bytes") / MIB,
                        help="largest request body accepted")
    parser.add_argument("--request-timeout", type=float, default=field_default(ModelOptions, "request_timeout_s"),
                        help="seconds a request may wait and run")
    parser.add_argument("--read-timeout", type=float, default=server("read_timeout_s"),
                        help="seconds a request's head, then its body, may take to arrive (slow clients are cut off)")
    limits = parser.add_argument_group("raw inputs (models packaged with an --adapter; default: each package's own)")
    limits.add_argument("--max-text-bytes", type=int, help="UTF-8 bytes per sentence (package default: "
                        f"{field_default(InputLimits, 'max_text_bytes')})")
    limits.add_argument("--max-image-pixels", type=int, help="width x height per image, read from its header "
                        f"before decoding (package default: {field_default(InputLimits, 'max_image_pixels')})")
    batching = parser.add_argument_group("batching (default: what the package's benchmark suggests)")
    batching.add_argument("--max-batch-size", type=int, help="samples per batch (default: the package's best)")
    batching.add_argument("--max-queue-delay-ms", type=float, help="extra wait for fuller batches (default: "
                          f"{field_default(BatchingConfig, 'max_queue_delay_ms')})")
    batching.add_argument("--preferred-batch-sizes", type=int_list, help="e.g. 8,16")
    batching.add_argument("--max-queue-size", type=int, help="samples waiting before 503 (default: 16 batches)")
    batching.add_argument("--instances", type=int, help="model instances per model (default: "
                          f"{field_default(BatchingConfig, 'instances')}, or as many as the package's tuning found "
                          "best)")
    batching.add_argument("--instance-kind", choices=INSTANCE_KINDS,
                          help=f"default: {field_default(BatchingConfig, 'instance_kind')}")
    parser.add_argument("--threads", type=int, help="intra-op threads per instance (default: usable cores)")
    parser.add_argument("--trust-source", action="store_true",
                        help="also serve source artifacts, which import and run the model's own Python code "
                        "packaged with it (for models no graph capture takes); only for packages you trust")
    parser.add_argument("--log-level", choices=["debug", "info", "warning"], default="info",
                        help="what the server logs (JSON lines on stderr)")
    ray = parser.add_argument_group("Ray Serve (scale out; HTTP only)")
    ray.add_argument("--ray", action="store_true", help="deploy each model on Ray Serve (a running cluster, or a "
                     "local one) behind the same Open Inference Protocol HTTP API, on --host/--http-port")
    ray.add_argument("--replicas", type=int, default=field_default(RayScaling, "replicas"), help="replicas per model")
    ray.add_argument("--autoscale", type=int_list, metavar="MIN,MAX", help="autoscale between MIN and MAX replicas")
    ray.add_argument("--target-ongoing-requests", type=float, default=field_default(RayScaling, "target_ongoing_requests"),
                     help="with --autoscale: requests in flight per replica that autoscaling aims at")
    ray.add_argument("--cpus-per-replica", type=float, default=field_default(RayScaling, "cpus_per_replica"),
                     help="CPUs each replica reserves on the cluster")
    ray.add_argument("--gpus-per-replica", type=float, default=field_default(RayScaling, "gpus_per_replica"),
                     help="GPUs each replica reserves on the cluster")
    ray.add_argument("--ray-address", help="cluster to join, e.g. auto or ray://HOST:10001 (default: RAY_ADDRESS, "
                     "a cluster started here with `ray start`, else a new local one)")
    ray.add_argument("--ray-batching", choices=BATCHERS, default=field_default(RayServeConfig, "batching"),
                     help="inferforge's batcher in each replica (counts samples), or Ray Serve's @serve.batch")
    ray.add_argument("--package-transfer", choices=TRANSFERS, default=field_default(RayServeConfig, "transfer"),
                     help="how replicas get the package: Ray's object store, or the path itself on shared storage")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    from inferforge.adapters import InputLimits
    from inferforge.errors import InferforgeError
    from inferforge.serve.auth import Auth
    from inferforge.serve.model import ModelOptions
    from inferforge.serve.server import ServerConfig

    if args.threads is not None and args.threads < 1:
        raise InferforgeError(f"--threads must be at least 1, got {args.threads}")
    if args.max_body_mb <= 0 or args.request_timeout <= 0 or args.read_timeout <= 0:
        raise InferforgeError("--max-body-mb, --request-timeout and --read-timeout must be positive")
    limits = {"max_text_bytes": args.max_text_bytes, "max_image_pixels": args.max_image_pixels}
    limits = {name: value for name, value in limits.items() if value is not None}
    InputLimits(**limits)  # SpecError naming a value below 1 before anything starts
    if not args.path.exists():
        raise InferforgeError(f"{args.path} does not exist: give a package folder or a model repository folder")
    overrides = {flag: getattr(args, flag) for flag in BATCHING_FLAGS if getattr(args, flag) is not None}
    auth = Auth(args.token or os.environ.get("INFERFORGE_TOKEN") or None,
                args.admin_token or os.environ.get("INFERFORGE_ADMIN_TOKEN") or None)
    return ServerConfig(
        root=args.path, host=args.host, http_port=args.http_port,
        grpc_port=None if args.grpc_port < 0 else args.grpc_port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port, auth=auth,
        models=ModelOptions(batching_overrides=overrides, threads=args.threads,
                            request_timeout_s=args.request_timeout, input_limits=limits),
        poll_seconds=args.poll_seconds, max_body_bytes=int(args.max_body_mb * MIB), read_timeout_s=args.read_timeout)


def run(args: argparse.Namespace) -> int:
    from inferforge.serve.server import configure_logging
    from inferforge.serve.server import run as run_server

    if args.trust_source:  # read by package.load, here and in every instance process the server starts
        from inferforge.package import TRUST_SOURCE_ENV

        os.environ[TRUST_SOURCE_ENV] = "1"
    config = config_from_args(args)
    configure_logging(getattr(logging, args.log_level.upper()))
    if args.ray:
        from inferforge.serve.ray_serve import serve_forever

        serve_forever(ray_config_from_args(args, config))
        return 0
    run_server(config)
    return 0


def ray_config_from_args(args: argparse.Namespace, server: ServerConfig) -> RayServeConfig:
    """The Ray Serve deployment of what ``server`` would serve: the newest version of each model."""
    from inferforge.errors import InferforgeError
    from inferforge.serve.ray_config import RayScaling, RayServeConfig
    from inferforge.serve.repository import scan

    scaling = given(args, replicas="replicas", target_ongoing_requests="target_ongoing_requests",
                    cpus_per_replica="cpus_per_replica", gpus_per_replica="gpus_per_replica")
    if args.autoscale is not None:
        if len(args.autoscale) != 2:
            raise InferforgeError(f"--autoscale takes MIN,MAX, got {args.autoscale}")
        scaling["autoscale"] = (args.autoscale[0], args.autoscale[1])
    packages = {name: versions[max(versions, key=int)] for name, versions in scan(server.root).items()}
    deployment = given(args, address="ray_address", batching="ray_batching", transfer="package_transfer")
    port = server.http_port or field_default(RayServeConfig, "port")  # 0 (a free port) is not Ray's to pick
    return RayServeConfig(packages=packages, host=server.host, port=port,
                          scaling=RayScaling(**scaling), auth=server.auth, model_options=server.models, **deployment)
