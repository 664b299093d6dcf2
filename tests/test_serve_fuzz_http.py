"""Property-based HTTP requests against a real in-process server: no 5xx for a client's mistake, a JSON reason
for every error, the server alive and its memory bounded afterwards.

Requests are drawn from ``serve/openapi.json``, the description of the v2 HTTP API kept next to the
server: each operation's path (its parameters from their schemas, or odd text) and, for inference, bodies
built from the request schema with any part of them replaced by arbitrary JSON, plus raw bytes, binary
tails and Content-Encoding headers. Bounded: a fixed number of examples, each one request.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import infer_json, request, serving

import inferforge.serve
from inferforge.serve.auth import Access
from inferforge.serve.endpoints import V2Endpoints
from inferforge.serve.server import BackgroundServer

OPENAPI = json.loads((Path(inferforge.serve.__file__).parent / "openapi.json").read_text())
MAX_RSS_GROWTH_MB = 150

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=4),
                           max_leaves=12)
NUMBERS = st.integers(-(2**70), 2**70) | st.floats() | st.sampled_from([0, -1, 2**31, 2**63, 2**64])
# Values that broke the server once (issue 17), offered wherever the schema takes a value of their kind.
EDGE = {"array": st.sampled_from([[0, 10**30], [0, 2**64], [0] * 40, [1, 16], [[[[0.5]]]] * 16]),
        "string": st.sampled_from(["x", "mlp", "\ud800", "FP32", "BYTES", "a" * 70_000]),
        "integer": st.sampled_from([-5, 0, 1, 2**64, 10**30])}
DEEP = b"[" * 100_000


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node: Any = OPENAPI
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def from_schema(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values that follow ``schema`` (the JSON Schema subset openapi.json uses), any part of which may
    instead be arbitrary JSON: mostly well-formed requests that are wrong in one place."""
    schema = _resolve(schema)
    if "enum" in schema:
        conforming: st.SearchStrategy[Any] = st.sampled_from(schema["enum"])
    elif "oneOf" in schema:
        conforming = st.one_of([from_schema(s, depth + 1) for s in schema["oneOf"]])
    else:
        kind = schema.get("type")
        if kind == "object":
            properties = schema.get("properties", {})
            required = [k for k in schema.get("required", []) if k in properties]
            conforming = st.fixed_dictionaries({k: from_schema(properties[k], depth + 1) for k in required},
                                               optional={k: from_schema(v, depth + 1) for k, v in properties.items()
                                                         if k not in required})
        elif kind == "array":
            conforming = st.lists(from_schema(schema.get("items", {}), depth + 1),
                                  min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 4), 4))
            conforming |= EDGE["array"]
        elif kind == "integer":
            conforming = st.integers(min_value=schema.get("minimum"), max_value=2**20) | EDGE["integer"]
        elif kind == "number":
            conforming = NUMBERS
        elif kind == "boolean":
            conforming = st.booleans()
        elif kind == "string":
            conforming = st.text(max_size=12) | EDGE["string"]
        else:
            conforming = JSON_VALUES
    return conforming | JSON_VALUES if depth > 0 else conforming


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, operation) for path, item in OPENAPI["paths"].items()
            for method, operation in item.items()]


# Mostly the served model and version, so that most requests reach the model; sometimes anything.
PATH_VALUES = {"model": ("mlp", st.sampled_from(["nope", "", "..", "%00"]) | st.text(max_size=20)),
               "version": ("1", st.sampled_from(["2", "-1", "0x1", "99999999999999999999"]) | st.text(max_size=8))}

MLP_REQUEST = st.builds(lambda rows, values, dtype: {"inputs": [{"name": "x", "shape": [rows, 16], "datatype": dtype,
                                                                  "data": values[:rows * 16]}]},
                        st.integers(0, 3), st.lists(NUMBERS, min_size=48, max_size=48),
                        st.sampled_from(["FP32", "FP16", "INT8", "BOOL", "BYTES"]))


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request for the mlp with one to three of its input's fields (and perhaps the request's
    parameters) drawn from their schemas instead: wrong in few places, so it gets past the early checks."""
    item: dict[str, Any] = {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}
    properties = _resolve({"$ref": "#/components/schemas/RequestInput"})["properties"]
    for name in draw(st.sets(st.sampled_from(sorted(properties)), min_size=1, max_size=3)):
        item[name] = draw(from_schema(properties[name], depth=1))
    document: dict[str, Any] = {"inputs": [item]}
    if draw(st.booleans()):
        document["parameters"] = draw(from_schema({"$ref": "#/components/schemas/RequestParameters"}, depth=1))
    return document


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    operations = _operations()
    with_body = [o for o in operations if "requestBody" in o[2]]  # inference: half the requests, the most to check
    method, template, operation = draw(st.sampled_from(operations) | st.sampled_from(with_body))
    def value(match: re.Match[str]) -> str:
        served, other = PATH_VALUES[match.group(1)]
        return urllib.parse.quote(served if draw(st.integers(0, 9)) < 8 else draw(other), safe="")

    path = re.sub(r"\{(\w+)\}", value, template)
    headers: dict[str, str] = {}
    body = b""
    if "requestBody" in operation:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        pick = draw(st.integers(0, 9))  # mostly near-valid: wrong in few places, they reach the deep checks
        document = draw(near_valid() if pick < 6 else from_schema(schema) if pick < 8 else MLP_REQUEST | JSON_VALUES)
        body = json.dumps(document).encode()
        framing = draw(st.integers(0, 9))  # mostly plain JSON, so that most requests reach the decoder
        if framing == 0:  # the binary extension: a tail and a header length, right or not
            tail = draw(st.binary(max_size=64))
            headers["Inference-Header-Content-Length"] = str(draw(st.sampled_from([len(body), 0, -1, 2**64]) |
                                                                   st.integers(0, len(body) + 80)))
            body += tail
        elif framing == 1:
            body = draw(st.sampled_from([gzip.compress(body), body.replace(b"[", DEEP, 1)]) | st.binary(max_size=200))
        elif framing == 2:
            headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "br", "identity", "bogus"]))
            body = draw(st.sampled_from([body, gzip.compress(body)]))
    return method, path, body, headers


def _send(server: BackgroundServer, method: str, path: str, body: bytes,
          headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, failing within 10 s rather than hanging the suite."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server.ports["http"], timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def server(mlp_package: Path) -> Iterator[BackgroundServer]:
    with serving(mlp_package, max_body_bytes=1 << 20) as running:
        yield running


def test_openapi_describes_every_route(server: BackgroundServer) -> None:
    """The description and the route table agree, so the fuzzing reaches every endpoint."""
    endpoints: V2Endpoints = server.server.endpoints
    routes = {(r.method, r.pattern) for r in endpoints.routes()}
    described = {(method, path) for method, path, _ in _operations()}
    assert routes == described
    # Who may call each one, as the route table declares it (no security: public; none listed: the token).
    schemes = {Access.PUBLIC: [], Access.TOKEN: OPENAPI["security"], Access.ADMIN: [{"admin": []}]}
    for route in endpoints.routes():
        operation = OPENAPI["paths"][route.pattern][route.method.lower()]
        assert operation.get("security", OPENAPI["security"]) == schemes[route.access], route.name


def test_no_client_mistake_is_a_5xx_and_the_server_stays_healthy(server: BackgroundServer) -> None:
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=http_requests())
    def one_request(case: tuple[str, str, bytes, dict[str, str]]) -> None:
        method, path, body, headers = case
        status, response_headers, payload = _send(server, method, path, body, headers)
        if path.endswith("/ready") and status == 503:  # a readiness answer ("ready": false), not an error
            assert json.loads(payload)["ready"] is False
            return
        timed = b'"timeout"' in body  # a deadline the client set may pass: 504 is the answer it asked for
        assert status < 500 or (status == 504 and timed), (status, payload[:300])
        if status >= 400:
            assert isinstance(json.loads(payload)["error"], str)
            assert response_headers.get("X-Request-Id")

    request(server, "POST", "/v2/models/mlp/infer", infer_json(np.ones((2, 16), np.float32)))  # warm
    before = _rss_mb()
    one_request()
    assert _rss_mb() - before < MAX_RSS_GROWTH_MB
    assert request(server, "GET", "/v2/health/ready")[0] == 200
    assert request(server, "POST", "/v2/models/mlp/infer", infer_json(np.ones((2, 16), np.float32)))[0] == 200
