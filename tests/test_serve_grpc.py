"""The gRPC front end, through the unmodified ``tritonclient.grpc`` a user would point at it."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc
from serve_helpers import serving
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from inferforge.errors import InferforgeError, ProtocolError
from inferforge.serve import kserve_v2_pb2
from inferforge.serve.auth import Auth
from inferforge.serve.endpoints import V2Endpoints
from inferforge.serve.grpc import build_grpc_server, decode_infer_request
from inferforge.serve.repository import ModelRepository

MODEL, INPUT, OUTPUT = "mlp", "x", "output"  # as the mlp_package manifest names them


@dataclass(frozen=True)
class Serving:
    """A running server: a connected tritonclient, its address, and a way to run code on its loop."""

    client: Any
    address: str
    repository: ModelRepository
    run: Callable[[Coroutine[Any, Any, Any]], Any]


@contextmanager
def _serving(package: Path, auth: Auth) -> Iterator[Serving]:
    """The whole server on loopback (gRPC on a free port, messages capped at 4 MiB) and a tritonclient."""
    with serving(package, auth=auth, grpc_port=0, max_body_bytes=4 << 20) as server:
        assert server.server.repository.ready, server.server.repository.index_json()
        client = tritonclient_grpc.InferenceServerClient(server.grpc_url)
        try:
            yield Serving(client, server.grpc_url, server.server.repository, server.call)
        finally:
            client.close()


@pytest.fixture(scope="module")
def served(mlp_package: Path) -> Iterator[Serving]:
    with _serving(mlp_package, Auth()) as serving:
        yield serving


@pytest.fixture
def client(served: Serving) -> Any:
    return served.client


def _input(array: np.ndarray, datatype: str = "FP32", name: str = INPUT) -> Any:
    tensor = tritonclient_grpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


def test_messages_match_the_standard_on_the_wire() -> None:
    """Every field has the standard's number, type and label (only those travel on the wire)."""
    def fields(message: Any) -> dict[str, Any]:
        out = {f.name: (f.number, f.type, f.is_repeated) for f in message.fields}
        for nested in message.nested_types:
            out.update({f"{nested.name}.{k}": v for k, v in fields(nested).items()})
        return out

    ours = kserve_v2_pb2.DESCRIPTOR.message_types_by_name
    standard = service_pb2.DESCRIPTOR.message_types_by_name
    for name, message in ours.items():
        assert fields(message) == fields(standard[name]), name
    assert {m.name for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods} >= {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"}


def test_health_and_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("no_such_model")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "inferforge" and "binary_tensor_data" in server["extensions"]
    model = client.get_model_metadata(MODEL, as_json=True)
    assert model["name"] == MODEL
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [(INPUT, "FP32", ["-1", "16"])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["outputs"]] == [(OUTPUT, "FP32", ["-1", "5"])]


def test_infer_matches_the_package(client: Any, mlp_package: Path) -> None:
    import inferforge

    x = np.random.default_rng(0).standard_normal((3, 16), dtype=np.float32)
    expected = inferforge.load(mlp_package)({INPUT: x})[OUTPUT]
    result = client.infer(MODEL, [_input(x)], request_id="req-7",
                          outputs=[tritonclient_grpc.InferRequestedOutput(OUTPUT)])
    assert result.get_response().id == "req-7"
    np.testing.assert_allclose(result.as_numpy(OUTPUT), expected, atol=1e-5, rtol=1e-5)
    every_output = client.infer(MODEL, [_input(x[:1])], timeout=5_000_000)  # no outputs named: all of them
    np.testing.assert_allclose(every_output.as_numpy(OUTPUT), expected[:1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model, inputs, status, fragment", [
    (MODEL, lambda: [_input(np.zeros((1, 16), np.float64), "FP64")], "INVALID_ARGUMENT", "datatype FP64"),
    (MODEL, lambda: [_input(np.zeros((1, 8), np.float32))], "INVALID_ARGUMENT", "dimension 1 is 8"),
    (MODEL, lambda: [_input(np.zeros((1, 16), np.float32), name="y")], "INVALID_ARGUMENT", "missing input(s) x"),
    ("no_such_model", lambda: [_input(np.zeros((1, 16), np.float32))], "NOT_FOUND", "unknown model"),
])
def test_bad_requests_get_their_status_and_the_server_stays_healthy(client: Any, model: str, inputs: Any,
                                                                    status: str, fragment: str) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.infer(model, inputs())
    assert _status(exc) == f"StatusCode.{status}"
    assert fragment in str(exc.value.message())
    assert "Traceback" not in str(exc.value.message())
    assert client.is_server_ready()
    assert client.infer(MODEL, [_input(np.ones((1, 16), np.float32))]).as_numpy(OUTPUT).shape == (1, 5)


def test_unknown_requested_output_is_invalid(client: Any) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.infer(MODEL, [_input(np.ones((1, 16), np.float32))],
                     outputs=[tritonclient_grpc.InferRequestedOutput("logits")])
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    assert "logits" in str(exc.value.message())


def test_bearer_token(mlp_package: Path) -> None:
    with _serving(mlp_package, Auth(token="s3cret")) as serving:
        guarded = serving.client
        assert guarded.is_server_live() and guarded.is_server_ready()  # probes stay open
        x = np.ones((2, 16), np.float32)
        for headers in (None, {"authorization": "Bearer wrong"}):
            with pytest.raises(InferenceServerException) as exc:
                guarded.infer(MODEL, [_input(x)], headers=headers)
            assert _status(exc) == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as exc:
            guarded.get_model_metadata(MODEL)
        assert _status(exc) == "StatusCode.UNAUTHENTICATED"
        result = guarded.infer(MODEL, [_input(x)], headers={"authorization": "Bearer s3cret"})
        assert result.as_numpy(OUTPUT).shape == (2, 5)


def _call(address: str, method: str, request: Any, response_type: Any, **kwargs: Any) -> Any:
    """One RPC with plain grpc and our messages, at the standard path, for what tritonclient never sends."""
    with grpc.insecure_channel(address) as channel:
        stub = channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=response_type.FromString)
        return stub(request, timeout=30, **kwargs)


def _typed_request(values: list[float], shape: list[int]) -> Any:
    request = kserve_v2_pb2.ModelInferRequest(model_name=MODEL, id="typed")
    request.parameters["timeout"].int64_param = 5_000_000
    request.inputs.add(name=INPUT, datatype="FP32", shape=shape).contents.fp32_contents.extend(values)
    return request


def test_typed_contents(served: Serving) -> None:
    x = np.random.default_rng(1).standard_normal((2, 16), dtype=np.float32)
    raw = served.client.infer(MODEL, [_input(x)]).as_numpy(OUTPUT)
    response = _call(served.address, "ModelInfer", _typed_request(x.ravel().tolist(), [2, 16]),
                     kserve_v2_pb2.ModelInferResponse)
    assert response.id == "typed" and [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        (OUTPUT, "FP32", [2, 5])]
    np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 5), raw,
                               atol=1e-6)
    with pytest.raises(grpc.RpcError) as exc:
        _call(served.address, "ModelInfer", _typed_request([0.0] * 15, [1, 16]), kserve_v2_pb2.ModelInferResponse)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x'" in exc.value.details() and "fp32_contents has 15" in exc.value.details()


def test_failures_map_to_codes_in_one_line(mlp_package: Path) -> None:
    with _serving(mlp_package, Auth()) as serving:
        model = serving.repository.get(MODEL)

        async def broken(request: Any) -> Any:
            raise RuntimeError("kernel crashed\n  at frame 3")

        model.infer = broken  # type: ignore[method-assign]
        x = np.ones((1, 16), np.float32)
        with pytest.raises(InferenceServerException) as exc:
            serving.client.infer(MODEL, [_input(x)])
        assert _status(exc) == "StatusCode.INTERNAL"
        assert exc.value.message() == "RuntimeError: kernel crashed at frame 3"

        serving.run(serving.repository.unload(MODEL))
        with pytest.raises(grpc.RpcError) as rpc:
            _call(serving.address, "ModelInfer", _typed_request(x.ravel().tolist(), [1, 16]),
                  kserve_v2_pb2.ModelInferResponse)
        assert rpc.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry after 1 s" in rpc.value.details()
        assert ("retry-after", "1") in tuple(rpc.value.trailing_metadata())


def test_a_busy_port_fails_loudly(served: Serving) -> None:
    host, port = served.address.split(":")

    async def second_server() -> None:
        build_grpc_server(V2Endpoints(served.repository), Auth(), host, int(port), max_message_bytes=1 << 20)

    with pytest.raises(InferforgeError, match="cannot listen on"):
        served.run(second_server())


def test_a_request_above_max_message_bytes_is_refused(client: Any) -> None:
    too_big = np.zeros((70_000, 16), np.float32)  # 4.5 MB against the fixture's 4 MiB cap
    with pytest.raises(InferenceServerException) as exc:
        client.infer(MODEL, [_input(too_big)])
    assert _status(exc) == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_ready()


def test_decode_typed_contents_and_parameters() -> None:
    request = kserve_v2_pb2.ModelInferRequest(id="r1")
    request.parameters["timeout"].int64_param = 250_000
    request.parameters["tag"].string_param = "a"
    request.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"hi", b""])
    request.inputs.add(name="flags", datatype="BOOL", shape=[1, 2]).contents.bool_contents.extend([True, False])
    request.inputs.add(name="small", datatype="INT8", shape=[1]).contents.int_contents.append(-3)
    decoded = decode_infer_request(request)
    assert decoded.id == "r1" and decoded.parameters == {"timeout": 250_000, "tag": "a"}
    assert decoded.timeout_s() == 0.25 and decoded.outputs is None
    assert decoded.inputs["text"].tolist() == [b"hi", b""]
    assert decoded.inputs["flags"].dtype == np.bool_ and decoded.inputs["flags"].shape == (1, 2)
    assert decoded.inputs["small"].dtype == np.int8 and decoded.inputs["small"].tolist() == [-3]

    for datatype, fill, fragment in [("INT8", lambda c: c.int_contents.append(300), "does not fit INT8"),
                                     ("FP16", lambda c: None, "send it in raw_input_contents"),
                                     ("FP99", lambda c: None, "unknown datatype")]:
        bad = kserve_v2_pb2.ModelInferRequest()
        fill(bad.inputs.add(name="t", datatype=datatype, shape=[1]).contents)
        with pytest.raises(ProtocolError, match=fragment) as exc:
            decode_infer_request(bad)
        assert exc.value.status == 400 and "'t'" in str(exc.value)
