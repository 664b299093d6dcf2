"""What a Ray Serve deployment of inferforge is configured with, apart from Ray itself: the CLI reads the
defaults here without importing Ray, which ``inferforge serve`` without ``--ray`` must not need."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferforge.serve.auth import Auth
from inferforge.serve.model import ModelOptions

TRANSFERS = ("object-store", "shared")
BATCHERS = ("inferforge", "ray")


@dataclass(frozen=True)
class RayScaling:
    """How many replicas each model gets, and what each one reserves on the cluster."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas; replaces ``replicas``
    target_ongoing_requests: float = 8.0  # autoscaling aims at this many requests in flight per replica
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_ongoing_requests: int = 256  # the proxy sends no more to one replica; its own queue bounds the rest
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 60.0

    def deployment_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.cpus_per_replica, "num_gpus": self.gpus_per_replica},
            "max_ongoing_requests": self.max_ongoing_requests,
        }
        if self.autoscale is None:
            options["num_replicas"] = self.replicas
        else:
            low, high = self.autoscale
            options["autoscaling_config"] = {
                "min_replicas": low, "max_replicas": high, "initial_replicas": low,
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
                "metrics_interval_s": 1.0, "look_back_period_s": 5.0,
            }
        return options


@dataclass(frozen=True)
class RayServeConfig:
    packages: Mapping[str, Path]  # model name -> package folder
    host: str = "127.0.0.1"
    port: int = 8000
    scaling: RayScaling = RayScaling()
    transfer: str = "object-store"  # or "shared": replicas read the package folder itself
    auth: Auth = Auth()
    model_options: ModelOptions = field(default_factory=ModelOptions)
    address: str | None = None  # a running cluster ("auto", "ray://host:10001"); None: RAY_ADDRESS or a local one
    metrics_export_port: int | None = None  # a local cluster's Prometheus port (a running one has its own)
    batching: str = "inferforge"  # or "ray": Ray Serve's @serve.batch (see the module docstring)
