"""The Open Inference Protocol (KServe v2) over gRPC, as ``tritonclient.grpc`` and KServe clients speak it.

The messages come from ``kserve_v2.proto`` (package ``inferforge.kserve.v2``, because
``tritonclient`` already registers the standard ``inference.*`` names in protobuf's default
pool). Only field numbers travel on the wire, so the methods are registered here at run time
with ``grpc.method_handlers_generic_handler`` under the standard service name
``inference.GRPCInferenceService``: paths such as ``/inference.GRPCInferenceService/ModelInfer``
are the ones every client calls.

This module only translates: tensors become an ``InferRequest`` and the ``InferResponse``
becomes raw output contents (what ``InferResult.as_numpy`` reads); the checks, batching and
errors live in ``protocol``, ``model`` and ``repository``, shared with the HTTP front end.
A ``ProtocolError``'s HTTP status maps onto the gRPC code a client expects.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc  # absolute import: the grpc package, not this module
import numpy as np

from inferforge.errors import InferforgeError, ProtocolError, one_line
from inferforge.serve import kserve_v2_pb2
from inferforge.serve.auth import Auth
from inferforge.serve.metrics import ServerMetrics
from inferforge.serve.protocol import (
    DATATYPES,
    InferRequest,
    RequestedOutput,
    array_from_raw,
    datatype_of,
    raw_bytes,
    selected_outputs,
    server_metadata_json,
    tensor_header,
)
from inferforge.serve.repository import ModelRepository

log = logging.getLogger("inferforge.serve")
# The generated module defines its message classes at import time, where mypy cannot see them.
pb: Any = kserve_v2_pb2

SERVICE = "inference.GRPCInferenceService"

STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                413: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
                504: grpc.StatusCode.DEADLINE_EXCEEDED}

# Datatype -> the InferTensorContents field that carries it; FP16 and BF16 have none (raw only).
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
                  "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
                  "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
                  "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def build_grpc_server(repository: ModelRepository, auth: Auth, host: str, port: int,
                      max_message_bytes: int, metrics: ServerMetrics | None = None) -> tuple[grpc.aio.Server, int]:
    """A bound, not yet started ``grpc.aio`` server and its port (the one the OS chose for ``port=0``).

    The caller awaits ``start()`` and ``stop(grace)``. Create it on the event loop that runs the
    repository's models: the handlers await them there. ``max_message_bytes`` caps each request
    and response (a bigger one gets RESOURCE_EXHAUSTED from gRPC itself).
    Raises ``InferforgeError`` when ``host:port`` cannot be bound.
    """
    # so_reuseport off: gRPC turns it on by default, and a second server on a busy port would then
    # silently share its traffic with the first instead of failing to start.
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max_message_bytes),
                                      ("grpc.so_reuseport", 0)])
    servicer = _Servicer(repository, metrics or ServerMetrics())
    handlers = {
        "ServerLive": _unary(servicer.server_live, pb.ServerLiveRequest, auth=None),
        "ServerReady": _unary(servicer.server_ready, pb.ServerReadyRequest, auth=None),
        "ModelReady": _unary(servicer.model_ready, pb.ModelReadyRequest, auth),
        "ServerMetadata": _unary(servicer.server_metadata, pb.ServerMetadataRequest, auth),
        "ModelMetadata": _unary(servicer.model_metadata, pb.ModelMetadataRequest, auth),
        "ModelInfer": _unary(servicer.model_infer, pb.ModelInferRequest, auth),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise InferforgeError(f"the gRPC front end cannot listen on {host}:{port} (is the port in use?): "
                              f"{one_line(exc)}") from None
    return server, bound


def _unary(method: Handler, request_type: Any, auth: Auth | None) -> grpc.RpcMethodHandler:
    """One RPC: check the bearer token (unless ``auth`` is None), run it, turn failures into status codes.

    Clients get one line and a code, never a traceback; the traceback of an unexpected
    failure goes to the server log.
    """
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if auth is not None:
                auth.check(_header(context, "authorization"))
            return await method(request, context)
        except ProtocolError as exc:
            await _abort(context, exc)
        except Exception as exc:
            log.exception("gRPC %s failed", getattr(method, "__name__", "call"))
            await _abort(context, ProtocolError(one_line(exc), 500))

    return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=request_type.FromString,
                                               response_serializer=lambda message: message.SerializeToString())


async def _abort(context: grpc.aio.ServicerContext, error: ProtocolError) -> None:
    code = STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)
    message = str(error)
    trailing: tuple[tuple[str, str], ...] = ()
    if error.retry_after_s is not None:
        message += f" (retry after {error.retry_after_s:g} s)"
        trailing = (("retry-after", f"{error.retry_after_s:g}"),)
    await context.abort(code, message, trailing_metadata=trailing)


def _header(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


class _Servicer:
    """The six RPCs over one repository; each returns a response message or raises ProtocolError."""

    def __init__(self, repository: ModelRepository, metrics: ServerMetrics) -> None:
        self.repository = repository
        self.metrics = metrics

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.repository.ready)

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=self.repository.is_ready(request.name, request.version or None))

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(**server_metadata_json())

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.repository.get(request.name, request.version or None).metadata_json()
        tensors = {key: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta[key]]
                   for key in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"],
                                        platform=meta["platform"], **tensors)

    async def model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        label = self.metrics.label(request.model_name, self.repository.serving)
        try:
            response = await self._infer(request, context)
        except ProtocolError as exc:
            self.metrics.record_request(label, "grpc", time.perf_counter() - started, exc.status)
            raise
        self.metrics.record_request(label, "grpc", time.perf_counter() - started)
        return response

    async def _infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self.repository.get(request.model_name, request.model_version or None)  # 404 before 400
        infer_request = decode_infer_request(request)
        remaining = context.time_remaining()
        if "timeout" not in infer_request.parameters and remaining is not None:
            # The client's deadline bounds the queue wait too: no work for an answer nobody awaits.
            infer_request.parameters["timeout"] = max(1, int(remaining * 1e6))
        result = await model.infer(infer_request)
        response = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version,
                                         id=result.id)
        for name, array, _ in selected_outputs(infer_request, result.outputs):
            response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
            response.raw_output_contents.append(raw_bytes(array))
        return response


def decode_infer_request(message: Any) -> InferRequest:
    """A ``ModelInferRequest`` to an ``InferRequest``; raises ProtocolError (400) naming the tensor.

    Inputs come either all from ``raw_input_contents`` (one entry per input, in order; what
    tritonclient sends) or all from their typed ``contents``. Outputs are always sent raw.
    """
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise ProtocolError(f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs: "
                            "send one per input, in order, or use each input's contents instead")
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(message.inputs):
        name, shape, datatype = tensor_header({"name": tensor.name, "shape": list(tensor.shape),
                                                "datatype": tensor.datatype})
        if name in inputs:
            raise ProtocolError(f"input {name!r} appears more than once in the request")
        if raw:
            if tensor.HasField("contents"):
                raise ProtocolError(f"input {name!r} has contents while raw_input_contents is used: "
                                    "send every input one way")
            inputs[name] = array_from_raw(name, raw[index], shape, datatype)
        else:
            inputs[name] = _array_from_contents(name, tensor.contents, shape, datatype)
    outputs = tuple(RequestedOutput(o.name, binary=True) for o in message.outputs) or None
    return InferRequest(inputs, message.id, outputs, _parameters(message.parameters),
                        binary_outputs_by_default=True)


def _array_from_contents(name: str, contents: Any, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise ProtocolError(f"input {name!r}: {datatype} has no typed contents field; send it in "
                            "raw_input_contents")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise ProtocolError(f"input {name!r}: shape {list(shape)} holds {count} elements but "
                            f"contents.{field} has {len(values)}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    target = DATATYPES[datatype]
    # Through Python values, range-checked here: protobuf 7's containers hand numpy a wider buffer
    # that a direct cast would wrap silently (300 -> INT8 44) instead of refusing.
    array = np.array(list(values))
    if target.kind in "iu" and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise ProtocolError(f"input {name!r}: contents.{field} does not fit {datatype} "
                                f"({info.min}..{info.max}): got {array.min()}..{array.max()}")
    return array.astype(target).reshape(shape)


def _parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain values (``timeout`` stays in microseconds)."""
    plain: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            plain[key] = getattr(parameter, choice)
    return plain
