"""The Open Inference Protocol's tensor codec (KServe v2 / Triton HTTP), as pure functions.

A request body is JSON, or, with the binary tensor data extension, a JSON header of
`Inference-Header-Content-Length` bytes followed by the raw bytes of every input whose
`parameters.binary_data_size` is set, in the order of `inputs`. A response is built the same
way: outputs asked for with `binary_data` (or all of them, with the request parameter
`binary_data_output`) travel after the JSON header, the others as `data` lists in it.

Raw layout: numeric tensors are row-major little-endian; a BYTES tensor is, per element, a
4-byte little-endian length and then the element's bytes (what tritonclient serialises).
Every client mistake raises InvalidRequest (400) or PayloadTooLarge (413) with a sentence that
says what to change; nothing here allocates more than the body already holds.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidRequest, PayloadTooLarge

# OIP datatype <-> numpy dtype (little-endian, as the binary extension specifies).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name != "BYTES"}

MAX_INPUTS = 16  # a model here takes one input (or one image input); 16 leaves room, no more
MAX_RANK = 8
_LENGTH = struct.Struct("<I")


def datatype_of(dtype: np.dtype[Any] | str) -> str:
    """numpy dtype (or its name, as a card's "float32") -> OIP datatype; BYTES for text."""
    dt = np.dtype(dtype)
    if dt.kind in ("O", "S", "U"):
        return "BYTES"
    name = _BY_KIND.get((dt.kind, dt.itemsize))
    if name is None:
        raise ValueError(f"{dt} has no Open Inference Protocol datatype")
    return name


def metadata_shape(dims: Sequence[int | str]) -> list[int]:
    """A card's shape -> the protocol's: symbolic (named) dimensions are -1."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in dims]


@dataclass(frozen=True)
class InputTensor:
    """One input. data: (shape) array of its datatype; BYTES elements are `bytes`.
    binary: it came as raw bytes after the header (else as JSON `data`)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    binary: bool


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: the request's binary_data_output decides


@dataclass(frozen=True)
class InferenceRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None  # None: every output
    parameters: dict[str, Any]
    binary_output: bool  # the request parameter binary_data_output (default False)


@dataclass(frozen=True)
class OutputTensor:
    """data: the tensor; BYTES tensors hold `bytes` (or str) elements."""

    name: str
    datatype: str
    data: np.ndarray


def header_length(value: str | None, body_size: int) -> int | None:
    """The Inference-Header-Content-Length header -> the JSON header's size in bytes."""
    if value is None:
        return None
    if not value.strip().isdigit() or not 0 < int(value) <= body_size:
        raise InvalidRequest(
            f"Inference-Header-Content-Length is {value!r}; it must be the byte size of the "
            f"JSON header, between 1 and the body's {body_size} bytes"
        )
    return int(value)


def parse_request(body: bytes, json_size: int | None, max_elements: int) -> InferenceRequest:
    """An infer request body -> InferenceRequest. json_size: from header_length (None: all
    of the body is JSON). max_elements: the most elements one input may declare."""
    head = body if json_size is None else body[:json_size]
    try:
        raw = json.loads(head)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidRequest("the inference request must be a JSON object with 'inputs'")
    inputs = raw.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("'inputs' must be a non-empty list of tensors")
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(f"{len(inputs)} inputs; at most {MAX_INPUTS} are accepted")
    parameters = _parameters(raw.get("parameters"), "the request")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidRequest("parameters.binary_data_output must be true or false")
    rest = memoryview(body)[json_size:] if json_size is not None else memoryview(b"")
    offset = 0
    tensors: list[InputTensor] = []
    for i, item in enumerate(inputs):
        tensor, used = _input(item, i, rest[offset:], json_size is not None, max_elements)
        if any(t.name == tensor.name for t in tensors):
            raise InvalidRequest(f"input {tensor.name!r} is given twice")
        tensors.append(tensor)
        offset += used
    if offset != len(rest):
        raise InvalidRequest(
            f"the body has {len(rest)} bytes after the JSON header but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    request_id = raw.get("id")
    return InferenceRequest(
        id=request_id if isinstance(request_id, str) else None,
        inputs=tensors,
        outputs=_requested(raw.get("outputs")),
        parameters=parameters,
        binary_output=binary_output,
    )


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"'parameters' of {where} must be a JSON object")
    return value


def _shape(value: Any, name: str, max_elements: int) -> tuple[tuple[int, ...], int]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_RANK
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        raise InvalidRequest(
            f"input {name!r}: 'shape' must be a list of at most {MAX_RANK} non-negative "
            f"integers, got {json.dumps(value)[:100]}"
        )
    count = math.prod(value)
    if count > max_elements:
        raise PayloadTooLarge(
            f"input {name!r} declares shape {value} = {count} elements; the limit is {max_elements}"
        )
    return tuple(value), count


def _input(
    item: Any, index: int, rest: memoryview, has_binary: bool, max_elements: int
) -> tuple[InputTensor, int]:
    """One entry of 'inputs' -> (tensor, bytes of `rest` it used)."""
    if not isinstance(item, dict):
        raise InvalidRequest(f"inputs[{index}] must be a JSON object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"inputs[{index}] needs a 'name'")
    datatype = item.get("datatype")
    if datatype not in DATATYPES:
        raise InvalidRequest(
            f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}"
        )
    shape, count = _shape(item.get("shape"), name, max_elements)
    params = _parameters(item.get("parameters"), f"input {name!r}")
    if "shared_memory_region" in params:
        raise InvalidRequest(f"input {name!r}: shared memory is not supported by this server")
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise InvalidRequest(f"input {name!r} has neither 'data' nor binary_data_size")
        return InputTensor(
            name, datatype, shape, _from_json(item["data"], datatype, shape), False
        ), 0
    if not has_binary:
        raise InvalidRequest(
            f"input {name!r} sets binary_data_size but the request has no "
            "Inference-Header-Content-Length header"
        )
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(rest):
        raise InvalidRequest(
            f"input {name!r}: binary_data_size {size!r} does not fit the {len(rest)} bytes "
            "left after the header"
        )
    data = _from_binary(rest[:size], datatype, shape, count, name)
    return InputTensor(name, datatype, shape, data, True), size


def _from_json(data: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    if not isinstance(data, list):
        raise InvalidRequest(f"'data' must be a JSON list of {datatype} values")
    try:
        if datatype == "BYTES":
            flat = np.asarray(data, dtype=object).reshape(-1)
            if not all(isinstance(s, str) for s in flat):
                raise ValueError("BYTES elements in JSON must be strings")
            out = np.empty(flat.size, dtype=object)
            out[:] = [s.encode() for s in flat]
        else:
            out = np.asarray(data, dtype=DATATYPES[datatype]).reshape(-1)
    except (ValueError, TypeError, OverflowError, UnicodeError) as exc:
        raise InvalidRequest(f"'data' is not a {datatype} tensor: {exc}") from None
    if out.size != count:
        raise InvalidRequest(
            f"'data' holds {out.size} elements but shape {list(shape)} needs {count}"
        )
    return out.reshape(shape)


def _from_binary(
    raw: memoryview, datatype: str, shape: tuple[int, ...], count: int, name: str
) -> np.ndarray:
    if datatype == "BYTES":
        return deserialize_bytes(raw, count, name).reshape(shape)
    dtype = DATATYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidRequest(
            f"input {name!r}: shape {list(shape)} of {datatype} needs "
            f"{count * dtype.itemsize} bytes; binary_data_size is {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def deserialize_bytes(raw: memoryview | bytes, count: int, name: str = "BYTES") -> np.ndarray:
    """Length-prefixed elements -> (count,) object array of bytes; InvalidRequest unless the
    buffer holds exactly `count` well-formed elements."""
    view = memoryview(raw)
    if count * _LENGTH.size > len(view):  # before allocating: each element has a length
        raise InvalidRequest(
            f"input {name!r}: {count} BYTES elements need at least {count * _LENGTH.size} "
            f"bytes; the data has {len(view)}"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidRequest(f"input {name!r}: the BYTES data ends after {i} of {count}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidRequest(
                f"input {name!r}: element {i} claims {length} bytes, {len(view) - offset} remain"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidRequest(
            f"input {name!r}: {len(view) - offset} bytes left over after {count} BYTES elements"
        )
    return out


def serialize_bytes(data: np.ndarray) -> bytes:
    """A BYTES tensor (bytes or str elements) -> length-prefixed elements, row-major."""
    parts = []
    for item in data.reshape(-1):
        value = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def _requested(value: Any) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 64:
        raise InvalidRequest("'outputs' must be a list of at most 64 {name, parameters} objects")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequest(f"outputs[{i}] must be an object with a 'name'")
        params = _parameters(item.get("parameters"), f"output {item['name']!r}")
        if "classification" in params or "shared_memory_region" in params:
            raise InvalidRequest(
                f"output {item['name']!r}: the classification and shared-memory extensions "
                "are not supported; send encoded images as BYTES to get labels"
            )
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidRequest(f"output {item['name']!r}: binary_data must be true or false")
        out.append(RequestedOutput(item["name"], binary))
    return out


def check_requested(names: Sequence[str], requested: list[RequestedOutput] | None) -> None:
    """InvalidRequest unless every requested output is one of `names`."""
    for want in requested or ():
        if want.name not in names:
            raise InvalidRequest(
                f"unknown output {want.name!r}; this request can return {', '.join(names)}"
            )


def select_outputs(
    available: Mapping[str, OutputTensor], requested: list[RequestedOutput] | None
) -> list[tuple[OutputTensor, bool | None]]:
    """The outputs to answer with, each with its binary_data choice (None: the default)."""
    if requested is None:
        return [(t, None) for t in available.values()]
    check_requested(list(available), requested)
    return [(available[want.name], want.binary) for want in requested]


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[tuple[OutputTensor, bool | None]],
    binary_default: bool,
) -> tuple[bytes, int | None]:
    """-> (body, JSON header size or None when all of the body is JSON)."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, binary in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.data.shape),
        }
        if binary_default if binary is None else binary:
            blob = _to_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _to_json(tensor)
        entries.append(entry)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        answer["id"] = request_id
    answer["outputs"] = entries
    head = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def _to_bytes(tensor: OutputTensor) -> bytes:
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data)
    dtype = DATATYPES[tensor.datatype]
    return np.ascontiguousarray(tensor.data, dtype=dtype).tobytes()


def _to_json(tensor: OutputTensor) -> list[Any]:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [v if isinstance(v, str) else bytes(v).decode(errors="replace") for v in flat]
    values: list[Any] = flat.tolist()
    return values
