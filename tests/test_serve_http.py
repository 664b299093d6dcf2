"""HTTP front end: conformance through the real tritonclient, and every bad request answered 4xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from serve_helpers import infer_json, request, serving
from tritonclient.utils import InferenceServerException

import inferforge
from inferforge.serve.auth import Auth
from inferforge.serve.server import BackgroundServer


@pytest.fixture(scope="module")
def server(mlp_package: Path) -> Iterator[BackgroundServer]:
    with serving(mlp_package, max_body_bytes=1 << 20) as running:
        yield running


@pytest.fixture(scope="module")
def reference(mlp_package: Path) -> inferforge.backends.base.Runner:
    return inferforge.load(mlp_package)


def _client(server: BackgroundServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.http_url)


def test_health_and_metadata_through_tritonclient(server: BackgroundServer) -> None:
    client = _client(server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1") and not client.is_model_ready("mlp", "7")
    assert client.get_server_metadata()["name"] == "inferforge"
    meta = client.get_model_metadata("mlp")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 5]}]
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] >= 1 and config["input"][0]["dims"] == [16]
    assert "dynamic_batching" in config


@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_the_runner(server: BackgroundServer, reference, binary: bool) -> None:
    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = _client(server).infer("mlp", [tensor], request_id="abc",
                                   outputs=[triton.InferRequestedOutput("output", binary_data=binary)])
    np.testing.assert_allclose(result.as_numpy("output"), reference({"x": x})["output"], rtol=1e-5, atol=1e-5)
    assert result.get_response()["id"] == "abc"


def test_statistics_count_samples_and_batches(server: BackgroundServer) -> None:
    x = np.ones((4, 16), np.float32)
    before = _client(server).get_inference_statistics("mlp")["model_stats"][0]["inference_count"]
    status, _, _ = request(server, "POST", "/v2/models/mlp/infer", infer_json(x))
    assert status == 200
    stats = _client(server).get_inference_statistics("mlp")["model_stats"][0]
    assert stats["inference_count"] == before + 4  # samples, not requests


BAD_REQUESTS = {
    "unknown model": ("/v2/models/nope/infer", infer_json(np.ones((1, 16), np.float32)), {}, 404, "unknown model"),
    "wrong datatype": ("/v2/models/mlp/infer", {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "INT64",
                                                            "data": [1] * 16}]}, {}, 400, "datatype INT64"),
    "wrong shape": ("/v2/models/mlp/infer", {"inputs": [{"name": "x", "shape": [1, 15], "datatype": "FP32",
                                                         "data": [0.5] * 15}]}, {}, 400, "dimension 1 is 15"),
    "missing input": ("/v2/models/mlp/infer", {"inputs": [{"name": "y", "shape": [1, 16], "datatype": "FP32",
                                                           "data": [0.5] * 16}]}, {}, 400, "missing input(s) x"),
    "data length": ("/v2/models/mlp/infer", {"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32",
                                                         "data": [0.5] * 16}]}, {}, 400, "holds 32 elements"),
    "malformed json": ("/v2/models/mlp/infer", b'{"inputs": [', {}, 400, "not valid JSON"),
    "binary header past body": ("/v2/models/mlp/infer", b'{"inputs": []}', {"Inference-Header-Content-Length": "999"},
                                400, "Inference-Header-Content-Length"),
    "binary size past data": ("/v2/models/mlp/infer",
                              json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                                      "parameters": {"binary_data_size": 64}}]}).encode() + b"\0" * 8,
                              {"Inference-Header-Content-Length": "97"}, 400, "binary_data_size 64"),
    "unknown output": ("/v2/models/mlp/infer", {**infer_json(np.ones((1, 16), np.float32)),
                                                "outputs": [{"name": "logits"}]}, {}, 400, "logits"),
    "oversized body": ("/v2/models/mlp/infer", b"[" + b"0," * (1 << 20) + b"0]", {}, 413, "larger than the limit"),
    "not an endpoint": ("/v2/models/mlp/explode", b"{}", {}, 404, "not an endpoint"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_4xx_with_a_reason_and_the_server_stays_healthy(server: BackgroundServer, case: str) -> None:
    path, body, headers, want_status, want_text = BAD_REQUESTS[case]
    if case == "binary size past data":
        head = body.split(b"\0")[0]
        headers = {"Inference-Header-Content-Length": str(len(head))}
    status, response_headers, payload = request(server, "POST", path, body, headers)
    assert status == want_status, payload
    error = json.loads(payload)["error"]
    assert want_text in error, error
    assert response_headers.get("X-Request-Id")
    assert _client(server).is_server_ready()
    ok, _, _ = request(server, "POST", "/v2/models/mlp/infer", infer_json(np.ones((1, 16), np.float32)))
    assert ok == 200


def test_tritonclient_sees_the_error_message(server: BackgroundServer) -> None:
    tensor = triton.InferInput("x", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException, match="dimension 1 is 4, expected 16"):
        _client(server).infer("mlp", [tensor])


def test_batch_above_max_batch_size_is_refused(mlp_package: Path) -> None:
    with serving(mlp_package, batching={"max_batch_size": 4}) as server:
        status, _, payload = request(server, "POST", "/v2/models/mlp/infer", infer_json(np.ones((5, 16), np.float32)))
        assert status == 400 and b"max_batch_size 4" in payload


def test_tokens_guard_inference_and_the_repository_api(mlp_package: Path) -> None:
    with serving(mlp_package, auth=Auth(token="s3cret", admin_token="adm1n")) as server:
        assert request(server, "GET", "/v2/health/ready")[0] == 200  # probes need no token
        body = infer_json(np.ones((1, 16), np.float32))
        assert request(server, "POST", "/v2/models/mlp/infer", body)[0] == 401
        assert request(server, "POST", "/v2/models/mlp/infer", body, {"Authorization": "Bearer wrong"})[0] == 401
        assert request(server, "POST", "/v2/models/mlp/infer", body, {"Authorization": "Bearer s3cret"})[0] == 200
        client = triton.InferenceServerClient(server.http_url)
        assert client.get_model_metadata("mlp", headers={"Authorization": "Bearer s3cret"})["name"] == "mlp"
        assert request(server, "POST", "/v2/repository/index", b"")[0] == 401
        status, _, payload = request(server, "POST", "/v2/repository/index", b"", {"Authorization": "Bearer s3cret"})
        assert status == 200 and json.loads(payload) == [{"name": "mlp", "version": "1", "state": "READY"}]
        unload = "/v2/repository/models/mlp/unload"
        assert request(server, "POST", unload, b"", {"Authorization": "Bearer s3cret"})[0] == 401  # admin only


def test_repository_api_is_off_without_an_admin_token(server: BackgroundServer) -> None:
    status, _, payload = request(server, "POST", "/v2/repository/models/mlp/unload", b"")
    assert status == 403 and b"--admin-token" in payload
    assert _client(server).is_model_ready("mlp")


def test_metrics_show_requests_batches_and_state(server: BackgroundServer) -> None:
    request(server, "POST", "/v2/models/mlp/infer", infer_json(np.ones((3, 16), np.float32)))
    status, _, payload = request(server, "GET", "/metrics")
    text = payload.decode()
    assert status == 200
    assert 'inferforge_requests_total{model="mlp",protocol="http"}' in text
    assert 'inferforge_batch_size_bucket{le="4.0",model="mlp"}' in text
    assert 'inferforge_model_state{model="mlp",state="READY",version="1"} 1.0' in text
    assert "inferforge_queue_duration_seconds_count" in text
