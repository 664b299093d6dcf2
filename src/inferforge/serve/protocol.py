"""The Open Inference Protocol (KServe v2) on the wire, without any transport.

Both front ends (HTTP and gRPC) turn what they receive into an ``InferRequest``
of numpy arrays and turn an ``InferResponse`` back into their own encoding, so
datatypes and BYTES tensors are written once. Only the wire format is checked here
(every problem raises ``ProtocolError`` naming the tensor and what was wrong); whether
the tensors fit the model is ``types.check_inputs``'s one rule set, which the runner
applies too.

The HTTP binary tensor extension (Triton's, which ``tritonclient`` uses by default) is
decoded here too: the body is a JSON header of ``Inference-Header-Content-Length``
bytes followed by each binary tensor in the order of the inputs that declare
``parameters.binary_data_size``.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferforge.errors import ProtocolError

# KServe v2 datatype -> numpy dtype. BYTES travel as numpy object arrays of bytes.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
HEADER_LENGTH = "Inference-Header-Content-Length"
# A shape may describe at most this many elements, zero-length dimensions aside: numpy refuses shapes whose
# size in bytes passes 2**63 even when a zero dimension leaves them empty ([0, 10**30]), and no body holds more.
MAX_ELEMENTS = 1 << 40
MAX_RANK = 32  # numpy 1.x's limit on dimensions (2.x allows 64)


def datatype_of(array: np.ndarray) -> str:
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    for name, dtype in DATATYPES.items():
        if array.dtype == dtype:
            return name
    raise ProtocolError(f"output dtype {array.dtype} has no Open Inference Protocol datatype", 500)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass
class InferRequest:
    """A decoded request: inputs by name as numpy arrays (BYTES as object arrays of bytes)."""

    inputs: dict[str, np.ndarray]
    id: str = ""
    outputs: tuple[RequestedOutput, ...] | None = None  # None: all outputs
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_outputs_by_default: bool = False

    def timeout_s(self) -> float | None:
        """Triton's ``timeout`` parameter, given in microseconds, in seconds; None when absent or 0 (no limit
        of its own: the server's). Raises ProtocolError 400 for anything but a finite number >= 0."""
        value = self.parameters.get("timeout")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ProtocolError(f"parameter 'timeout' is {value!r}: give a whole number of microseconds >= 0 "
                                "(0 or none: the server's request timeout)")
        return float(value) / 1e6 if value > 0 else None


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: dict[str, np.ndarray]
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # e.g. which replica answered (Ray Serve)


# ---- decoding -------------------------------------------------------------------------------------------------

def parse_json_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """Split an HTTP infer body into its JSON header and the binary tail (empty without the extension)."""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} header is {header_length!r}, not a whole number") from None
        if not 0 <= length <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
        head, tail = body[:length], body[length:]
    else:
        head, tail = body, b""
    try:
        document = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # the decoder recurses once per level: 100,000 '[' exhaust the stack
        raise ProtocolError("request body nests JSON arrays or objects too deeply; send tensor data flat "
                            "(row-major) with its 'shape'") from None
    if not isinstance(document, dict):
        raise ProtocolError("request body must be a JSON object with an 'inputs' list")
    return document, tail


def decode_http_request(document: Mapping[str, Any], binary: bytes) -> InferRequest:
    """Build an InferRequest from a v2 JSON document and its binary tail."""
    inputs_json = document.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise ProtocolError("request has no 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in inputs_json:
        if not isinstance(item, dict):
            raise ProtocolError("each entry of 'inputs' must be an object with name, shape, datatype and data")
        name, shape, datatype = tensor_header(item)
        if name in inputs:
            raise ProtocolError(f"input {name!r} appears more than once in the request")
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ProtocolError(f"input {name!r}: parameters.binary_data_size must be a whole number of bytes "
                                    f">= 0 (a JSON number, not {type(size).__name__} {_short(size)})")
            if offset + size > len(binary):
                raise ProtocolError(f"input {name!r}: binary_data_size {size} runs past the {len(binary)} binary "
                                    f"bytes after the JSON header (at offset {offset})")
            inputs[name] = array_from_raw(name, binary[offset:offset + size], shape, datatype)
            offset += size
        elif "data" in item:
            inputs[name] = array_from_json(name, item["data"], shape, datatype)
        else:
            raise ProtocolError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes after the JSON header belong to no input "
                            "(check each input's binary_data_size)")
    params = document.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("request 'parameters' must be an object")
    outputs = None
    if document.get("outputs") is not None:
        if not isinstance(document["outputs"], list):
            raise ProtocolError("request 'outputs' must be a list of {name, parameters}")
        default_binary = bool(params.get("binary_data_output", False))
        outputs = tuple(_requested_output(o, default_binary) for o in document["outputs"])
    request_id = document.get("id", "")
    return InferRequest(inputs, str(request_id) if request_id is not None else "", outputs, params,
                        bool(params.get("binary_data_output", False)))


def _requested_output(item: Any, default_binary: bool) -> RequestedOutput:
    name = _name_of(item, "output")
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(f"requested output {name!r}: 'parameters' must be an object")
    return RequestedOutput(name, bool(params.get("binary_data", default_binary)))


def _name_of(item: Any, what: str) -> str:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise ProtocolError(f"each requested {what} must be an object with a 'name'")
    return item["name"]


def tensor_header(item: Mapping[str, Any]) -> tuple[str, tuple[int, ...], str]:
    name = _name_of(item, "input")
    shape = item.get("shape")
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                      for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative whole numbers, got {_short(shape)}")
    if len(shape) > MAX_RANK or math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise ProtocolError(f"input {name!r}: shape {_short(shape)} is too large: at most {MAX_RANK} dimensions "
                            f"spanning at most 2**40 elements (zero-length dimensions aside)")
    datatype = item.get("datatype")
    if not isinstance(datatype, str) or (datatype not in DATATYPES and datatype != "BF16"):
        raise ProtocolError(f"input {name!r}: unknown datatype {_short(datatype)}; use one of {', '.join(DATATYPES)}")
    return name, tuple(shape), str(datatype)


def array_from_json(name: str, data: Any, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) to an array of ``shape``."""
    flat = _flatten(data)
    count = math.prod(shape)
    if len(flat) != count:
        raise ProtocolError(f"input {name!r}: shape {list(shape)} holds {count} elements but 'data' has {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise ProtocolError(f"input {name!r}: BYTES data in JSON must be strings")
        return _utf8(name, flat).reshape(shape)
    if datatype == "BF16":
        raise ProtocolError(f"input {name!r}: send BF16 values as FP32")
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise ProtocolError(f"input {name!r}: BOOL data must be true/false")
    elif not all(isinstance(v, int | float) and not isinstance(v, bool) for v in flat):
        raise ProtocolError(f"input {name!r}: {datatype} data must be numbers")
    try:
        array = np.array(flat, dtype=DATATYPES[datatype])
    except (OverflowError, ValueError) as exc:
        raise ProtocolError(f"input {name!r}: data does not fit {datatype}: {exc}") from None
    if datatype != "BOOL" and DATATYPES[datatype].kind in "iu" and any(isinstance(v, float) and not v.is_integer()
                                                                       for v in flat):
        raise ProtocolError(f"input {name!r}: {datatype} data has fractional numbers")
    return array.reshape(shape)


def _utf8(name: str, strings: list[str]) -> np.ndarray:
    """JSON strings as a BYTES array; a lone surrogate (JSON allows "\\ud800") has no UTF-8 form: 400."""
    array = np.empty(len(strings), dtype=object)
    for index, value in enumerate(strings):
        try:
            array[index] = value.encode()
        except UnicodeEncodeError as exc:
            raise ProtocolError(f"input {name!r}: element {index} is not valid Unicode ({exc.reason} at character "
                                f"{exc.start}); send text as UTF-8, or binary data in the binary extension") from None
    return array


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _flatten(data: Any) -> list[Any]:
    """Nested lists, row-major, to one flat list; iterative, so depth costs no stack."""
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def array_from_raw(name: str, raw: bytes, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    """Raw little-endian bytes (or length-prefixed BYTES elements) to an array of ``shape``."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return decode_bytes_tensor(name, raw, count).reshape(shape)
    if datatype == "BF16":
        if len(raw) != 2 * count:
            raise ProtocolError(f"input {name!r}: BF16 shape {list(shape)} needs {2 * count} bytes, got {len(raw)}")
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    dtype = DATATYPES[datatype].newbyteorder("<")
    if len(raw) != dtype.itemsize * count:
        raise ProtocolError(f"input {name!r}: {datatype} shape {list(shape)} needs {dtype.itemsize * count} bytes, "
                            f"got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()  # writable, as torch.from_numpy wants


def decode_bytes_tensor(name: str, raw: bytes, count: int) -> np.ndarray:
    """BYTES elements are each a 4-byte little-endian length followed by that many bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"input {name!r}: BYTES data ends inside an element's length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"input {name!r}: a BYTES element of {length} bytes runs past the data")
        items.append(raw[offset:offset + length])
        offset += length
    if len(items) != count:
        raise ProtocolError(f"input {name!r}: shape holds {count} elements but the BYTES data has {len(items)}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


# ---- encoding -------------------------------------------------------------------------------------------------

def raw_bytes(array: np.ndarray) -> bytes:
    """An output as raw bytes: little-endian, row-major; BYTES elements length-prefixed."""
    if datatype_of(array) == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.tobytes()


def selected_outputs(request: InferRequest, outputs: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray, bool]]:
    """The outputs the request asked for (all when it named none), each with whether to send it binary."""
    if request.outputs is None:
        return [(n, a, request.binary_outputs_by_default) for n, a in outputs.items()]
    unknown = [o.name for o in request.outputs if o.name not in outputs]
    if unknown:
        raise ProtocolError(f"requested output(s) {', '.join(unknown)} do not exist; the model has "
                            f"{', '.join(outputs)}")
    return [(o.name, outputs[o.name], o.binary) for o in request.outputs]


def encode_http_response(request: InferRequest, response: InferResponse) -> tuple[bytes, int | None]:
    """The JSON document (plus binary tail) and the JSON length to send as Inference-Header-Content-Length."""
    tensors = []
    tail: list[bytes] = []
    for name, array, binary in selected_outputs(request, response.outputs):
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary:
            data = raw_bytes(array)
            entry["parameters"] = {"binary_data_size": len(data)}
            tail.append(data)
        elif entry["datatype"] == "BYTES":
            entry["data"] = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
        else:
            entry["data"] = array.reshape(-1).tolist()
        tensors.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version,
                                "id": response.id, "outputs": tensors}
    if response.parameters:
        document["parameters"] = response.parameters
    head = json.dumps(document, separators=(",", ":")).encode()
    if not tail:
        return head, None
    return head + b"".join(tail), len(head)


# ---- the server's own description ----------------------------------------------------------------------------

def server_metadata_json() -> dict[str, Any]:
    from inferforge.version import __version__

    return {"name": "inferforge", "version": __version__,
            "extensions": ["binary_tensor_data", "model_repository", "statistics", "model_configuration"]}
