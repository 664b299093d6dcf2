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
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from inferforge.errors import InferforgeError, ProtocolError
from inferforge.serve import kserve_v2_pb2
from inferforge.serve.auth import Auth
from inferforge.serve.endpoints import V2Endpoints
from inferforge.serve.grpc import METHOD_ACCESS, build_grpc_server, decode_infer_request
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

    def values(enum: Any) -> dict[str, int]:
        return {v.name: v.number for v in enum.values}

    ours = kserve_v2_pb2.DESCRIPTOR
    standard = {**model_config_pb2.DESCRIPTOR.message_types_by_name, **service_pb2.DESCRIPTOR.message_types_by_name}
    for name, message in ours.message_types_by_name.items():
        assert fields(message) == fields(standard[name]), name
        for enum in message.enum_types:
            assert values(enum) == values(standard[name].enum_types_by_name[enum.name]), f"{name}.{enum.name}"
    assert values(ours.enum_types_by_name["DataType"]) == values(model_config_pb2.DESCRIPTOR.enum_types_by_name[
        "DataType"])
    assert {m.name for m in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods} >= set(
        METHOD_ACCESS)


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


def _infer_message(shape: list[int], raw: list[bytes] | None = None, datatype: str = "FP32", model: str = MODEL,
                   version: str = "", **parameters: Any) -> Any:
    request = kserve_v2_pb2.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name=INPUT, datatype=datatype, shape=shape)
    request.raw_input_contents.extend([bytes(16 * 4)] if raw is None else raw)
    for key, value in parameters.items():
        setattr(request.parameters[key], "string_param" if isinstance(value, str) else "int64_param", value)
    return request


@pytest.mark.parametrize("request_message, status, fragment", [
    (_infer_message([0, 2**62], [b""]), "INVALID_ARGUMENT", "input 'x'"),  # answered INTERNAL before issue 17
    (_infer_message([0] * 65, [b""]), "INVALID_ARGUMENT", "input 'x'"),
    (_infer_message([-1, 16]), "INVALID_ARGUMENT", "non-negative"),
    (_infer_message([2**24, 16]), "INVALID_ARGUMENT", "needs 1073741824 bytes"),
    (_infer_message([1, 16], [bytes(64), bytes(64)]), "INVALID_ARGUMENT", "raw_input_contents has 2 entries"),
    (_infer_message([1, 16], datatype="FP99"), "INVALID_ARGUMENT", "unknown datatype"),
    (_infer_message([1], [b"\x05\x00\x00\x00ab"], datatype="BYTES"), "INVALID_ARGUMENT", "runs past"),
    (_infer_message([1, 16], model="ghost"), "NOT_FOUND", "unknown model 'ghost'"),
    (_infer_message([1, 16], version="7"), "NOT_FOUND", "not 7"),
    (_infer_message([1, 16], timeout="soon"), "INVALID_ARGUMENT", "timeout"),
    (_infer_message([1, 16], timeout=-5), "INVALID_ARGUMENT", "timeout"),
])
def test_malformed_infer_requests_are_the_clients_mistake(served: Serving, request_message: Any, status: str,
                                                         fragment: str) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        _call(served.address, "ModelInfer", request_message, kserve_v2_pb2.ModelInferResponse)
    assert exc.value.code().name == status, exc.value.details()
    assert fragment in exc.value.details()
    assert served.client.is_server_ready()


def _call_bytes(address: str, method: str, body: bytes) -> grpc.StatusCode:
    """Send ``body`` as it is (not necessarily a valid message); the status code that came back."""
    with grpc.insecure_channel(address) as channel:
        stub = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        try:
            stub(body, timeout=30)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_a_body_that_is_not_the_message_is_invalid(served: Serving) -> None:
    for method in ("ModelInfer", "ModelConfig", "RepositoryIndex"):
        assert _call_bytes(served.address, method, b"\xff\xff\xff\xff") == grpc.StatusCode.INVALID_ARGUMENT


def test_fuzzed_infer_requests_never_answer_internal(served: Serving) -> None:
    """A few hundred malformed ModelInferRequests from a seeded generator (reproducible): every answer is a
    client error or a success, the server stays alive and answers a good request after, and its memory stays put."""
    rng = np.random.default_rng(17)
    before = resident_bytes()
    codes: dict[str, int] = {}
    with grpc.insecure_channel(served.address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for _ in range(400):
            try:
                infer(random_infer_request(rng, MODEL, INPUT), timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
                assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.details()
            codes[code.name] = codes.get(code.name, 0) + 1
    assert codes.get("INVALID_ARGUMENT", 0) > 200, codes  # the generator mostly sends what must be refused
    assert served.client.is_server_live()
    assert served.client.infer(MODEL, [_input(np.ones((1, 16), np.float32))]).as_numpy(OUTPUT).shape == (1, 5)
    assert resident_bytes() - before < 256 << 20


def test_repository_rpcs_follow_the_tokens(mlp_package: Path) -> None:
    """Index, config and statistics take the inference token; load and unload the admin token."""
    with _serving(mlp_package, Auth(token="s3cret", admin_token="adm1n")) as serving:
        client, user, admin = serving.client, {"authorization": "Bearer s3cret"}, {"authorization": "Bearer adm1n"}
        for call in (client.get_model_repository_index, lambda **kw: client.get_model_config(MODEL, **kw),
                     lambda **kw: client.get_inference_statistics(MODEL, **kw)):
            with pytest.raises(InferenceServerException) as exc:
                call()
            assert _status(exc) == "StatusCode.UNAUTHENTICATED"
            assert call(headers=user) is not None
        with pytest.raises(InferenceServerException) as exc:
            client.unload_model(MODEL, headers=user)
        assert _status(exc) == "StatusCode.UNAUTHENTICATED"
        client.unload_model(MODEL, headers=admin)
        assert not client.is_model_ready(MODEL, headers=user)
        with pytest.raises(InferenceServerException) as exc:
            client.load_model("ghost", headers=admin)
        assert _status(exc) == "StatusCode.NOT_FOUND"
        client.load_model(MODEL, headers=admin)
        assert client.is_model_ready(MODEL, headers=user)
        index = client.get_model_repository_index(headers=user, as_json=True)
        assert index["models"] == [{"name": MODEL, "version": "1", "state": "READY"}]


def test_load_and_unload_are_off_without_an_admin_token(client: Any) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.unload_model(MODEL)
    assert _status(exc) == "StatusCode.PERMISSION_DENIED" and "--admin-token" in exc.value.message()
    assert client.is_model_ready(MODEL)


# What the fuzzer draws from: dims a hostile client would declare, datatypes valid and not.
FUZZ_DIMS = (0, 1, 2, 16, 2**31, 2**62, 2**63 - 1, -1, -(2**63))
FUZZ_DATATYPES = ("FP32", "FP32", "FP16", "BF16", "INT8", "INT64", "UINT64", "BOOL", "BYTES", "FP99", "", "fp32")
FUZZ_CONTENTS = {"bool_contents": lambda rng, n: [bool(v) for v in rng.integers(0, 2, n)],
                 "int_contents": lambda rng, n: [int(v) for v in rng.integers(-2**31, 2**31, n)],
                 "int64_contents": lambda rng, n: [int(v) for v in rng.integers(-2**63, 2**63 - 1, n)],
                 "uint_contents": lambda rng, n: [int(v) for v in rng.integers(0, 2**32, n)],
                 "uint64_contents": lambda rng, n: [int(v) for v in rng.integers(0, 2**63, n)],
                 "fp32_contents": lambda rng, n: [float(v) for v in rng.standard_normal(n)],
                 "fp64_contents": lambda rng, n: [float("nan")] * n,
                 "bytes_contents": lambda rng, n: [rng.bytes(int(rng.integers(0, 8))) for _ in range(n)]}


def random_infer_request(rng: np.random.Generator, model: str, input_name: str) -> bytes:
    """One ModelInferRequest body, mostly malformed: wrong shapes, sizes, datatypes, counts, names, parameters;
    one in ten is random bytes rather than a message."""
    if rng.random() < 0.1:
        return rng.bytes(int(rng.integers(1, 64)))
    # Mostly the right model: a wrong name or version is refused before the tensors are read.
    request = kserve_v2_pb2.ModelInferRequest(
        model_name=model if rng.random() < 0.9 else str(rng.choice(["", "ghost"])),
        model_version=str(rng.choice(["", "1"])) if rng.random() < 0.9 else str(rng.choice(["0", "-1", "v1"])))
    raw = rng.random() < 0.6
    for _ in range(int(rng.integers(0, 3)) + 1):
        if rng.random() < 0.4:
            shape = [int(rng.integers(0, 4)), 16]
        else:
            shape = [int(rng.choice(FUZZ_DIMS)) for _ in range(int(rng.integers(0, 5)))]
        tensor = request.inputs.add(name=str(rng.choice([input_name, input_name, "", "y"])),
                                    datatype=str(rng.choice(FUZZ_DATATYPES)), shape=shape)
        count = int(rng.choice([0, 16, 64, int(rng.integers(0, 200))]))
        if raw:
            request.raw_input_contents.append(rng.bytes(count * int(rng.choice([1, 4]))))
        else:
            field = str(rng.choice(list(FUZZ_CONTENTS)))
            getattr(tensor.contents, field).extend(FUZZ_CONTENTS[field](rng, count))
    if rng.random() < 0.15:
        request.raw_input_contents.append(b"one entry too many")
    if rng.random() < 0.3:
        parameter = request.parameters[str(rng.choice(["timeout", "timeout", "priority", "binary_data_output"]))]
        choice = str(rng.choice(["int64_param", "uint64_param", "string_param", "bool_param", "double_param"]))
        value = {"int64_param": int(rng.choice([-(2**63), -1, 0, 1, 2**62])), "uint64_param": 2**64 - 1,
                 "string_param": "soon", "bool_param": True, "double_param": float("nan")}[choice]
        setattr(parameter, choice, value)
    if rng.random() < 0.2:
        request.outputs.add(name=str(rng.choice([OUTPUT, "logits", ""])))
    return bytes(request.SerializeToString())


def resident_bytes() -> int:
    """This process's resident memory now (Linux), where the in-process server keeps what requests allocate."""
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
