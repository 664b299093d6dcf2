"""A small Open Inference Protocol (KServe v2) client: what ``inferforge bench --url`` sends.

HTTP uses the binary tensor extension (a JSON header of ``Inference-Header-Content-Length``
bytes, then the raw tensors), as Triton's own client does, over one keep-alive connection
per thread; gRPC sends ``raw_input_contents`` on one channel. Only the standard library,
and grpcio for gRPC, so benchmarking a server needs no Triton client installed.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from inferforge.errors import InferforgeError
from inferforge.serve.protocol import DATATYPES, datatype_of

GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(frozen=True)
class RemoteInput:
    name: str
    datatype: str  # v2 datatype, e.g. "FP32"
    shape: tuple[int, ...]  # -1 where the server accepts any size


class RemoteModel:
    """``predict(batch)`` sends one infer request; raises InferforgeError on a non-2xx answer."""

    def __init__(self, url: str, model: str, token: str | None = None) -> None:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "grpc") or not parsed.hostname:
            raise InferforgeError(f"--url {url!r}: expected http://HOST:PORT or grpc://HOST:PORT")
        self.scheme, self.model = parsed.scheme, model
        self._host, self._port = parsed.hostname, parsed.port or (8000 if parsed.scheme == "http" else 8001)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._local = threading.local()
        self._grpc: Any = None

    def metadata(self) -> list[RemoteInput]:
        """The model's inputs as the server describes them (HTTP metadata endpoint)."""
        if self.scheme != "http":
            raise InferforgeError("reading the model's inputs needs the HTTP endpoint; give the package too "
                                  "(inferforge bench PACKAGE --url grpc://...) so its spec is used")
        status, body = self._http("GET", f"/v2/models/{self.model}", b"", {})
        if status != 200:
            raise InferforgeError(f"the server answered {status} for model {self.model!r}: {body[:200]!r}")
        document = json.loads(body)
        return [RemoteInput(i["name"], i["datatype"], tuple(i["shape"])) for i in document["inputs"]]

    def predict(self, inputs: Mapping[str, np.ndarray]) -> None:
        if self.scheme == "grpc":
            self._predict_grpc(inputs)
            return
        arrays = [np.ascontiguousarray(v) for v in inputs.values()]
        header = json.dumps({"inputs": [
            {"name": n, "shape": list(a.shape), "datatype": datatype_of(a),
             "parameters": {"binary_data_size": a.nbytes}} for n, a in zip(inputs, arrays, strict=True)],
            "parameters": {"binary_data_output": True}}).encode()
        body = header + b"".join(a.tobytes() for a in arrays)
        status, answer = self._http("POST", f"/v2/models/{self.model}/infer", body, {
            "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
        if status != 200:
            raise InferforgeError(f"infer answered {status}: {answer[:200]!r}")

    def _http(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        connection = getattr(self._local, "connection", None)
        for attempt in (1, 2):  # a keep-alive connection the server closed is reopened once
            if connection is None:
                connection = self._local.connection = http.client.HTTPConnection(self._host, self._port, timeout=60)
            try:
                connection.request(method, path, body=body, headers={**self._headers, **headers})
                response = connection.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                connection.close()
                connection = self._local.connection = None
                if attempt == 2:
                    raise InferforgeError(f"cannot reach {self._host}:{self._port}: {exc}") from exc
        raise AssertionError("unreachable")

    def _predict_grpc(self, inputs: Mapping[str, np.ndarray]) -> None:
        import grpc

        from inferforge.serve import kserve_v2_pb2

        pb: Any = kserve_v2_pb2  # generated code: its message classes are made at run time

        if self._grpc is None:
            channel = grpc.insecure_channel(f"{self._host}:{self._port}")
            self._grpc = channel.unary_unary(GRPC_INFER, request_serializer=pb.ModelInferRequest.SerializeToString,
                                             response_deserializer=pb.ModelInferResponse.FromString)
        request = pb.ModelInferRequest(model_name=self.model)
        for name, value in inputs.items():
            array = np.ascontiguousarray(value)
            request.inputs.add(name=name, datatype=datatype_of(array), shape=list(array.shape))
            request.raw_input_contents.append(array.tobytes())
        metadata = [(k.lower(), v) for k, v in self._headers.items()]
        try:
            self._grpc(request, metadata=metadata, timeout=60)
        except grpc.RpcError as exc:
            raise InferforgeError(f"gRPC infer failed: {exc.code().name}: {exc.details()}") from exc


def numpy_dtype(datatype: str) -> np.dtype:
    if datatype not in DATATYPES:
        raise InferforgeError(f"cannot generate inputs of v2 datatype {datatype}; pass --data")
    return np.dtype(DATATYPES[datatype])
