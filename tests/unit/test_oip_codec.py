"""service/oip.py, the Open Inference Protocol tensor codec, with numpy alone: every datatype
both ways (JSON and binary), the response layout tritonclient reads, and each malformed request
refused with a 4xx and a sentence that names the problem."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from service.errors import InvalidRequest, PayloadTooLarge
from service.oip import (
    DATATYPES,
    OutputTensor,
    RequestedOutput,
    datatype_of,
    deserialize_bytes,
    encode_response,
    header_length,
    metadata_shape,
    parse_request,
    select_outputs,
    serialize_bytes,
)

LIMIT = 1_000_000
NUMERIC = [d for d in DATATYPES if d != "BYTES"]


def json_body(*inputs: dict, **extra: object) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def binary_body(header: dict, *blobs: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), len(head)


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    dtype = DATATYPES[datatype]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -1000), min(info.max, 1000), shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("float32", "FP32"),
        ("int64", "INT64"),
        (np.dtype(np.uint8), "UINT8"),
        (np.dtype(np.float16), "FP16"),
        (np.dtype(bool), "BOOL"),
        (np.dtype(object), "BYTES"),
        ("S3", "BYTES"),
    ],
)
def test_datatype_of(dtype, expected):
    assert datatype_of(dtype) == expected


@pytest.mark.parametrize(
    ("dims", "expected"),
    [(["batch", 3, 224, 224], [-1, 3, 224, 224]), ([1, "h", "w"], [1, -1, -1]), ([], [])],
)
def test_metadata_shape(dims, expected):
    assert metadata_shape(dims) == expected


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numeric_tensor_from_json_and_binary(datatype):
    x = sample(datatype, (2, 3))
    body = json_body({"name": "x", "datatype": datatype, "shape": [2, 3], "data": x.tolist()})
    (from_json,) = parse_request(body, None, LIMIT).inputs
    np.testing.assert_array_equal(from_json.data, x)
    assert from_json.data.dtype == DATATYPES[datatype] and not from_json.binary

    raw = x.tobytes()
    header = {
        "inputs": [
            {"name": "x", "datatype": datatype, "shape": [2, 3],
             "parameters": {"binary_data_size": len(raw)}},
        ]
    }  # fmt: skip
    body, size = binary_body(header, raw)
    (from_binary,) = parse_request(body, size, LIMIT).inputs
    np.testing.assert_array_equal(from_binary.data, x)
    assert from_binary.binary and from_binary.shape == (2, 3)


def test_flat_and_nested_json_data_are_the_same_tensor():
    flat = json_body({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]})
    nested = json_body({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]})
    a = parse_request(flat, None, LIMIT).inputs[0].data
    b = parse_request(nested, None, LIMIT).inputs[0].data
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 2)


def test_bytes_tensors_both_ways():
    items = [b"\xff\xd8jpeg", b"", b"png\x00data"]
    raw = serialize_bytes(np.array(items, dtype=object))
    assert raw[:4] == struct.pack("<I", 6)
    np.testing.assert_array_equal(deserialize_bytes(raw, 3), np.array(items, dtype=object))
    header = {
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [3],
             "parameters": {"binary_data_size": len(raw)}},
            {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["héllo"]},
        ],
        "parameters": {"top_k": 2},
    }  # fmt: skip
    body, size = binary_body(header, raw)
    request = parse_request(body, size, LIMIT)
    assert list(request.inputs[0].data) == items
    assert list(request.inputs[1].data) == ["héllo".encode()]
    assert request.parameters == {"top_k": 2} and request.outputs is None


def test_two_binary_inputs_are_read_in_order():
    a, b = np.arange(3, dtype=np.float32), np.arange(4, dtype=np.int64)
    header = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [3],
             "parameters": {"binary_data_size": 12}},
            {"name": "b", "datatype": "INT64", "shape": [4],
             "parameters": {"binary_data_size": 32}},
        ]
    }  # fmt: skip
    body, size = binary_body(header, a.tobytes(), b.tobytes())
    got = parse_request(body, size, LIMIT).inputs
    np.testing.assert_array_equal(got[0].data, a)
    np.testing.assert_array_equal(got[1].data, b)


def _fp32(shape: object, **extra: object) -> dict:
    return {"name": "x", "datatype": "FP32", "shape": shape, **extra}


BAD_REQUESTS = [
    # (body, header size, error, fragment of the message)
    (b"{not json", None, InvalidRequest, "not valid JSON"),
    (b"[1, 2]", None, InvalidRequest, "JSON object"),
    (json_body(), None, InvalidRequest, "non-empty list"),
    (b"[" * 100_000, None, InvalidRequest, "not valid JSON"),
    (json_body(_fp32([1], data=[1]), _fp32([1], data=[1])), None, InvalidRequest, "given twice"),
    (json_body({"datatype": "FP32", "shape": [1], "data": [1]}), None, InvalidRequest, "'name'"),
    (json_body(_fp32([1], data=[1], datatype="FP8")), None, InvalidRequest, "datatype 'FP8'"),
    (json_body(_fp32([1], data=[1], datatype="BF16")), None, InvalidRequest, "datatype 'BF16'"),
    (json_body(_fp32([-1], data=[1])), None, InvalidRequest, "non-negative integers"),
    (json_body(_fp32([True], data=[1])), None, InvalidRequest, "non-negative integers"),
    (json_body(_fp32("3", data=[1])), None, InvalidRequest, "non-negative integers"),
    (json_body(_fp32([1] * 9, data=[1])), None, InvalidRequest, "at most 8"),
    (json_body(_fp32([2**40, 2**40], data=[1])), None, PayloadTooLarge, "the limit is"),
    (json_body(_fp32([2, 2], data=[1, 2, 3])), None, InvalidRequest, "holds 3 elements"),
    (json_body(_fp32([2], data=[[1, 2], [3]])), None, InvalidRequest, "not a FP32 tensor"),
    (json_body(_fp32([1], data=["a"])), None, InvalidRequest, "not a FP32 tensor"),
    (json_body(_fp32([1], data=1.0)), None, InvalidRequest, "JSON list"),
    (json_body(_fp32([1])), None, InvalidRequest, "neither 'data'"),
    (json_body(_fp32([1], data=[1], datatype="INT64") | {"data": [2**70]}), None, InvalidRequest,
     "not a INT64 tensor"),
    (json_body({"name": "s", "datatype": "BYTES", "shape": [1], "data": [1]}), None,
     InvalidRequest, "must be strings"),
    (json_body(_fp32([1], parameters={"binary_data_size": 4})), None, InvalidRequest,
     "no Inference-Header-Content-Length"),
    (json_body(_fp32([1], data=[1]), parameters=[1]), None, InvalidRequest, "JSON object"),
    (json_body(_fp32([1], data=[1]), parameters={"binary_data_output": "yes"}), None,
     InvalidRequest, "binary_data_output"),
    (json_body(_fp32([1], data=[1], parameters={"shared_memory_region": "r"})), None,
     InvalidRequest, "shared memory"),
    (json_body(_fp32([1], data=[1]), outputs=[{"name": "y",
                                               "parameters": {"classification": 3}}]),
     None, InvalidRequest, "classification"),
    (json_body(_fp32([1], data=[1]), outputs=[{"name": "y", "parameters": {"binary_data": 1}}]),
     None, InvalidRequest, "binary_data must be"),
    (json_body(_fp32([1], data=[1]), outputs="y"), None, InvalidRequest, "'outputs' must be"),
    (json_body(*[_fp32([1], data=[1], name=f"x{i}") for i in range(17)]), None, InvalidRequest,
     "at most 16"),
]  # fmt: skip


def _binary(header_inputs: list[dict], tail: bytes) -> tuple[bytes, int]:
    return binary_body({"inputs": header_inputs}, tail)


BAD_BINARY = [
    # the body after the header is shorter, longer or differently sized than declared
    (_binary([_fp32([2], parameters={"binary_data_size": 8})], b"\0" * 4), "does not fit"),
    (_binary([_fp32([2], parameters={"binary_data_size": 8})], b"\0" * 12), "add up to 8"),
    (_binary([_fp32([3], parameters={"binary_data_size": 8})], b"\0" * 8), "needs 12 bytes"),
    (_binary([_fp32([1], parameters={"binary_data_size": -4})], b""), "does not fit"),
    (_binary([_fp32([1], parameters={"binary_data_size": "4"})], b"\0" * 4), "does not fit"),
    # BYTES: a length past the end, a count the buffer cannot hold, bytes left over
    (_binary([{"name": "s", "datatype": "BYTES", "shape": [1],
               "parameters": {"binary_data_size": 6}}], struct.pack("<I", 99) + b"ab"),
     "claims 99 bytes"),
    (_binary([{"name": "s", "datatype": "BYTES", "shape": [100_000],
               "parameters": {"binary_data_size": 8}}], struct.pack("<I", 0) * 2),
     "need at least"),
    (_binary([{"name": "s", "datatype": "BYTES", "shape": [1],
               "parameters": {"binary_data_size": 7}}], struct.pack("<I", 1) + b"abc"),
     "left over"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "size", "error", "fragment"), BAD_REQUESTS)
def test_bad_requests_are_refused(body, size, error, fragment):
    with pytest.raises(error, match=fragment) as caught:
        parse_request(body, size, LIMIT)
    assert 400 <= caught.value.status_code < 500


@pytest.mark.parametrize(("body_and_size", "fragment"), BAD_BINARY)
def test_bad_binary_bodies_are_refused(body_and_size, fragment):
    body, size = body_and_size
    with pytest.raises(InvalidRequest, match=fragment):
        parse_request(body, size, LIMIT)


@pytest.mark.parametrize("value", ["", "abc", "-3", "0", "101", "1e3"])
def test_header_length_must_fit_the_body(value):
    with pytest.raises(InvalidRequest, match="Inference-Header-Content-Length"):
        header_length(value, 100)


def test_header_length_values():
    assert header_length(None, 10) is None
    assert header_length("10", 10) == 10


def decode_answer(body: bytes, size: int | None) -> dict[str, np.ndarray]:
    """The response as tritonclient's InferResult reads it (re-done here with numpy)."""
    head = json.loads(body if size is None else body[:size])
    blobs, offset, out = body[size or len(body) :], 0, {}
    for o in head["outputs"]:
        n = o.get("parameters", {}).get("binary_data_size")
        if n is None:
            out[o["name"]] = np.array(o["data"], dtype=DATATYPES[o["datatype"]]).reshape(o["shape"])
            continue
        chunk = blobs[offset : offset + n]
        offset += n
        if o["datatype"] == "BYTES":
            arr = deserialize_bytes(chunk, int(np.prod(o["shape"])))
        else:
            arr = np.frombuffer(chunk, dtype=DATATYPES[o["datatype"]])
        out[o["name"]] = arr.reshape(o["shape"])
    assert offset == len(blobs)
    return out


OUTPUTS = {
    "scores": OutputTensor("scores", "FP32", np.array([[0.5, 0.25]], np.float32)),
    "ids": OutputTensor("ids", "INT64", np.array([[3, 1]], np.int64)),
    "labels": OutputTensor("labels", "BYTES", np.array([["cat", "dog"]], dtype=object)),
    "empty": OutputTensor("empty", "FP32", np.zeros((1, 0, 4), np.float32)),
}


@pytest.mark.parametrize(
    ("requested", "binary_default", "binary_names"),
    [
        (None, False, []),
        (None, True, ["scores", "ids", "labels", "empty"]),
        ([RequestedOutput("labels", True), RequestedOutput("scores", None)], False, ["labels"]),
        ([RequestedOutput("ids", False), RequestedOutput("empty", True)], True, ["empty"]),
    ],
)
def test_responses_in_json_and_binary(requested, binary_default, binary_names):
    chosen = select_outputs(OUTPUTS, requested)
    body, size = encode_response("m", "2", "req-1", chosen, binary_default)
    head = json.loads(body if size is None else body[:size])
    assert (head["model_name"], head["model_version"], head["id"]) == ("m", "2", "req-1")
    assert [o["name"] for o in head["outputs"]] == [t.name for t, _ in chosen]
    assert [o["name"] for o in head["outputs"] if "parameters" in o] == binary_names
    assert (size is None) == (not binary_names)
    got = decode_answer(body, size)
    for tensor, _ in chosen:
        want = tensor.data
        if tensor.datatype == "BYTES" and tensor.name not in binary_names:
            want = want.astype(str)
        elif tensor.datatype == "BYTES":
            want = np.vectorize(str.encode, otypes=[object])(want)
        np.testing.assert_array_equal(got[tensor.name], want)
        assert got[tensor.name].shape == tensor.data.shape


def test_an_unknown_requested_output_is_refused():
    with pytest.raises(InvalidRequest, match="unknown output 'nope'"):
        select_outputs(OUTPUTS, [RequestedOutput("nope", None)])
