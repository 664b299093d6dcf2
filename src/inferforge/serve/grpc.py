"""The Open Inference Protocol (KServe v2) over gRPC, as ``tritonclient.grpc`` and KServe clients speak it.

The messages come from ``kserve_v2.proto`` (package ``inferforge.kserve.v2``, because
``tritonclient`` already registers the standard ``inference.*`` names in protobuf's default
pool). Only field numbers travel on the wire, so the methods are registered here at run time
with ``grpc.method_handlers_generic_handler`` under the standard service name
``inference.GRPCInferenceService``: paths such as ``/inference.GRPCInferenceService/ModelInfer``
are the ones every client calls.

This module only translates: tensors become an ``InferRequest`` and the ``InferResponse``
becomes raw output contents (what ``InferResult.as_numpy`` reads). Readiness, model lookup,
inference and its metrics are the operations of ``endpoints.V2Endpoints``, shared with the
HTTP front ends; every failure goes through ``endpoints.failure`` (inputs that do not fit the
model: INVALID_ARGUMENT), and its HTTP status maps onto the gRPC code a client expects.

Triton's extensions are served too (model configuration, statistics, the model repository), so an
unmodified ``tritonclient.grpc`` discovers, describes, configures and reads statistics. What a client
sent can never answer INTERNAL: a body that does not parse, or tensors numpy cannot build from the
declared shape, are the client's (INVALID_ARGUMENT); INTERNAL is left for the model failing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc  # absolute import: the grpc package, not this module
import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from inferforge.errors import InferforgeError, ProtocolError, one_line
from inferforge.serve import kserve_v2_pb2
from inferforge.serve.auth import Access, Auth
from inferforge.serve.endpoints import V2Endpoints, failure
from inferforge.serve.protocol import (
    DATATYPES,
    InferRequest,
    InferResponse,
    RequestedOutput,
    array_from_raw,
    datatype_of,
    raw_bytes,
    selected_outputs,
    server_metadata_json,
    tensor_header,
)

if TYPE_CHECKING:
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


# Every RPC served, and who may call it, enforced once by ``_AuthInterceptor``. Health stays open, as
# over HTTP; the read-only Triton extensions (config, statistics, the repository index) take the
# inference token, as Triton's do, so a default server lets tritonclient discover its models; load
# and unload change what serves and need the admin token. Each RPC's request is ``pb.<Name>Request``
# and its handler the ``_Servicer`` method of the same name in snake case.
METHOD_ACCESS = {"ServerLive": Access.PUBLIC, "ServerReady": Access.PUBLIC, "ModelReady": Access.TOKEN,
                 "ServerMetadata": Access.TOKEN, "ModelMetadata": Access.TOKEN, "ModelInfer": Access.TOKEN,
                 "ModelConfig": Access.TOKEN, "ModelStatistics": Access.TOKEN, "RepositoryIndex": Access.TOKEN,
                 "RepositoryModelLoad": Access.ADMIN, "RepositoryModelUnload": Access.ADMIN}


def build_grpc_server(endpoints: V2Endpoints, auth: Auth, host: str, port: int,
                      max_message_bytes: int) -> tuple[grpc.aio.Server, int]:
    """A bound, not yet started ``grpc.aio`` server and its port (the one the OS chose for ``port=0``).

    The caller awaits ``start()`` and ``stop(grace)``. Create it on the event loop that runs the
    endpoints' models: the handlers await them there. ``max_message_bytes`` caps each request
    and response (a bigger one gets RESOURCE_EXHAUSTED from gRPC itself).
    Raises ``InferforgeError`` when ``host:port`` cannot be bound.
    """
    # so_reuseport off: gRPC turns it on by default, and a second server on a busy port would then
    # silently share its traffic with the first instead of failing to start.
    server = grpc.aio.server(interceptors=[_AuthInterceptor(auth)],
                             options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max_message_bytes),
                                      ("grpc.so_reuseport", 0)])
    servicer = _Servicer(endpoints)
    handlers = {name: _unary(getattr(servicer, _snake_case(name)), getattr(pb, name + "Request"))
                for name in METHOD_ACCESS}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise InferforgeError(f"the gRPC front end cannot listen on {host}:{port} (is the port in use?): "
                              f"{one_line(exc)}") from None
    return server, bound


class _AuthInterceptor(grpc.aio.ServerInterceptor):
    """The bearer token checked once per call, before any handler, by ``Auth.require`` and METHOD_ACCESS."""

    def __init__(self, auth: Auth) -> None:
        self.auth = auth

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        # A method missing from the table needs the token: a forgotten entry stays closed, not open.
        access = METHOD_ACCESS.get(details.method.rsplit("/", 1)[-1], Access.TOKEN)  # type: ignore[attr-defined]
        try:
            self.auth.require(access, _header(details.invocation_metadata, "authorization"))  # type: ignore[attr-defined]
        except ProtocolError as error:
            return _refusal(error)
        return await continuation(details)


def _refusal(error: ProtocolError) -> grpc.RpcMethodHandler:
    async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> None:
        await _abort(context, error)

    return grpc.unary_unary_rpc_method_handler(refuse)


def _snake_case(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _unary(method: Handler, request_type: Any) -> grpc.RpcMethodHandler:
    """One RPC: parse, run, turn failures into status codes through ``endpoints.failure``.

    The body is parsed here rather than by gRPC, whose deserializer failures answer INTERNAL:
    bytes that are not the request message are the client's mistake. Clients get one line and a
    code, never a traceback; the traceback of an unexpected failure goes to the server log.
    """
    async def handle(body: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(_parse(request_type, body), context)
        except Exception as exc:
            error = failure(exc)
            if error is not exc and error.status >= 500:
                log.exception("gRPC %s failed", getattr(method, "__name__", "call"))
            await _abort(context, error)

    return grpc.unary_unary_rpc_method_handler(handle, response_serializer=lambda message: message.SerializeToString())


def _parse(request_type: Any, body: bytes) -> Any:
    try:
        return request_type.FromString(body)
    except DecodeError as exc:
        raise ProtocolError(f"the request is not a valid {request_type.DESCRIPTOR.name} message: "
                            f"{one_line(exc)}") from None


async def _abort(context: grpc.aio.ServicerContext, error: ProtocolError) -> None:
    code = STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)
    message = str(error)
    trailing: tuple[tuple[str, str], ...] = ()
    if error.retry_after_s is not None:
        message += f" (retry after {error.retry_after_s:g} s)"
        trailing = (("retry-after", f"{error.retry_after_s:g}"),)
    await context.abort(code, message, trailing_metadata=trailing)


def _header(metadata: Any, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return None


class _Servicer:
    """The RPCs of ``METHOD_ACCESS`` over the shared endpoints; each returns a response message or raises."""

    def __init__(self, endpoints: V2Endpoints) -> None:
        self.endpoints = endpoints

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.endpoints.is_ready())

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ModelReadyResponse(ready=self.endpoints.is_model_ready(request.name, request.version or None))

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(**server_metadata_json())

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.endpoints.model(request.name, request.version).metadata_json()
        tensors = {key: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta[key]]
                   for key in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"],
                                        platform=meta["platform"], **tensors)

    async def model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def decode() -> InferRequest:
            infer_request = decode_infer_request(request)
            remaining = context.time_remaining()
            if "timeout" not in infer_request.parameters and remaining is not None:
                # The client's deadline bounds the queue wait too: no work for an answer nobody awaits.
                infer_request.parameters["timeout"] = max(1, int(remaining * 1e6))
            return infer_request

        return await self.endpoints.infer(request.model_name, request.model_version, "grpc", decode, _encode)

    async def model_config(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        config = self.endpoints.model(request.name, request.version).config_json()
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

    async def model_statistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """One model's statistics, or every serving model's when the request names none (as Triton)."""
        if request.name:
            models = [self.endpoints.model(request.name, request.version)]
        else:
            models = list(self.endpoints.models.serving.values())
        return pb.ModelStatisticsResponse(model_stats=[
            json_format.ParseDict(m.stats.to_json(m.name, m.version), pb.ModelStatistics()) for m in models])

    async def repository_index(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        entries = [e for e in self._repository().index_json() if not request.ready or e["state"] == "READY"]
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**e) for e in entries])

    async def repository_model_load(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.parameters:
            raise ProtocolError(f"load parameters ({', '.join(sorted(request.parameters))}) are not supported: "
                                "install the package as a version folder of the repository, then load the model")
        await self._repository().load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # ``unload_dependents`` (tritonclient always sends it) means nothing here: no model depends on another.
        unknown = sorted(set(request.parameters) - {"unload_dependents"})
        if unknown:
            raise ProtocolError(f"unload parameters {', '.join(unknown)} are not supported; only unload_dependents")
        await self._repository().unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _repository(self) -> ModelRepository:
        if self.endpoints.repository is None:
            raise ProtocolError("this server has no model repository API", 404)
        return self.endpoints.repository


def _encode(infer_request: InferRequest, result: InferResponse) -> Any:
    """Outputs always raw (what ``InferResult.as_numpy`` reads), in the order the request asked for."""
    response = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version, id=result.id)
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
        if raw and tensor.HasField("contents"):
            raise ProtocolError(f"input {name!r} has contents while raw_input_contents is used: "
                                "send every input one way")
        try:
            if raw:
                inputs[name] = array_from_raw(name, raw[index], shape, datatype)
            else:
                inputs[name] = _array_from_contents(name, tensor.contents, shape, datatype)
        except (ValueError, OverflowError) as exc:  # numpy refusing the declared shape, e.g. [0, 2**62]
            raise ProtocolError(f"input {name!r}: no {datatype} tensor of shape {list(shape)} can be built: "
                                f"{one_line(exc)}") from None
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
    """A protobuf ``map<string, InferParameter>`` as plain values (``timeout`` stays in microseconds;
    ``InferRequest.timeout_s`` judges its value, for both transports)."""
    plain: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            plain[key] = getattr(parameter, choice)
    return plain
