"""What Triton's own tools read, against a default server (no token, no admin token), unmodified.

``tritonclient`` (gRPC and HTTP) discovers the models, checks health, describes, configures, reads
statistics and infers; a Triton dashboard finds its metric names (``nv_inference_*``, and
``nv_gpu_*`` where a GPU is present) on ``/metrics``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from serve_helpers import request, serving
from tritonclient.utils import InferenceServerException

from inferforge.serve.batcher import BatchTiming
from inferforge.serve.metrics import NvmlCollector, ServerMetrics, open_nvml
from inferforge.serve.server import BackgroundServer

MODEL, INPUT, OUTPUT = "mlp", "x", "output"
X = np.arange(3 * 16, dtype=np.float32).reshape(3, 16) / 48


@pytest.fixture(scope="module")
def server(mlp_package: Path) -> Iterator[BackgroundServer]:
    with serving(mlp_package, grpc_port=0) as server:
        yield server


@pytest.fixture(scope="module")
def grpc_client(server: BackgroundServer) -> Iterator[Any]:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(server: BackgroundServer) -> Iterator[Any]:
    client = triton_http.InferenceServerClient(server.http_url)
    yield client
    client.close()


def test_grpc_discovers_describes_configures_and_infers(grpc_client: Any) -> None:
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    index = grpc_client.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": MODEL, "version": "1", "state": "READY"}]
    assert grpc_client.is_model_ready(MODEL)
    metadata = grpc_client.get_model_metadata(MODEL, as_json=True)
    assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [(INPUT, "FP32")]
    config = grpc_client.get_model_config(MODEL, as_json=True)["config"]
    assert config["name"] == MODEL and config["max_batch_size"] >= 1
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [(INPUT, "TYPE_FP32", ["16"])]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [(OUTPUT, "TYPE_FP32", ["5"])]
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] >= 1

    tensor = triton_grpc.InferInput(INPUT, list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    assert grpc_client.infer(MODEL, [tensor]).as_numpy(OUTPUT).shape == (3, 5)
    stats = grpc_client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [(MODEL, "1")]
    assert int(stats[0]["inference_stats"]["success"]["count"]) >= 1
    assert int(stats[0]["inference_count"]) >= 3 and int(stats[0]["execution_count"]) >= 1
    every_model = grpc_client.get_inference_statistics(as_json=True)["model_stats"]
    assert [s["name"] for s in every_model] == [MODEL]


def test_http_describes_configures_and_infers(http_client: Any, grpc_client: Any) -> None:
    """What tritonclient.http reads the same way as gRPC, discovery included (open to the inference token on a
    default server, as Triton's index is)."""
    assert http_client.is_server_live() and http_client.is_server_ready() and http_client.is_model_ready(MODEL)
    assert http_client.get_model_repository_index() == [{"name": MODEL, "version": "1", "state": "READY"}]
    assert http_client.get_model_metadata(MODEL)["name"] == MODEL
    config = http_client.get_model_config(MODEL)
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [(INPUT, "TYPE_FP32", [16])]
    tensor = triton_http.InferInput(INPUT, list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    via_http = http_client.infer(MODEL, [tensor]).as_numpy(OUTPUT)
    grpc_tensor = triton_grpc.InferInput(INPUT, list(X.shape), "FP32")
    grpc_tensor.set_data_from_numpy(X)
    np.testing.assert_allclose(via_http, grpc_client.infer(MODEL, [grpc_tensor]).as_numpy(OUTPUT), atol=1e-6)
    stats = http_client.get_inference_statistics(MODEL)["model_stats"]
    assert stats[0]["name"] == MODEL and stats[0]["inference_stats"]["success"]["count"] >= 1


def _metric(text: str, name: str) -> float:
    found = re.search(rf'^{name}{{model="{MODEL}",version="1"}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name} is missing from /metrics"
    return float(found.group(1))


def test_metrics_carry_tritons_names(server: BackgroundServer, grpc_client: Any) -> None:
    tensor = triton_grpc.InferInput(INPUT, list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    grpc_client.infer(MODEL, [tensor])
    wrong = triton_grpc.InferInput(INPUT, [1, 4], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException):
        grpc_client.infer(MODEL, [wrong])
    status, _, payload = request(server, "GET", "/metrics")
    text = payload.decode()
    assert status == 200 and "# TYPE nv_inference_request_success counter" in text
    assert _metric(text, "nv_inference_request_success") >= 1
    assert _metric(text, "nv_inference_request_failure") >= 1
    assert _metric(text, "nv_inference_count") >= 3
    assert _metric(text, "nv_inference_exec_count") >= 1
    assert _metric(text, "nv_inference_queue_duration_us") >= 0
    assert _metric(text, "nv_inference_compute_infer_duration_us") > 0
    assert 'inferforge_requests_total{model="mlp",protocol="grpc"}' in text  # inferforge's own stay beside them
    if open_nvml() is None:  # as Triton: no GPU, no GPU metrics
        assert "nv_gpu_" not in text


def test_triton_counters_go_to_the_serving_version() -> None:
    metrics = ServerMetrics()
    metrics.set_state(MODEL, "1", "READY")
    metrics.record_batch(MODEL, BatchTiming(3, 4, 2, (0.001, 0.003), 0.002, True), 0)
    metrics.set_state(MODEL, "2", "READY")
    metrics.record_request(MODEL, "grpc", 0.004, 200)
    metrics.record_request("_unknown", "grpc", 0.001, 404)  # an unknown model counts nowhere, as in Triton
    text = metrics.exposition().decode()
    assert 'nv_inference_count{model="mlp",version="1"} 3\n' in text
    assert 'nv_inference_queue_duration_us{model="mlp",version="1"} 4000\n' in text
    assert 'nv_inference_compute_infer_duration_us{model="mlp",version="1"} 4000\n' in text  # 2 ms, 2 requests
    assert 'nv_inference_request_success{model="mlp",version="2"} 1\n' in text
    assert 'nv_inference_request_duration_us{model="mlp",version="2"} 4000\n' in text
    assert "_unknown" not in "".join(line for line in text.splitlines() if line.startswith("nv_"))


class _FakeNvml:
    """pynvml's calls that the collector makes, for one GPU."""

    class _Memory:
        used, total = 3 << 30, 80 << 30

    class _Rates:
        gpu = 42

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 (pynvml's names)
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:  # noqa: N802
        return self._Memory()

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:  # noqa: N802
        return self._Rates()

    def nvmlDeviceGetUUID(self, handle: int) -> str:  # noqa: N802
        return "GPU-0f0e"


def test_gpu_metrics_under_tritons_names() -> None:
    families = {f.name: f for f in NvmlCollector(_FakeNvml()).collect()}
    assert [(s.labels, s.value) for s in families["nv_gpu_utilization"].samples] == [({"gpu_uuid": "GPU-0f0e"}, 0.42)]
    assert families["nv_gpu_memory_used_bytes"].samples[0].value == 3 << 30
    assert families["nv_gpu_memory_total_bytes"].samples[0].value == 80 << 30
    assert families["inferforge_gpu_utilization_ratio"].samples[0].labels == {"gpu": "0"}
