"""The v2 endpoints written once: aiohttp, Ray and gRPC answer from one route table, one auth rule, one error
mapping. Each test enumerates the tables, so an endpoint added later is held to the same rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc
from serve_helpers import request, serving
from tritonclient.utils import InferenceServerException

from inferforge.errors import ProtocolError, SpecError
from inferforge.serve import kserve_v2_pb2
from inferforge.serve.auth import Access, Auth
from inferforge.serve.endpoints import Route, V2Endpoints, failure
from inferforge.serve.grpc import METHOD_ACCESS, SERVICE
from inferforge.serve.ray_http import REPLICA_ROUTES, SERVER_ROUTES, NoModels, OneModel, StarletteAdapter
from inferforge.serve.server import BackgroundServer

MODEL = "mlp"
TOKEN, ADMIN = "s3cret", "adm1n"
WITH_TOKEN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(mlp_package: Path) -> Iterator[BackgroundServer]:
    with serving(mlp_package, auth=Auth(token=TOKEN, admin_token=ADMIN), grpc_port=0) as running:
        yield running


def _path(route: Route) -> str:
    return route.pattern.replace("{model}", MODEL).replace("{version}", "1")


def _ray_apps(server: BackgroundServer) -> dict[str, StarletteAdapter]:
    """The two Ray applications' adapters, over the server's own model (no cluster needed to route)."""
    model = server.server.repository.get(MODEL)
    auth = Auth(token=TOKEN, admin_token=ADMIN)
    return {"replica": StarletteAdapter(V2Endpoints(OneModel(model)), auth, f"/v2/models/{MODEL}",
                                        REPLICA_ROUTES, "not an endpoint"),
            "server": StarletteAdapter(V2Endpoints(NoModels([MODEL])), auth, "/v2",
                                       SERVER_ROUTES, "no such model or endpoint")}


def _starlette(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    from starlette.requests import Request

    sent = {**(headers or {}), "content-length": str(len(body))}
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"", "scheme": "http",
             "server": ("127.0.0.1", 8000), "headers": [(k.lower().encode(), v.encode()) for k, v in sent.items()]}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def test_only_health_and_metrics_are_public_and_only_load_and_unload_are_admin(server: BackgroundServer) -> None:
    routes = server.server.endpoints.routes()
    assert {r.name for r in routes if r.access is Access.PUBLIC} == {"live", "ready", "metrics"}
    assert {r.name for r in routes if r.access is Access.ADMIN} == {"repository_load", "repository_unload"}
    assert {m for m, a in METHOD_ACCESS.items() if a is Access.PUBLIC} == {"ServerLive", "ServerReady"}
    names = {r.name for r in routes}
    assert names >= REPLICA_ROUTES | SERVER_ROUTES  # a renamed route cannot drop out of Ray silently


def test_every_guarded_http_route_refuses_a_request_without_its_token(server: BackgroundServer) -> None:
    for route in server.server.endpoints.routes():
        body = b"{}" if route.method == "POST" else None
        path = _path(route)
        if route.access is Access.PUBLIC:
            assert request(server, route.method, path, body)[0] == 200, route.name
            continue
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            status, _, payload = request(server, route.method, path, body, headers)
            assert status == 401 and "error" in json.loads(payload), (route.name, headers, payload)
        status, _, payload = request(server, route.method, path, body, WITH_TOKEN)
        if route.access is Access.ADMIN:  # the inference token does not open the repository API
            assert status == 401, (route.name, payload)
        else:  # past the guard (an empty infer body is then a 400, not a 401)
            assert status in (200, 400), (route.name, status, payload)
    status, _, payload = request(server, "POST", "/v2/repository/index", b"", WITH_TOKEN)
    assert status == 200 and json.loads(payload)[0]["name"] == MODEL


def test_every_guarded_rpc_refuses_a_call_without_the_token(server: BackgroundServer) -> None:
    messages = {"ModelReady": {"name": MODEL}, "ModelMetadata": {"name": MODEL}, "ModelInfer": {"model_name": MODEL},
                "ModelConfig": {"name": MODEL}, "ModelStatistics": {"name": MODEL}}
    with grpc.insecure_channel(server.grpc_url) as channel:
        def call(method: str, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
            stub = channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=getattr(kserve_v2_pb2, f"{method}Response").FromString)
            return stub(getattr(kserve_v2_pb2, f"{method}Request")(**messages.get(method, {})), timeout=30,
                        metadata=metadata)

        for method, access in METHOD_ACCESS.items():
            if access is Access.PUBLIC:
                call(method)
                continue
            wrong = ((), (("authorization", "Bearer wrong"),))
            if access is Access.ADMIN:  # the inference token does not open the repository API
                wrong += ((("authorization", f"Bearer {TOKEN}"),),)
            for metadata in wrong:
                with pytest.raises(grpc.RpcError) as refused:
                    call(method, metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
            if access is Access.TOKEN and method != "ModelInfer":  # an empty infer request is refused for its
                call(method, (("authorization", f"Bearer {TOKEN}"),))  # inputs, past the guard
        undeclared = channel.unary_unary(f"/{SERVICE}/NoSuchMethod")  # raw bytes in and out
        with pytest.raises(grpc.RpcError) as unknown:  # a method nobody declared stays closed
            undeclared(b"", timeout=30)
        assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_every_guarded_ray_route_refuses_a_request_without_the_token(server: BackgroundServer) -> None:
    for app, adapter in _ray_apps(server).items():
        for route in adapter.routes:
            answer = server.call(adapter(_starlette(route.method, _path(route), b"{}")))
            want = 200 if route.access is Access.PUBLIC else 401
            assert answer.status_code == want, (app, route.name, answer.body)
            if route.access is not Access.PUBLIC:
                opened = server.call(adapter(_starlette(route.method, _path(route), b"{}", WITH_TOKEN)))
                assert opened.status_code in (200, 400), (app, route.name, opened.body)
        stray = server.call(adapter(_starlette("GET", "/v2/models/nope/config")))
        assert stray.status_code == 401  # even a 404 waits for the token: it names the served models


BAD_REQUESTS = {
    "wrong datatype": (np.ones((1, 16), np.int64), "INT64", "datatype INT64, expected FP32"),
    "wrong width": (np.ones((1, 15), np.float32), "FP32", "dimension 1 is 15, expected 16"),
    "wrong rank": (np.ones((1, 2, 16), np.float32), "FP32", "has rank 3"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_the_same_400_over_http_grpc_and_ray(server: BackgroundServer, case: str) -> None:
    x, datatype, fragment = BAD_REQUESTS[case]
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}]}
    status, _, payload = request(server, "POST", f"/v2/models/{MODEL}/infer", body, WITH_TOKEN)
    http_error = json.loads(payload)["error"]

    ray = server.call(_ray_apps(server)["replica"](_starlette("POST", f"/v2/models/{MODEL}/infer",
                                                              json.dumps(body).encode(), WITH_TOKEN)))
    ray_error = json.loads(ray.body)["error"]

    client = tritonclient_grpc.InferenceServerClient(server.grpc_url)
    tensor = tritonclient_grpc.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as refused:
        client.infer(MODEL, [tensor], headers={"authorization": f"Bearer {TOKEN}"})
    client.close()

    assert (status, ray.status_code, str(refused.value.status())) == (400, 400, "StatusCode.INVALID_ARGUMENT")
    assert http_error == ray_error == refused.value.message(), (http_error, ray_error, refused.value.message())
    assert fragment in http_error


def test_one_error_mapping() -> None:
    assert failure(SpecError("inputs do not fit")).status == 400
    busy = ProtocolError("queue is full", 503, retry_after_s=0.1)
    assert failure(busy) is busy
    crash = failure(RuntimeError("kernel crashed\n  at frame 3"))
    assert crash.status == 500 and str(crash) == "RuntimeError: kernel crashed at frame 3"


def test_routes_match_whole_segments_only() -> None:
    route = Route("infer", "POST", "/v2/models/{model}/infer", Access.TOKEN, None)  # type: ignore[arg-type]
    assert route.match("POST", "/v2/models/mlp/infer/") == {"model": "mlp"}
    assert route.match("GET", "/v2/models/mlp/infer") is None
    assert route.match("POST", "/v2/models/a/b/infer") is None
    assert route.match("POST", "/v2/models/mlp/inferx") is None
