"""Prometheus metrics: requests, failures, latency split into queue and compute, batch sizes, queue depth,
model load state, and GPU utilization and memory through NVML where a GPU is present.

One registry per server (not the global default), so tests and several servers in one
process do not mix their counts. The batch-size histogram is the one that shows
whether dynamic batching actually forms batches (Triton #4129).

The same scrape also carries Triton's own names (``nv_inference_*`` per model and version,
``nv_gpu_*`` per GPU), so dashboards and alerts written for Triton read an inferforge server
unchanged; ``TritonCounters`` keeps them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from inferforge.serve.batcher import BatchTiming

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = tuple(2**i for i in range(11))  # batch-size histogram: 1 .. 1024, as the largest GPU batches
STATES = ("LOADING", "READY", "UNAVAILABLE")


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("inferforge_requests", "Inference requests received", ["model", "protocol"],
                                registry=r)
        self.failures = Counter("inferforge_request_failures", "Inference requests answered with an error",
                                ["model", "protocol", "code"], registry=r)
        self.request_seconds = Histogram("inferforge_request_duration_seconds", "Whole request, decode to encode",
                                         ["model", "protocol"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("inferforge_queue_duration_seconds", "Time a request waited for a batch",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("inferforge_compute_duration_seconds", "Time one batch ran on the model",
                                         ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("inferforge_batch_size", "Samples per executed batch (padding excluded)",
                                    ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.samples = Counter("inferforge_inference_samples", "Samples (rows) run through the model", ["model"],
                               registry=r)
        self.queue_depth = Gauge("inferforge_queue_depth", "Samples waiting in the batching queue", ["model"],
                                 registry=r)
        self.model_state = Gauge("inferforge_model_state", "1 for the state a model version is in",
                                 ["model", "version", "state"], registry=r)
        self.triton = TritonCounters()
        r.register(NvmlCollector())

    def record_request(self, model: str, protocol: str, seconds: float, status: int = 200) -> None:
        """Count one inference request; ``model`` should be a served name (see ``label``)."""
        self.requests.labels(model, protocol).inc()
        if status == 200:
            self.request_seconds.labels(model, protocol).observe(seconds)
        else:
            self.failures.labels(model, protocol, str(status)).inc()
        self.triton.record_request(model, seconds, status == 200)

    @staticmethod
    def label(name: str, served: Collection[str]) -> str:
        """Unknown model names share one label, so a client cannot grow the label set without bound."""
        return name if name in served else "_unknown"

    def record_batch(self, model: str, timing: BatchTiming, queued_rows: int) -> None:
        self.compute_seconds.labels(model).observe(timing.compute_s)
        self.batch_size.labels(model).observe(timing.rows)
        if timing.ok:
            self.samples.labels(model).inc(timing.rows)
        for wait in timing.queue_s:
            self.queue_seconds.labels(model).observe(wait)
        self.queue_depth.labels(model).set(queued_rows)
        self.triton.record_batch(model, timing)

    def set_state(self, model: str, version: str, state: str) -> None:
        for s in STATES:
            self.model_state.labels(model, version, s).set(1.0 if s == state else 0.0)
        if state == "READY":
            self.triton.serving[model] = version

    def exposition(self) -> bytes:
        return generate_latest(self.registry) + self.triton.exposition().encode()


# Triton's per-model counters: name -> its HELP text, as Triton writes them (labels model and version).
TRITON_COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (does not include cached requests)",
    "nv_inference_exec_count": "Number of model executions performed (does not include cached requests)",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds "
                                        "(includes cached requests)",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds "
                                      "(includes cached requests)",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in microseconds "
                                              "(does not include cached requests)",
}


class TritonCounters:
    """Triton's ``nv_inference_*`` counters, fed by the same calls as inferforge's own metrics.

    Written as text by hand: prometheus_client would name each counter ``..._total``, and
    Triton's dashboards query the bare names. A count goes to the version serving the model when
    it was made (``serving``, kept by ``ServerMetrics.set_state``); requests for unknown models
    count nowhere, as in Triton. Durations count successful requests only, as Triton's do; a
    request's compute time is its whole batch's.
    """

    def __init__(self) -> None:
        self.serving: dict[str, str] = {}  # model -> the version now serving
        self.values: dict[str, dict[tuple[str, str], float]] = {name: defaultdict(float) for name in TRITON_COUNTERS}

    def record_request(self, model: str, seconds: float, ok: bool) -> None:
        key = self._key(model)
        if key is None:
            return
        if ok:
            self.values["nv_inference_request_success"][key] += 1
            self.values["nv_inference_request_duration_us"][key] += seconds * 1e6
        else:
            self.values["nv_inference_request_failure"][key] += 1

    def record_batch(self, model: str, timing: BatchTiming) -> None:
        key = self._key(model)
        if key is None:
            return
        self.values["nv_inference_exec_count"][key] += 1
        if timing.ok:
            self.values["nv_inference_count"][key] += timing.rows
            self.values["nv_inference_queue_duration_us"][key] += sum(timing.queue_s) * 1e6
            self.values["nv_inference_compute_infer_duration_us"][key] += timing.compute_s * 1e6 * timing.requests

    def _key(self, model: str) -> tuple[str, str] | None:
        version = self.serving.get(model)
        return None if version is None else (model, version)

    def exposition(self) -> str:
        """Prometheus text: every family, and a zero for each model version that served but saw no such event."""
        keys = sorted({(m, v) for values in self.values.values() for m, v in values} | set(self.serving.items()))
        lines: list[str] = []
        for name, help_text in TRITON_COUNTERS.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            values = self.values[name]
            lines += [f'{name}{{model="{_escape(m)}",version="{_escape(v)}"}} {round(values.get((m, v), 0.0))}'
                      for m, v in keys]
        return "\n".join(lines) + "\n"


def _escape(label: str) -> str:
    return label.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def open_nvml() -> Any:
    """pynvml, initialised, when a driver and at least one GPU are present; else None."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml if pynvml.nvmlDeviceGetCount() > 0 else None
    except Exception:  # no driver, no GPU, or no nvidia-ml-py: GPU metrics are simply absent
        return None


class NvmlCollector(Collector):
    """GPU utilization and memory per device, read at scrape time, under inferforge's names (label ``gpu``,
    the index) and Triton's (label ``gpu_uuid``). Nothing when NVML or a GPU is absent, as Triton does."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml if nvml is not None else open_nvml()  # tests pass a stand-in for pynvml

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self._nvml is None:
            return
        nvml = self._nvml
        util = GaugeMetricFamily("inferforge_gpu_utilization_ratio", "GPU busy fraction (NVML)", labels=["gpu"])
        used = GaugeMetricFamily("inferforge_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"])
        total = GaugeMetricFamily("inferforge_gpu_memory_total_bytes", "GPU memory (NVML)", labels=["gpu"])
        nv_util = GaugeMetricFamily("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", labels=["gpu_uuid"])
        nv_used = GaugeMetricFamily("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=["gpu_uuid"])
        nv_total = GaugeMetricFamily("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=["gpu_uuid"])
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            busy = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            uuid = nvml.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            for family, label, value in ((util, str(index), busy), (used, str(index), float(memory.used)),
                                         (total, str(index), float(memory.total)), (nv_util, uuid, busy),
                                         (nv_used, uuid, float(memory.used)), (nv_total, uuid, float(memory.total))):
                family.add_metric([label], value)
        yield from (util, used, total, nv_util, nv_used, nv_total)
