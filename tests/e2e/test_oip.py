"""The Open Inference Protocol over real HTTP (uvicorn in a subprocess), driven by the clients
people use: `tritonclient.http` and the kserve SDK's InferenceRESTClient. Raw tensors must equal
a plain onnxruntime run of the same file; encoded images must equal what /classify and /detect
answer for the same photos; client mistakes are 4xx in the protocol's error shape."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service.cards import read_card
from service.oip import metadata_shape
from tests.support.app import start_server
from tests.support.images import encode, noise_image

pytestmark = pytest.mark.e2e

MAX_BATCH = 4
MAX_BYTES = 2_000_000
PHOTOS = [
    encode(noise_image(120, 80, seed=4), "JPEG", quality=95),
    encode(noise_image(64, 96, seed=5), "JPEG", quality=90),
    encode(noise_image(200, 150, seed=6), "PNG"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_classifier_dir: Path, tiny_detector_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("oip-models")
    for name, source in (("tiny-cls", tiny_classifier_dir), ("tiny-yolo", tiny_detector_dir)):
        shutil.copytree(source / name, out / name)
    return out


@pytest.fixture(scope="module")
def url(models: Path) -> Iterator[str]:
    yield from start_server(
        models, IIS_MAX_BATCH=str(MAX_BATCH), IIS_MAX_UPLOAD_BYTES=str(MAX_BYTES)
    )


@pytest.fixture(scope="module")
def client(url: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url.removeprefix("http://"))


def onnx_run(models: Path, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(
        str(models / name / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))


def image_input(photos: list[bytes], binary: bool = True, shape: list[int] | None = None):
    tensor = triton.InferInput("image", shape or [len(photos)], "BYTES")
    tensor.set_data_from_numpy(np.array(photos, dtype=object).reshape(tensor.shape()), binary)
    return tensor


# --- health and metadata ---------------------------------------------------------------------


def test_server_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "image-inference-service" and meta["version"]
    assert {"model_repository", "binary_tensor_data"} <= set(meta["extensions"])


@pytest.mark.parametrize("name", ["tiny-cls", "tiny-yolo"])
def test_model_metadata_is_the_card(client, models, name):
    card = read_card(models / name).card
    meta = client.get_model_metadata(name)
    assert meta["name"] == name and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {
            "name": card.inputs[0].name,
            "datatype": "FP32",
            "shape": metadata_shape(card.inputs[0].shape),
        }
    ]
    assert meta["inputs"][0]["shape"][0] == -1  # the batch axis is symbolic
    assert meta["outputs"] == [
        {"name": s.name, "datatype": "FP32", "shape": metadata_shape(s.shape)} for s in card.outputs
    ]
    assert meta["parameters"]["task"] == card.task
    assert meta["parameters"]["max_batch_size"] == MAX_BATCH
    assert meta["image_input"]["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert client.get_model_metadata(name, "1") == meta


def test_model_readiness(client):
    assert client.is_model_ready("tiny-cls") and client.is_model_ready("tiny-yolo", "1")
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready("tiny-cls", "7")


# --- raw tensors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "binary_in", "binary_out"),
    [(1, True, True), (3, False, False), (3, True, False), (2 * MAX_BATCH + 1, False, True)],
)
def test_raw_tensors_equal_onnxruntime(client, models, rows, binary_in, binary_out):
    card = read_card(models / "tiny-cls").card
    x = np.random.default_rng(rows).standard_normal((rows, 3, 32, 32)).astype(np.float32)
    tensor = triton.InferInput(card.inputs[0].name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    out = card.outputs[0].name
    result = client.infer(
        "tiny-cls", [tensor], outputs=[triton.InferRequestedOutput(out, binary_data=binary_out)]
    )
    (answer,) = result.get_response()["outputs"]
    assert ("parameters" in answer) == binary_out and ("data" in answer) == (not binary_out)
    assert result.get_response()["model_name"] == "tiny-cls"
    np.testing.assert_allclose(
        result.as_numpy(out), onnx_run(models, "tiny-cls", x)[out], rtol=1e-5, atol=1e-6
    )


def test_raw_detector_tensor_every_output(client, models):
    x = np.random.default_rng(1).random((2, 3, 64, 64), dtype=np.float32)
    tensor = triton.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("tiny-yolo", [tensor], model_version="1")  # no outputs: all, binary
    want = onnx_run(models, "tiny-yolo", x)
    assert [o["name"] for o in result.get_response()["outputs"]] == list(want)
    for name, value in want.items():
        np.testing.assert_allclose(result.as_numpy(name), value, rtol=1e-5, atol=1e-5)


# --- encoded images --------------------------------------------------------------------------


def rest(url: str, path: str, photo: bytes, **params: object) -> dict:
    r = httpx.post(f"{url}{path}", params=params, files={"image": ("p", photo)}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("binary_out", [True, False])
def test_jpeg_batch_gives_the_classify_top_k(client, url, binary_out):
    outputs = [triton.InferRequestedOutput(n, binary_data=binary_out)
               for n in ("labels", "scores", "class_ids")]  # fmt: skip
    result = client.infer(
        "tiny-cls", [image_input(PHOTOS)], outputs=outputs, parameters={"top_k": 3}
    )
    labels, scores, ids = (result.as_numpy(n) for n in ("labels", "scores", "class_ids"))
    assert labels.shape == scores.shape == ids.shape == (len(PHOTOS), 3)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    for i, photo in enumerate(PHOTOS):
        want = rest(url, "/classify", photo, top_k=3)["predictions"]
        got = [x.decode() if isinstance(x, bytes) else x for x in labels[i]]
        assert got == [p["label"] for p in want]
        assert ids[i].tolist() == [p["class_id"] for p in want]
        np.testing.assert_allclose(scores[i], [p["score"] for p in want], rtol=1e-5)


def test_one_image_as_n_by_1_with_the_default_top_k(client, url):
    result = client.infer("tiny-cls", [image_input(PHOTOS[:1], shape=[1, 1])])
    want = rest(url, "/classify", PHOTOS[0])["predictions"]  # top_k 5 > 3 classes: all three
    assert result.as_numpy("class_ids").tolist() == [[p["class_id"] for p in want]]


def test_jpeg_batch_gives_the_detect_boxes(client, url):
    params = {"score_threshold": 0.3, "max_detections": 20}
    result = client.infer("tiny-yolo", [image_input(PHOTOS)], parameters=params)
    boxes, scores, ids, labels, counts = (
        result.as_numpy(n) for n in ("boxes", "scores", "class_ids", "labels", "counts")
    )
    assert boxes.shape[:2] == scores.shape == ids.shape == labels.shape
    assert boxes.shape[0] == len(PHOTOS) and boxes.shape[2] == 4
    assert counts.max() == boxes.shape[1] > 0
    for i, photo in enumerate(PHOTOS):
        want = rest(url, "/detect", photo, **params)["detections"]
        n = int(counts[i])
        assert n == len(want)
        np.testing.assert_allclose(boxes[i, :n], [d["box"] for d in want], atol=0.01)
        np.testing.assert_allclose(scores[i, :n], [d["score"] for d in want], atol=1e-5)
        assert ids[i, :n].tolist() == [d["class_id"] for d in want]
        assert [x.decode() for x in labels[i, :n]] == [d["label"] for d in want]
        assert (ids[i, n:] == -1).all() and (boxes[i, n:] == 0).all()  # padding


def test_json_images_are_base64(client, url):
    body = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                    "data": [base64.b64encode(p).decode() for p in PHOTOS[:2]]}],
        "parameters": {"top_k": 2},
    }  # fmt: skip
    r = httpx.post(f"{url}/v2/models/tiny-cls/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    binary = client.infer("tiny-cls", [image_input(PHOTOS[:2])], parameters={"top_k": 2})
    assert outputs["class_ids"]["shape"] == [2, 2]
    assert outputs["class_ids"]["data"] == binary.as_numpy("class_ids").reshape(-1).tolist()
    assert outputs["labels"]["data"] == [x.decode() for x in binary.as_numpy("labels").ravel()]


# --- client mistakes -------------------------------------------------------------------------


def raw_input(name: str, shape: list[int], datatype: str = "FP32", dtype=np.float32):
    tensor = triton.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype=dtype))
    return tensor


MISTAKES = [
    # (model, inputs, outputs, parameters, status, fragment)
    ("tiny-cls", lambda: [raw_input("input", [1, 3, 32, 32], "FP64", np.float64)], None, None,
     "400", "is FP32; got FP64"),
    ("tiny-cls", lambda: [raw_input("input", [1, 3, 16, 16])], None, None, "400", "has shape"),
    ("tiny-cls", lambda: [raw_input("pixels", [1, 3, 32, 32])], None, None, "400",
     "unknown input 'pixels'"),
    ("no-such-model", lambda: [raw_input("input", [1, 3, 32, 32])], None, None, "404",
     "unknown model"),
    ("tiny-cls", lambda: [raw_input("input", [400, 3, 32, 32])], None, None, "413",
     "upload limit"),
    ("tiny-cls", lambda: [raw_input("input", [8 * MAX_BATCH + 1, 3, 32, 32])], None, None, "413",
     "at most 32"),
    ("tiny-cls", lambda: [image_input([b"not an image"])], None, None, "400", "image 0:"),
    ("tiny-cls", lambda: [raw_input("image", [1], "INT64", np.int64)], None, None, "400",
     "takes encoded images as BYTES"),
    ("tiny-cls", lambda: [image_input(PHOTOS[:1])], [triton.InferRequestedOutput("boxes")],
     None, "400", "unknown output 'boxes'"),
    ("tiny-cls", lambda: [image_input(PHOTOS[:1])], None, {"top_k": 0}, "422", "top_k"),
    ("tiny-yolo", lambda: [image_input(PHOTOS[:1])], None, {"score_threshold": "high"}, "422",
     "score_threshold"),
]  # fmt: skip


@pytest.mark.parametrize(("model", "inputs", "outputs", "params", "status", "fragment"), MISTAKES)
def test_client_mistakes_are_4xx(client, model, inputs, outputs, params, status, fragment):
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, inputs(), outputs=outputs, parameters=params)
    assert caught.value.status() == status, caught.value
    assert fragment in caught.value.message()


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1000000000], "data": []}]}',
         {}, 413, "declares shape"),
        (b"{}", {"Inference-Header-Content-Length": "99"}, 400, "Inference-Header-Content-Length"),
        (b'{"inputs": []', {}, 400, "not valid JSON"),
    ],
)  # fmt: skip
def test_errors_come_in_the_protocol_shape(url, body, headers, status, fragment):
    r = httpx.post(f"{url}/v2/models/tiny-cls/infer", content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    answer = r.json()
    assert set(answer) == {"error", "code", "request_id"}
    assert fragment in answer["error"] and answer["request_id"] == r.headers["x-request-id"]


# --- keys and load shedding: the same as the REST routes -------------------------------------


@pytest.fixture(scope="module")
def guarded(models: Path) -> Iterator[str]:
    yield from start_server(models, IIS_API_KEYS="s3cret", IIS_MAX_BATCH="1", IIS_MAX_QUEUE="1")


def test_api_keys_and_the_queue_limit_apply(guarded):
    client = triton.InferenceServerClient(guarded.removeprefix("http://"))
    x = np.zeros((3, 3, 32, 32), np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("tiny-cls", [tensor])
    assert caught.value.status() == "401" and "API key" in caught.value.message()
    key = {"X-API-Key": "s3cret"}
    one = triton.InferInput("input", [1, 3, 32, 32], "FP32")
    one.set_data_from_numpy(x[:1])
    answer = client.infer("tiny-cls", [one], headers=dict(key))  # infer adds to the dict
    assert answer.as_numpy("logits").shape == (1, 3)
    # three rows at max_batch 1 are three entries in a queue that holds one: shed, as REST is
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 3, 32, 32],
                        "data": x.ravel().tolist()}]}  # fmt: skip
    r = httpx.post(f"{guarded}/v2/models/tiny-cls/infer", json=body, headers=key, timeout=30)
    assert r.status_code == 429, r.text
    assert r.headers["retry-after"] and r.json()["code"] == "overloaded"


# --- the kserve SDK --------------------------------------------------------------------------


def test_kserve_rest_client(url, models):
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    x = np.random.default_rng(7).standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = onnx_run(models, "tiny-cls", x)["logits"]

    async def session() -> None:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
        try:
            assert await client.is_server_live(url) and await client.is_server_ready(url)
            assert await client.is_model_ready(url, "tiny-cls")
            assert not await client.is_model_ready(url, "no-such-model")
            for binary in (False, True):
                tensor = InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x, binary_data=binary)
                request = InferRequest(
                    "tiny-cls",
                    [tensor],
                    request_outputs=[RequestedOutput("logits", {"binary_data": binary})],
                )
                answer = await client.infer(url, request, model_name="tiny-cls")
                assert answer.model_name == "tiny-cls"
                np.testing.assert_allclose(answer.outputs[0].as_numpy(), want, rtol=1e-5, atol=1e-6)
            images = InferInput("image", [2], "BYTES")
            images.set_data_from_numpy(np.array(PHOTOS[:2], dtype=object), binary_data=True)
            request = InferRequest("tiny-cls", [images], parameters={"top_k": 1})
            answer = await client.infer(url, request, model_name="tiny-cls")
            by_name = {o.name: o.as_numpy() for o in answer.outputs}
            for i, photo in enumerate(PHOTOS[:2]):
                top = rest(url, "/classify", photo, top_k=1)["predictions"][0]
                assert by_name["class_ids"][i].tolist() == [top["class_id"]]
            bad = InferInput("input", [1, 3, 8, 8], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32), binary_data=False)
            with pytest.raises(Exception, match="has shape") as caught:
                await client.infer(url, InferRequest("tiny-cls", [bad]), model_name="tiny-cls")
            assert json.loads(caught.value.response.text)["code"] == "invalid_request"
        finally:
            await client.close()

    asyncio.run(session())
