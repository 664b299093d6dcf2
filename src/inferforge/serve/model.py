"""A served model: one package version loaded, warmed, batched, and described for the protocol.

Loading is synchronous and slow (seconds), so the repository calls ``ServedModel.open``
in a worker thread and only swaps a model in once ``open`` returned: a version
that fails to load, verify or warm up never receives traffic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inferforge.adapters import InputAdapter, load_adapter
from inferforge.errors import ProtocolError, SpecError
from inferforge.serve.batcher import Batcher, BatchingConfig, BatchTiming, DynamicBatcher, Instance
from inferforge.serve.protocol import InferRequest, InferResponse
from inferforge.types import ModelSpec, TensorMeta, check_inputs


@dataclass(frozen=True)
class ModelOptions:
    """Server-wide settings for each model. Batching starts from the package's suggestion;
    ``batching_overrides`` (BatchingConfig field -> value) replaces what the user set."""

    batching_overrides: Mapping[str, Any] = field(default_factory=dict)
    threads: int | None = None
    request_timeout_s: float = 30.0
    warmup: bool = True
    input_limits: Mapping[str, int] = field(default_factory=dict)  # InputLimits field -> value, over the package's


def suggested_batching(manifest: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> BatchingConfig:
    """Defaults from the package's own benchmark (batch up to the size that gave the best throughput),
    then the user's overrides. A queue holds 16 full batches unless told otherwise."""
    chosen = next((a for a in manifest["artifacts"] if a["key"] == manifest["chosen"]), manifest["artifacts"][0])
    sweep = (chosen.get("bench") or {}).get("sweep") or []
    best = max(sweep, key=lambda s: s["throughput"])["batch_size"] if sweep else 8
    values: dict[str, Any] = {"max_batch_size": max(1, int(best))}
    tuning = manifest.get("tuning")
    if tuning:  # measured when the package was built: how many instances gave the best throughput
        values["instances"] = int(tuning["throughput_instances"])
    values.update(overrides or {})
    values.setdefault("max_queue_size", max(64, 16 * values["max_batch_size"]))
    return BatchingConfig(**values)


@dataclass
class ModelStats:
    """Triton-shaped statistics: counts in requests and samples, times in nanoseconds."""

    inference_count: int = 0  # samples
    execution_count: int = 0  # batches
    success: list[int] = field(default_factory=lambda: [0, 0])  # [count, ns]
    fail: list[int] = field(default_factory=lambda: [0, 0])
    queue: list[int] = field(default_factory=lambda: [0, 0])
    compute_infer: list[int] = field(default_factory=lambda: [0, 0])
    batch_stats: dict[int, list[int]] = field(default_factory=dict)
    last_inference_ms: int = 0

    def to_json(self, name: str, version: str) -> dict[str, Any]:
        def pair(p: list[int]) -> dict[str, int]:
            return {"count": p[0], "ns": p[1]}
        return {"name": name, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {"success": pair(self.success), "fail": pair(self.fail),
                                    "queue": pair(self.queue), "compute_infer": pair(self.compute_infer)},
                "batch_stats": [{"batch_size": b, "compute_infer": pair(p)} for b, p in sorted(self.batch_stats.items())]}


@dataclass
class ServedModel:
    name: str
    version: str
    package: Path
    manifest: Mapping[str, Any]
    artifact_key: str
    inputs: tuple[TensorMeta, ...]  # what clients send (the adapter's when there is one)
    outputs: tuple[TensorMeta, ...]
    batching: BatchingConfig
    adapter: InputAdapter | None
    instances: list[Instance]
    request_timeout_s: float
    batcher: Batcher | None = None
    stats: ModelStats = field(default_factory=ModelStats)
    loaded_at: float = field(default_factory=time.time)
    on_batch: Callable[[ServedModel, BatchTiming], None] | None = None

    @classmethod
    def open(cls, name: str, version: str, package: Path, options: ModelOptions) -> ServedModel:
        """Load (checksums verified by ``load``), build instances, warm up. Blocking; raises on any failure."""
        from inferforge.manifest import read_manifest, tuned_threads
        from inferforge.package import load
        from inferforge.serve.instances import ProcessInstance, ThreadInstance

        manifest = read_manifest(package)
        spec = ModelSpec.from_json(manifest["spec"])
        threads = options.threads or tuned_threads(manifest, manifest["chosen"], "throughput")
        batching = suggested_batching(manifest, options.batching_overrides)
        instances: list[Instance] = []
        try:
            if batching.instance_kind == "process":  # the model is loaded in the children only
                first = ProcessInstance(package, None, threads or 1)
                key = first.artifact_key
                instances.append(first)
                for _ in range(batching.instances - 1):
                    instances.append(ProcessInstance(package, key, threads or 1))
            else:  # loaded on the first instance's thread, which also warms it up and runs it
                loaded = ThreadInstance(lambda: load(package, threads=threads))
                key = loaded.runner.selection.key
                instances.append(loaded)
                for _ in range(batching.instances - 1):
                    instances.append(loaded.sharing())
            entry = next(a for a in manifest["artifacts"] if a["key"] == key)
            static = tuple(entry.get("details", {}).get("static_batch_sizes", ()))
            if static and not batching.static_batch_sizes:  # e.g. CUDA graphs captured per batch bucket
                batching = replace(batching, static_batch_sizes=static,
                                   max_batch_size=min(batching.max_batch_size, max(static)))
            adapter = load_adapter(package, manifest, spec, options.input_limits)
            model_inputs = tuple(TensorMeta.from_spec(s) for s in spec.inputs)
            model = cls(name, version, package, manifest, key, adapter.inputs if adapter else model_inputs,
                        tuple(TensorMeta.from_spec(s) for s in spec.outputs), batching, adapter, instances,
                        options.request_timeout_s)
            if options.warmup:
                model.warm_up(spec)
        except BaseException:
            for instance in instances:
                instance.close()
            raise
        return model

    def warm_up(self, spec: ModelSpec) -> None:
        """One call per instance at batch 1 and at max batch, so the first client pays no lazy init."""
        from inferforge.data import generate_inputs

        for rows in sorted({1, self.batching.max_batch_size}):
            sample = generate_inputs(spec, rows, seed=0)
            for instance in self.instances:  # on each instance's own thread, as traffic will run
                instance.submit(sample).result()

    def start(self, batcher: Batcher | None = None) -> None:
        """Start the batching loops (needs the running event loop), or queue on ``batcher`` instead (Ray
        Serve's own collector, which reports its batches to ``record_batch``)."""
        if batcher is None:
            batcher = DynamicBatcher(self.instances, self.batching, self.record_batch)
            batcher.start()
        self.batcher = batcher

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Finish queued and running requests, then release the instances."""
        if self.batcher is not None:
            await self.batcher.close(drain_timeout_s)
        for instance in self.instances:
            instance.close()

    def record_batch(self, timing: BatchTiming) -> None:
        """Statistics and ``on_batch`` for one executed batch, whichever collector formed it."""
        s = self.stats
        compute_ns = int(timing.compute_s * 1e9)
        s.execution_count += 1
        s.compute_infer[0] += timing.requests
        s.compute_infer[1] += compute_ns * timing.requests  # per request, as Triton's: each waited the whole batch
        s.queue[0] += timing.requests
        s.queue[1] += int(sum(timing.queue_s) * 1e9)
        entry = s.batch_stats.setdefault(timing.rows, [0, 0])
        entry[0] += 1
        entry[1] += compute_ns
        if timing.ok:
            s.inference_count += timing.rows
        s.last_inference_ms = int(time.time() * 1000)
        if self.on_batch is not None:
            self.on_batch(self, timing)

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check, adapt, queue, and answer one request.

        Raises SpecError when the inputs do not fit (the front ends answer 400), ProtocolError
        (4xx/5xx) for the rest, each with the reason.
        """
        if self.batcher is None:
            raise ProtocolError(f"model {self.name} version {self.version} is not started", 503, 1.0)
        started = time.perf_counter()
        try:
            rows = check_inputs(self.inputs, request.inputs, max_batch_size=self.batching.max_batch_size,
                                client_request=True)
            inputs = request.inputs
            if self.adapter is not None:
                inputs = await self.adapter.adapt(inputs)
            timeout = request.timeout_s() or self.request_timeout_s
            outputs = await self.batcher.submit(inputs, rows, timeout)
        except (ProtocolError, SpecError):
            self.stats.fail[0] += 1
            self.stats.fail[1] += int((time.perf_counter() - started) * 1e9)
            raise
        self.stats.success[0] += 1
        self.stats.success[1] += int((time.perf_counter() - started) * 1e9)
        return InferResponse(self.name, self.version, outputs, request.id)

    def metadata_json(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [self.version], "platform": f"inferforge_{self.artifact_key}",
                "inputs": [m.to_json() for m in self.inputs], "outputs": [m.to_json() for m in self.outputs]}

    def config_json(self) -> dict[str, Any]:
        """Triton's model configuration, as perf_analyzer and Triton's clients read it (dims exclude batch)."""
        def dims(meta: TensorMeta) -> list[int]:
            return list(meta.shape[1:])
        b = self.batching
        return {
            "name": self.name, "platform": f"inferforge_{self.artifact_key}", "backend": "inferforge",
            "max_batch_size": b.max_batch_size,
            "input": [{"name": m.name, "data_type": f"TYPE_{_config_type(m.datatype)}", "dims": dims(m)}
                      for m in self.inputs],
            "output": [{"name": m.name, "data_type": f"TYPE_{_config_type(m.datatype)}", "dims": dims(m)}
                       for m in self.outputs],
            "dynamic_batching": {"preferred_batch_size": list(b.preferred_batch_sizes),
                                 "max_queue_delay_microseconds": int(b.max_queue_delay_ms * 1000),
                                 "default_queue_policy": {"max_queue_size": b.max_queue_size,
                                                          "default_timeout_microseconds":
                                                              int(self.request_timeout_s * 1e6)}},
            "instance_group": [{"count": b.instances, "kind": "KIND_CPU"}],
            "version_policy": {"latest": {"num_versions": 1}},
            "parameters": {"inferforge_artifact": {"string_value": self.artifact_key},
                           "inferforge_instance_kind": {"string_value": b.instance_kind}},
        }


def _config_type(datatype: str) -> str:
    return "STRING" if datatype == "BYTES" else datatype

