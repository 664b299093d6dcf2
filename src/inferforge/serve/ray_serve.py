"""Scale out on Ray Serve: each model a deployment whose replicas run inferforge's served model.

Layout on the cluster (one Serve application per model, plus one for the server-wide endpoints):

- ``inferforge-<model>`` at route prefix ``/v2/models/<model>``: replicas of ``ModelReplica``. Each
  replica opens the package with ``ServedModel.open`` (the same loading, checksum verification,
  warm-up, dynamic batcher and input adapter as ``inferforge serve``) and answers the model's Open
  Inference Protocol HTTP endpoints itself, through the same route table as ``inferforge serve``
  (``endpoints``, adapted in ``ray_http``). Ray Serve's proxy routes a request straight to a replica
  of the right model: no ingress deployment in between, so there is one hop, not two (the proxy hops
  of Ray Serve #46693).
- ``inferforge`` at ``/v2``: the server metadata and health endpoints, and a 404 naming the served
  models for any other model path.

Batching (``batching``): "inferforge" runs inferforge's batcher inside each replica (it counts samples,
not requests, pads to the artifact's static batch sizes and bounds its queue with a 503); "ray" lets
Ray Serve's ``@serve.batch`` collect instead, which counts calls (a client batch of 32 weighs the same
as one of 1); its batches are merged by shape and split back by the batcher's own functions.
benchmarks/ray_scaling.py measures both; docs/scaling.md has the figures. ``max_ongoing_requests`` is
set high enough that the proxy lets a replica's queue fill batches.

Packages reach replicas from a shared path (every node sees the same folder) or through Ray's object
store (the driver puts the package's bytes in once; each replica unpacks them into its own temporary
folder). Either way a replica verifies every file's checksum before it serves. Metrics: Ray's own
Serve metrics plus inferforge's request, latency and batch-size metrics, exported by each node's
Ray metrics agent (``ray start --metrics-export-port``) in Prometheus format.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from inferforge.errors import InferforgeError
from inferforge.serve.auth import Auth
from inferforge.serve.batcher import BatchTiming, merge_rows, shape_signature, split_rows
from inferforge.serve.endpoints import V2Endpoints
from inferforge.serve.model import ModelOptions, ServedModel
from inferforge.serve.ray_config import BATCHERS, TRANSFERS, RayServeConfig
from inferforge.serve.ray_http import REPLICA_ROUTES, SERVER_ROUTES, NoModels, OneModel, StarletteAdapter

MODEL_APP_PREFIX = "inferforge-"
SERVER_APP = "inferforge"


class ModelReplica:
    """One replica: the package unpacked (or found on the shared path), verified, opened and warmed."""

    def __init__(self, name: str, package: Any, auth: Auth, options: ModelOptions, batching: str = "inferforge") -> None:
        folder = _materialize(package)
        _verify_every_artifact(folder)
        self.name = name
        self.model = ServedModel.open(name, "1", folder, options)
        self.model.on_batch = self._on_batch
        self.ray_batching = batching == "ray"
        if self.ray_batching and self.model.adapter is not None:
            raise InferforgeError("Ray Serve's batching takes tensors only: this package has an input adapter; "
                                  "use inferforge's batching")
        context = serve.get_replica_context()
        replica_id = getattr(context, "replica_id", None)
        self.replica = str(getattr(replica_id, "unique_id", None) or getattr(context, "replica_tag", "?"))
        self.metrics = _Metrics(name)
        endpoints = V2Endpoints(OneModel(self.model), answered_by={"replica": self.replica})
        self.http = StarletteAdapter(endpoints, auth, f"/v2/models/{name}", REPLICA_ROUTES,
                                     f"not an endpoint of the Open Inference Protocol v2 (replica {self.replica})")
        self._started = False

    def _on_batch(self, model: ServedModel, timing: Any) -> None:
        self.metrics.batch(timing.rows)

    async def __call__(self, request: Any) -> Any:
        if not self._started:  # a batcher's loop needs the replica's running event loop
            self.model.start(_RayServeBatcher(self.model) if self.ray_batching else None)
            self._started = True
        started = time.perf_counter()
        response = await self.http(request)
        self.metrics.request(response.status_code, time.perf_counter() - started)
        return response


class _RayServeBatcher:
    """Ray Serve's ``@serve.batch`` as the collector (``--ray-batching ray``, kept to compare against).

    It counts calls, not samples (a client batch of 32 weighs the same as one of 1), so the calls it
    gathered are grouped by ``shape_signature`` and each group merged and split with the batcher's own
    ``merge_rows``/``split_rows``, on instance 0. No queue bound, no timeout: Ray's queue has neither.
    """

    queued_rows = 0  # Ray's queue is not ours to count

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self._collect.set_max_batch_size(model.batching.max_batch_size)  # type: ignore[attr-defined]

    async def submit(self, inputs: dict[str, np.ndarray], rows: int,
                     timeout_s: float | None = None) -> dict[str, np.ndarray]:
        result: dict[str, np.ndarray] = await self._collect(inputs)
        return result

    async def close(self, drain_timeout_s: float = 30.0) -> None:
        """Nothing to drain: Ray Serve stops the replica."""

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def _collect(self, requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        groups: dict[Any, list[int]] = {}
        for i, inputs in enumerate(requests):
            groups.setdefault(shape_signature(inputs), []).append(i)
        answers: list[dict[str, np.ndarray]] = [{} for _ in requests]
        for members in groups.values():
            started = time.perf_counter()
            rows_each = [len(next(iter(requests[i].values()))) for i in members]
            merged, rows, padded = merge_rows([requests[i] for i in members], rows_each)
            outputs = await asyncio.wrap_future(self.model.instances[0].submit(merged))
            self.model.record_batch(BatchTiming(rows, padded, len(members), (0.0,) * len(members),
                                                time.perf_counter() - started, True))
            for i, piece in zip(members, split_rows(outputs, rows_each), strict=True):
                answers[i] = piece
        return answers


class ServerEndpoints:
    """``/v2``: server metadata and health; unknown models get a 404 that names the served ones."""

    def __init__(self, models: list[str], auth: Auth) -> None:
        self.http = StarletteAdapter(V2Endpoints(NoModels(models)), auth, "/v2",
                                     SERVER_ROUTES, f"no such model or endpoint; this server serves "
                                      f"{', '.join(models)}")

    async def __call__(self, request: Any) -> Any:
        return await self.http(request)


class _Metrics:
    """inferforge's per-model metrics through ``ray.util.metrics`` (exported by Ray's metrics agent)."""

    def __init__(self, model: str) -> None:
        from ray.util import metrics

        self.model = model
        self.requests = metrics.Counter("inferforge_requests", "requests by HTTP status",
                                        tag_keys=("model", "code"))
        self.seconds = metrics.Histogram("inferforge_request_seconds", "time in the replica per request",
                                         boundaries=[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
                                         tag_keys=("model",))
        self.batch_rows = metrics.Histogram("inferforge_batch_size", "samples per executed batch",
                                            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256], tag_keys=("model",))

    def request(self, status: int, seconds: float) -> None:
        self.requests.inc(tags={"model": self.model, "code": str(status)})
        self.seconds.observe(seconds, tags={"model": self.model})

    def batch(self, rows: int) -> None:
        self.batch_rows.observe(rows, tags={"model": self.model})


@dataclass
class RayDeployment:
    """What ``start`` deployed: the endpoint and the application names (``stop`` removes them)."""

    url: str
    applications: list[str]
    started_cluster: bool
    _refs: list[Any] = field(default_factory=list)  # object-store packages: kept alive with the driver

    def stop(self) -> None:
        import ray
        for app in reversed(self.applications):
            with contextlib.suppress(Exception):  # the cluster may already be gone
                serve.delete(app)
        if self.started_cluster:
            serve.shutdown()
            ray.shutdown()


def start(config: RayServeConfig) -> RayDeployment:
    """Connect to (or start) a Ray cluster, deploy every model and the server endpoints; returns when all run."""
    import ray
    _check(config)
    started_cluster = not ray.is_initialized() and config.address is None and not _cluster_running()
    if not ray.is_initialized():
        init: dict[str, Any] = {"address": config.address, "namespace": "inferforge", "log_to_driver": False}
        if started_cluster and config.metrics_export_port is not None:
            init["_metrics_export_port"] = config.metrics_export_port
            init["_system_config"] = {"metrics_report_interval_ms": 1000}
        ray.init(**init)
    serve.start(http_options={"host": config.host, "port": config.port})
    deployment = RayDeployment(f"http://{config.host}:{config.port}", [], started_cluster)
    try:
        for name, path in config.packages.items():
            package = _package_reference(Path(path), config.transfer, deployment)
            app = _deployment(ModelReplica).options(name="model", **config.scaling.deployment_options())
            serve.run(app.bind(name, package, config.auth, config.model_options, config.batching),
                      name=MODEL_APP_PREFIX + name,
                      route_prefix=f"/v2/models/{name}")
            deployment.applications.append(MODEL_APP_PREFIX + name)
        endpoints = _deployment(ServerEndpoints).options(name="endpoints", ray_actor_options={"num_cpus": 0})
        serve.run(endpoints.bind(sorted(config.packages), config.auth), name=SERVER_APP, route_prefix="/v2")
        deployment.applications.append(SERVER_APP)
    except BaseException:
        deployment.stop()
        raise
    return deployment


def _deployment(cls: type) -> Any:
    """``serve.deployment`` applied to a class (its typing only covers the decorator form)."""
    return serve.deployment(cls)


def serve_forever(config: RayServeConfig) -> None:
    """``inferforge serve --ray``: deploy, print where, and remove the applications on Ctrl-C or SIGTERM."""
    deployment = start(config)
    print(f"serving {', '.join(config.packages)} on Ray Serve at {deployment.url} (Ctrl-C stops and removes "
          f"the applications {', '.join(deployment.applications)})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave applications behind
        deployment.stop()


def _check(config: RayServeConfig) -> None:
    if config.batching not in BATCHERS:
        raise InferforgeError(f"unknown batching {config.batching!r}; choose {' or '.join(BATCHERS)}")
    if config.transfer not in TRANSFERS:
        raise InferforgeError(f"unknown package transfer {config.transfer!r}; choose {' or '.join(TRANSFERS)}")
    s = config.scaling
    if s.autoscale is not None and not 0 < s.autoscale[0] <= s.autoscale[1]:
        raise InferforgeError(f"--autoscale MIN,MAX needs 0 < MIN <= MAX, got {s.autoscale[0]},{s.autoscale[1]}")
    if s.replicas < 1 or s.cpus_per_replica < 0 or s.gpus_per_replica < 0:
        raise InferforgeError("--replicas must be at least 1, and CPUs and GPUs per replica not negative")
    if not config.packages:
        raise InferforgeError("no model to serve: give a package folder or a repository with packages")


def _cluster_running() -> bool:
    """A cluster started on this machine with ``ray start`` (ray.init() would join it, not start one)."""
    import os

    return bool(os.environ.get("RAY_ADDRESS")) or Path("/tmp/ray/ray_current_cluster").exists()


def _package_reference(path: Path, transfer: str, deployment: RayDeployment) -> Any:
    """What a replica is given to find the package: the folder itself, or an object-store reference to its
    bytes (in a list, so that Ray hands the replica the reference, and the replica fetches it)."""
    if transfer == "shared":
        return {"path": str(path.resolve())}
    import ray

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(path), arcname="package")
    ref = ray.put(buffer.getvalue())
    deployment._refs.append(ref)
    return {"object": [ref], "name": path.name}


def _materialize(package: Mapping[str, Any]) -> Path:
    if "path" in package:
        folder = Path(package["path"])
        if not folder.is_dir():
            raise InferforgeError(f"package {folder} is not visible on this node: use a path every node shares, "
                                  "or the object-store transfer")
        return folder
    import ray

    data = ray.get(package["object"][0])
    target = Path(tempfile.mkdtemp(prefix="inferforge-replica-"))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(target, filter="data")  # refuses absolute paths and links out of the folder
    return target / "package"


def _verify_every_artifact(folder: Path) -> None:
    from inferforge.manifest import read_manifest, verify_checksums

    for entry in read_manifest(folder)["artifacts"]:
        verify_checksums(folder, entry)
