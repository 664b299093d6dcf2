"""``inferforge serve``: turn command-line options into a ServerConfig and run it."""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING

from inferforge.errors import InferforgeError
from inferforge.serve.auth import Auth
from inferforge.serve.model import ModelOptions
from inferforge.serve.server import ServerConfig, configure_logging, run

if TYPE_CHECKING:
    from inferforge.serve.ray_serve import RayServeConfig

BATCHING_FLAGS = ("max_batch_size", "max_queue_delay_ms", "preferred_batch_sizes", "max_queue_size", "instances",
                  "instance_kind")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    for flag in ("max_batch_size", "max_queue_size", "instances", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise InferforgeError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.max_body_mb <= 0 or args.request_timeout <= 0:
        raise InferforgeError("--max-body-mb and --request-timeout must be positive")
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
                            request_timeout_s=args.request_timeout),
        poll_seconds=args.poll_seconds, max_body_bytes=int(args.max_body_mb * (1 << 20)))


def serve_command(args: argparse.Namespace) -> int:
    if args.trust_source:  # read by package.load, here and in every instance process the server starts
        from inferforge.package import TRUST_SOURCE_ENV

        os.environ[TRUST_SOURCE_ENV] = "1"
    config = config_from_args(args)
    configure_logging(getattr(logging, args.log_level.upper()))
    if args.ray:
        from inferforge.serve.ray_serve import serve_forever

        serve_forever(ray_config_from_args(args, config))
        return 0
    run(config)
    return 0


def ray_config_from_args(args: argparse.Namespace, server: ServerConfig) -> RayServeConfig:
    """The Ray Serve deployment of what ``server`` would serve: the newest version of each model."""
    from inferforge.serve.ray_serve import RayScaling, RayServeConfig
    from inferforge.serve.repository import scan

    autoscale = None
    if args.autoscale is not None:
        if len(args.autoscale) != 2:
            raise InferforgeError(f"--autoscale takes MIN,MAX, got {args.autoscale}")
        autoscale = (args.autoscale[0], args.autoscale[1])
    packages = {name: versions[max(versions, key=int)] for name, versions in scan(server.root).items()}
    scaling = RayScaling(replicas=args.replicas, autoscale=autoscale, target_ongoing_requests=args.target_ongoing_requests,
                         cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica)
    return RayServeConfig(packages=packages, host=server.host, port=server.http_port or 8000, scaling=scaling,
                          transfer=args.package_transfer, auth=server.auth, model_options=server.models,
                          address=args.ray_address, batching=args.ray_batching)
