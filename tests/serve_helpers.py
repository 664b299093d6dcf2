"""Helpers for the serving tests: a server on loopback, a model whose instance can be held, raw HTTP."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from inferforge.serve.auth import Auth
from inferforge.serve.model import ModelOptions
from inferforge.serve.server import BackgroundServer, ServerConfig


def server_config(root: Path, **kwargs: Any) -> ServerConfig:
    batching = kwargs.pop("batching", {})
    kwargs.setdefault("auth", Auth())
    return ServerConfig(root=root, http_port=0, grpc_port=kwargs.pop("grpc_port", None), metrics_port=None,
                        poll_seconds=kwargs.pop("poll_seconds", 0), models=ModelOptions(batching_overrides=batching,
                                                                                       threads=1), **kwargs)


@contextmanager
def serving(root: Path, **kwargs: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(server_config(root, **kwargs)) as server:
        yield server


def request(server: BackgroundServer, method: str, path: str, body: bytes | dict | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request; returns status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", server.server.ports["http"], timeout=60)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(method, path, body=data, headers=headers or {})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), payload


def post_rows(server: BackgroundServer, rows: int = 1, value: float = 1.0) -> tuple[int, dict[str, str], bytes]:
    """An infer request to the mlp model with ``rows`` rows, every element ``value``."""
    return request(server, "POST", "/v2/models/mlp/infer", infer_json(np.full((rows, 16), value, np.float32)))


def infer_json(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}


class HeldInstance:
    """Wraps a model instance so a test decides when a batch may run: no sleeps as synchronisation."""

    def __init__(self, run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> None:
        self._run = run
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.batches.append(len(next(iter(inputs.values()))))
        self.entered.set()
        if not self.release.wait(60):
            raise TimeoutError("test never released the instance")
        return self._run(inputs)


def hold(server: BackgroundServer, model: str = "mlp") -> HeldInstance:
    instance = server.server.repository.serving[model].instances[0]
    held = HeldInstance(instance.run)
    instance.run = held.run  # type: ignore[method-assign]
    return held


def hold_one_request(server: BackgroundServer, pool: Executor, rows: int = 1,
                     value: float = 0.0) -> tuple[HeldInstance, Future]:
    """Send one request and return once its batch is running and held: later requests must queue."""
    held = hold(server)
    future = pool.submit(post_rows, server, rows, value)
    assert held.entered.wait(30), "the first request never reached the model"
    return held, future


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Wait for a state the server reaches on its own (queue depth, a reload); fails loudly on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
