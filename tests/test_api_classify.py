"""/classify and the service endpoints over a tiny exported model, through the real lifespan."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.cards import read_card
from service.images import DecodedImage
from service.tasks.classify import postprocess, preprocess
from tests.helpers import encode, noise_image


def expected_top(tiny_classifier_dir, img: Image.Image) -> tuple[list[int], np.ndarray]:
    """The answer computed without the service: card preprocess + a bare session + softmax."""
    loaded = read_card(tiny_classifier_dir / "tiny-cls")
    pixels = np.asarray(img.convert("RGB"))
    decoded = DecodedImage(pixels, pixels.shape[1], pixels.shape[0], "PNG")
    session = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": preprocess([decoded], loaded.card)})
    (pred,) = postprocess(logits, 3, "softmax")
    return pred.class_id.tolist(), pred.score


def test_classify_matches_a_bare_session(classify_client: TestClient, tiny_classifier_dir):
    img = noise_image(80, 60, seed=3)
    r = classify_client.post(
        "/classify?top_k=3", files={"image": ("x.png", encode(img, "PNG"), "image/png")}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    ids, scores = expected_top(tiny_classifier_dir, img)
    assert body["model"] == "tiny-cls"
    assert [p["class_id"] for p in body["predictions"]] == ids
    assert [p["label"] for p in body["predictions"]] == [
        ["apple", "banana", "cherry"][i] for i in ids
    ]
    np.testing.assert_allclose([p["score"] for p in body["predictions"]], scores, rtol=1e-5)
    assert sum(p["score"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-5)
    assert body["image"] == {"width": 80, "height": 60}
    assert set(body["timing_ms"]) >= {"decode", "preprocess", "inference", "total"}
    assert r.headers["x-request-id"]
