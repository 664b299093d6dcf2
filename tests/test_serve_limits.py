"""Hostile and malformed HTTP requests (issue 17's list, case by case): each is a 4xx with ``{"error": ...}``
naming the problem, slow clients are cut off, and the server answers normally afterwards."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import infer_json, request, serving, wait_until

from inferforge.serve.auth import Auth
from inferforge.serve.server import BackgroundServer

INFER = "/v2/models/mlp/infer"


@pytest.fixture(scope="module")
def server(mlp_package: Path) -> Iterator[BackgroundServer]:
    with serving(mlp_package, read_timeout_s=1.0) as running:
        yield running


def _x(**extra: object) -> dict:
    return {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16, **extra}


def _binary(header: dict, tail: bytes = b"") -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + tail, {"Inference-Header-Content-Length": str(len(head))}


# Each case: body, headers, the status wanted, a fragment of the error. All came back 500 or plain text before.
CASES: dict[str, tuple[bytes, dict[str, str], int, str]] = {
    "shape [0, 10**30] in JSON": (json.dumps({"inputs": [{"name": "x", "shape": [0, 10**30], "datatype": "FP32",
                                                          "data": []}]}).encode(), {}, 400, "too large"),
    "shape [0, 2**64] in binary": (*_binary({"inputs": [{"name": "x", "shape": [0, 2**64], "datatype": "FP32",
                                                         "parameters": {"binary_data_size": 0}}]}), 400, "too large"),
    "a lone surrogate in BYTES": (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["\\ud800"]}]}',
                                  {}, 400, "not valid Unicode"),
    "gzip that is not gzip": (b'{"inputs": []}', {"Content-Encoding": "gzip"}, 400, "Content-Encoding"),
    "100,000 nested [": (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": '
                         + b"[" * 100_000 + b"]}]}", {}, 400, "too deeply"),
    "negative timeout": (json.dumps({"inputs": [_x()], "parameters": {"timeout": -5}}).encode(), {}, 400,
                         "parameter 'timeout' is -5"),
    "non-numeric timeout": (json.dumps({"inputs": [_x()], "parameters": {"timeout": "soon"}}).encode(), {}, 400,
                            "parameter 'timeout' is 'soon'"),
    "binary_data_size as a string": (*_binary({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                                           "parameters": {"binary_data_size": "64"}}]},
                                              b"\0" * 64), 400, "not str '64'"),
    "100 dimensions": (json.dumps({"inputs": [{"name": "x", "shape": [0] * 100, "datatype": "FP32",
                                               "data": []}]}).encode(), {}, 400, "at most 32 dimensions"),
}


def _still_serves(server: BackgroundServer) -> None:
    status, _, payload = request(server, "POST", INFER, infer_json(np.ones((1, 16), np.float32)))
    assert status == 200, payload


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_bodies_are_4xx_with_a_json_reason(server: BackgroundServer, case: str) -> None:
    body, headers, want_status, fragment = CASES[case]
    status, _, payload = request(server, "POST", INFER, body, headers)
    assert status == want_status, payload
    assert fragment in json.loads(payload)["error"]
    _still_serves(server)


def test_a_real_gzip_body_is_read(server: BackgroundServer) -> None:
    body = gzip.compress(json.dumps(infer_json(np.ones((1, 16), np.float32))).encode())
    assert request(server, "POST", INFER, body, {"Content-Encoding": "gzip"})[0] == 200


def _raw(server: BackgroundServer, data: bytes, wait_s: float = 10.0) -> bytes:
    """Send raw bytes; what came back by the time the server closed or sent one whole response."""
    with socket.create_connection(("127.0.0.1", server.server.ports["http"]), timeout=wait_s) as conn:
        conn.sendall(data)
        received = b""
        while not _whole_response(received) and (chunk := conn.recv(65536)):
            received += chunk
    return received


def _whole_response(received: bytes) -> bool:
    head, sep, body = received.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    return bool(sep) and length is not None and len(body) >= length


@pytest.mark.parametrize("what, head", [
    ("an over-long URL", b"GET /v2/models/" + b"m" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("an over-long header", b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"),
    ("a broken request line", b"GET\r\n\r\n"),
    ("a bad Content-Length", b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n"),
])
def test_what_aiohttp_refuses_before_routing_is_answered_in_json(server: BackgroundServer, what: str,
                                                                 head: bytes) -> None:
    response = _raw(server, head)
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.split()[1] == b"400", response[:300]
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"application/json" in headers.lower()
    assert "malformed HTTP request" in json.loads(body)["error"]
    _still_serves(server)


def test_a_slowloris_head_is_cut_off(server: BackgroundServer) -> None:
    """Headers that never finish: the connection closes after read_timeout_s (1 s here), not never."""
    started = time.monotonic()
    assert _raw(server, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nX-Slow: ") == b""
    assert time.monotonic() - started < 5


def test_a_slow_body_gets_408_and_the_connection_closes(server: BackgroundServer) -> None:
    started = time.monotonic()
    response = _raw(server, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    assert response.startswith(b"HTTP/1.1 408"), response[:300]
    assert b"connection: close" in response.lower()
    assert "did not arrive within 1 s" in json.loads(response.partition(b"\r\n\r\n")[2])["error"]
    assert time.monotonic() - started < 5


def test_a_client_that_hangs_up_mid_body_is_no_internal_error(server: BackgroundServer,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="inferforge.serve")
    http_server = server.server._runners[0].server
    assert http_server is not None
    with socket.create_connection(("127.0.0.1", server.server.ports["http"]), timeout=10) as conn:
        conn.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"{" * 100)
        wait_until(lambda: http_server.requests_count > 0 and len(http_server.connections) > 0, what="the request")
    wait_until(lambda: not http_server.connections, what="the server to drop the connection")
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [r.getMessage() for r in errors]
    _still_serves(server)


def test_a_401_says_how_to_authenticate(mlp_package: Path) -> None:
    with serving(mlp_package, auth=Auth(token="s3cret")) as server:
        status, headers, payload = request(server, "POST", INFER, infer_json(np.ones((1, 16), np.float32)))
        assert status == 401 and "bearer token" in json.loads(payload)["error"]
        assert headers["WWW-Authenticate"].startswith("Bearer")


def test_the_timeout_parameter_is_a_deadline(server: BackgroundServer) -> None:
    """A deadline of 1 microsecond has passed before the model runs: 504 at once, and the next request is fine."""
    body = {"inputs": [_x()], "parameters": {"timeout": 1}}
    status, _, payload = request(server, "POST", INFER, body)
    assert status == 504 and "timed out" in json.loads(payload)["error"]
    body["parameters"] = {"timeout": 0}  # 0: the server's own timeout, as Triton reads it
    assert request(server, "POST", INFER, body)[0] == 200
