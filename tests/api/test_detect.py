"""POST /detect over a tiny Darknet model exported by the project's exporter (random weights),
through the real lifespan: the body equals a bare session + postprocess; bad input is a 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from service.cards import read_card
from service.images import decode
from service.tasks.detect import DetectOptions, postprocess, preprocess
from tests.support.app import serve
from tests.support.darknet import LABELS
from tests.support.images import encode, noise_image


@pytest.fixture(scope="module")
def client(tiny_detector_dir) -> Iterator[TestClient]:
    with serve(tiny_detector_dir) as c:
        yield c


def bare(models: Path, image: bytes, options: DetectOptions):
    """The answer without the service: card preprocess, a plain session, postprocess."""
    loaded = read_card(models / "tiny-yolo")
    decoded = decode(image, max_pixels=10**8, min_side=64)
    batch, geometries = preprocess([decoded], loaded.card)
    session = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"images": batch})
    (d,) = postprocess(out, geometries, options, "yolov5")
    return d


def post(client: TestClient, image: bytes, query: str = ""):
    return client.post(f"/detect{query}", files={"image": ("x.jpg", image, "image/jpeg")})


@pytest.mark.parametrize(
    ("query", "options"),
    [
        ("", DetectOptions()),
        ("?score_threshold=0.3&iou_threshold=0.3", DetectOptions(0.3, 0.3)),
        ("?max_detections=3", DetectOptions(max_detections=3)),
        ("?classes=cherry,0", DetectOptions(classes=(0, 2))),
    ],
)
def test_detect_matches_a_bare_session(client, tiny_detector_dir, query, options):
    image = encode(noise_image(120, 80, seed=4), "JPEG", quality=95)
    r = post(client, image, query)
    assert r.status_code == 200, r.text
    body = r.json()
    want = bare(tiny_detector_dir, image, options)
    assert body["model"] == "tiny-yolo"
    assert body["image"] == {"width": 120, "height": 80}
    assert len(body["detections"]) == len(want.score) > 0
    assert [d["class_id"] for d in body["detections"]] == want.class_id.tolist()
    assert [d["label"] for d in body["detections"]] == [LABELS[i] for i in want.class_id]
    np.testing.assert_allclose([d["score"] for d in body["detections"]], want.score, atol=1e-4)
    np.testing.assert_allclose([d["box"] for d in body["detections"]], want.xyxy, atol=0.01)
    scores = [d["score"] for d in body["detections"]]
    assert scores == sorted(scores, reverse=True)
    for d in body["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= 120 and 0 <= y1 < y2 <= 80
        assert d["score"] >= options.score_threshold
    if options.classes:
        assert {d["class_id"] for d in body["detections"]} <= set(options.classes)
    assert set(body["timing_ms"]) >= {"decode", "preprocess", "inference", "postprocess", "total"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?score_threshold=1.5", "score_threshold"),
        ("?score_threshold=-0.1", "score_threshold"),
        ("?iou_threshold=2", "iou_threshold"),
        ("?max_detections=0", "max_detections"),
        ("?max_detections=1001", "max_detections"),
        ("?score_threshold=abc", "score_threshold"),
    ],
)
def test_out_of_range_query_values_are_422(client, query, field):
    r = post(client, encode(noise_image(), "JPEG"), query)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_parameter" and field in error["message"]


@pytest.mark.parametrize(("value", "bad"), [("dragon", "dragon"), ("7", "7"), ("0,-1", "-1")])
def test_unknown_classes_are_422_naming_the_value(client, value, bad):
    r = post(client, encode(noise_image(), "JPEG"), f"?classes={value}")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_parameter"
    assert f"'{bad}'" in r.json()["error"]["message"]
    assert "0..2" in r.json()["error"]["message"]


def test_client_errors(client):
    r = post(client, b"not an image at all")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
    r = post(client, encode(noise_image(), "JPEG"), "?model=nope")
    assert r.status_code == 404 and "tiny-yolo" in r.json()["error"]["message"]
    r = client.post("/detect")
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]


def test_detector_is_listed_with_its_card(client):
    body = client.get("/v1/models").json()
    assert body["defaults"]["detect"] == "tiny-yolo"
    (model,) = [m for m in body["models"] if m["card"]["name"] == "tiny-yolo"]
    assert model["ready"] is True
    assert model["card"]["postprocess"]["layout"] == "yolov5"
    assert model["card"]["labels"] == LABELS
    assert model["batching"]["max_batch"] > 1  # the dynamic batch axis survived export
