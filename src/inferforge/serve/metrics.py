"""Prometheus metrics: requests, failures, latency split into queue and compute, batch sizes, queue depth,
model load state, and GPU utilization and memory through NVML where a GPU is present.

One registry per server (not the global default), so tests and several servers in one
process do not mix their counts. The batch-size histogram is the one that shows
whether dynamic batching actually forms batches (Triton #4129).
"""

from __future__ import annotations

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
        r.register(NvmlCollector())

    def record_request(self, model: str, protocol: str, seconds: float, status: int = 200) -> None:
        """Count one inference request; ``model`` should be a served name (see ``label``)."""
        self.requests.labels(model, protocol).inc()
        if status == 200:
            self.request_seconds.labels(model, protocol).observe(seconds)
        else:
            self.failures.labels(model, protocol, str(status)).inc()

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

    def set_state(self, model: str, version: str, state: str) -> None:
        for s in STATES:
            self.model_state.labels(model, version, s).set(1.0 if s == state else 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class NvmlCollector(Collector):
    """GPU utilization and memory per device, read at scrape time; nothing when NVML or a GPU is absent."""

    def __init__(self) -> None:
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            if pynvml.nvmlDeviceGetCount() > 0:
                self._nvml = pynvml
        except Exception:  # no driver, no GPU, or no nvidia-ml-py: GPU metrics are simply absent
            self._nvml = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self._nvml is None:
            return
        nvml = self._nvml
        util = GaugeMetricFamily("inferforge_gpu_utilization_ratio", "GPU busy fraction (NVML)", labels=["gpu"])
        used = GaugeMetricFamily("inferforge_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu"])
        total = GaugeMetricFamily("inferforge_gpu_memory_total_bytes", "GPU memory (NVML)", labels=["gpu"])
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            util.add_metric([str(index)], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
            used.add_metric([str(index)], float(memory.used))
            total.add_metric([str(index)], float(memory.total))
        yield from (util, used, total)
