"""POST /verify-faces and /faces/embed over tiny models built by the project's own exporters.

The tiny detector is a YuNet-shaped graph that finds a "face" in every bright 32x32 cell of its
input (stride 32) with fixed landmarks inside the cell, so expected boxes are exact; the
embedder is a small random tower (both in tests/support/faces.py). Expected answers are
recomputed with bare sessions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.cards import read_card
from service.images import decode
from service.tasks import faces as F_
from tests.support.app import serve
from tests.support.faces import KPS, OUTPUTS, THRESHOLD, photo, png
from tests.support.images import encode


@pytest.fixture(scope="module")
def client(tiny_faces_dir: Path) -> Iterator[TestClient]:
    with serve(tiny_faces_dir) as c:
        yield c


def expected_similarity(models: Path, a: Image.Image, b: Image.Image) -> float:
    """The pipeline recomputed from the pure functions and bare sessions."""
    det, emb = read_card(models / "tiny-facedet"), read_card(models / "tiny-faceemb")
    sd = ort.InferenceSession(str(det.onnx_path), providers=["CPUExecutionProvider"])
    se = ort.InferenceSession(str(emb.onnx_path), providers=["CPUExecutionProvider"])
    settings = F_.EmbedderSettings.from_card(emb.card)
    crops = []
    for img in (a, b):
        decoded = decode(encode(img, "PNG"), max_pixels=10**7)
        tensor, geometry = F_.detect_preprocess(decoded, det.card.preprocess)
        outs = dict(zip(OUTPUTS, (o[0] for o in sd.run(OUTPUTS, {"input": tensor})), strict=True))
        found = F_.detect_postprocess(
            outs, (640, 640), geometry, F_.DetectorSettings.from_card(det.card)
        )
        marks = found.landmarks[F_.largest(found)]
        crops.append(F_.align(decoded.pixels, marks, settings.template, settings.size))
    (e,) = se.run(None, {"input": F_.embed_preprocess(crops, emb.card.preprocess)})
    return F_.cosine_similarity(e[0], e[1])


def test_same_photo_is_the_same_person(client: TestClient):
    img = photo(1)
    r = client.post("/verify-faces", files={"image_a": png(img), "image_b": png(img)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verified"] is True
    assert body["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert body["distance"] == pytest.approx(0.0, abs=3e-3)
    assert (body["metric"], body["threshold"]) == ("cosine", THRESHOLD)
    assert (body["model"], body["detector"]) == ("tiny-faceemb", "tiny-facedet")
    assert body["faces_found"] == {"a": 1, "b": 1}
    assert body["images"]["a"] == {"width": 320, "height": 320}
    # the bright square is the face: original pixels [48, 16, 64, 32]
    face = body["faces"]["a"]
    assert face["box"] == pytest.approx([48, 16, 64, 32], abs=0.01)
    expected = (np.array([3, 1]) + np.array(KPS).reshape(5, 2)) * 16
    np.testing.assert_allclose(face["landmarks"], expected, atol=0.01)
    assert face["score"] > 0.95
    assert {"decode", "detect", "align", "embed", "total"} <= set(body["timing_ms"])


def test_different_photos_match_the_bare_pipeline(client: TestClient, tiny_faces_dir: Path):
    a, b = photo(1), photo(2, cell=(10, 12), size=(400, 300))
    r = client.post("/verify-faces", files={"image_a": png(a), "image_b": png(b)})
    assert r.status_code == 200, r.text
    body = r.json()
    want = expected_similarity(tiny_faces_dir, a, b)
    assert body["similarity"] == pytest.approx(want, abs=1e-5)
    assert body["distance"] ** 2 == pytest.approx(2 - 2 * want, abs=1e-4)
    assert body["verified"] is (want >= THRESHOLD)
    # 400x300 -> 640x480 at scale 1.6, so cell (10, 12) is [200, 240, 220, 260] originally
    assert body["faces"]["b"]["box"] == pytest.approx([200, 240, 220, 260], abs=0.01)
    assert body["images"]["b"] == {"width": 400, "height": 300}


def test_both_faces_are_embedded_in_one_batch(client: TestClient):
    def batches() -> int:
        models = client.get("/v1/models").json()["models"]
        (emb,) = [m for m in models if m["card"]["name"] == "tiny-faceemb"]
        return int(emb["batching"]["batches_run"])

    before = batches()
    img = photo(4)
    r = client.post("/verify-faces", files={"image_a": png(img), "image_b": png(photo(5))})
    assert r.status_code == 200, r.text
    assert batches() == before + 1


@pytest.mark.parametrize(
    ("query", "metric", "threshold"),
    [
        ("metric=euclidean", "euclidean", 1.0),  # from the card: sqrt(2 - 2 * 0.5)
        ("metric=euclidean&threshold=0.0001", "euclidean", 0.0001),
        ("threshold=0.9999", "cosine", 0.9999),
    ],
)
def test_metric_and_threshold_overrides(client: TestClient, query, metric, threshold):
    a, b = photo(1), photo(3)
    r = client.post(f"/verify-faces?{query}", files={"image_a": png(a), "image_b": png(b)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metric"] == metric and body["threshold"] == pytest.approx(threshold)
    value = body["similarity"] if metric == "cosine" else body["distance"]
    passes = value >= threshold if metric == "cosine" else value <= threshold
    assert body["verified"] is passes


@pytest.mark.parametrize(
    ("query", "needle"),
    [("metric=manhattan", "metric"), ("threshold=1.5", "cosine threshold must lie")],
)
def test_bad_parameters_are_422(client: TestClient, query, needle):
    img = png(photo(1))
    r = client.post(f"/verify-faces?{query}", files={"image_a": img, "image_b": img})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_parameter"
    assert needle in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("a_has_face", "b_has_face", "named", "not_named"),
    [(True, False, "image_b", "image_a"), (False, True, "image_a", "image_b")],
)
def test_no_face_names_the_image(client: TestClient, a_has_face, b_has_face, named, not_named):
    dark = Image.new("RGB", (200, 150), (10, 10, 10))
    a = photo(1) if a_has_face else dark
    b = photo(2) if b_has_face else dark
    r = client.post("/verify-faces", files={"image_a": png(a), "image_b": png(b)})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "no_face"
    assert named in error["message"] and not_named not in error["message"]


def test_no_face_in_either_image_names_both(client: TestClient):
    dark = png(Image.new("RGB", (200, 150), (10, 10, 10)))
    r = client.post("/verify-faces", files={"image_a": dark, "image_b": dark})
    assert r.status_code == 422
    assert "image_a and image_b" in r.json()["error"]["message"]


def test_missing_image_is_400(client: TestClient):
    r = client.post("/verify-faces", files={"image_a": png(photo(1))})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and "image_b" in error["message"]


def test_undecodable_image_is_400(client: TestClient):
    r = client.post(
        "/verify-faces",
        files={"image_a": png(photo(1)), "image_b": ("x.jpg", b"not an image", "image/jpeg")},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"


def test_unknown_model_is_404(client: TestClient):
    img = png(photo(1))
    r = client.post("/verify-faces?model=nope", files={"image_a": img, "image_b": img})
    assert r.status_code == 404 and "tiny-faceemb" in r.json()["error"]["message"]


def test_embed_returns_every_face(client: TestClient):
    img = np.asarray(photo(6)).copy()
    img[160:176, 240:256] = 255  # a second bright square: cell (15, 10)
    r = client.post("/faces/embed", files={"image": png(Image.fromarray(img))})
    assert r.status_code == 200, r.text
    body = r.json()
    boxes = sorted(tuple(f["box"]) for f in body["faces"])
    assert boxes == [pytest.approx((48, 16, 64, 32)), pytest.approx((240, 160, 256, 176))]
    for face in body["faces"]:
        assert len(face["embedding"]) == 16
        assert np.linalg.norm(face["embedding"]) == pytest.approx(1.0, abs=1e-4)
    r = client.post("/faces/embed?max_faces=1", files={"image": png(Image.fromarray(img))})
    assert len(r.json()["faces"]) == 1


def test_embed_without_faces_is_an_empty_list(client: TestClient):
    r = client.post("/faces/embed", files={"image": png(Image.new("RGB", (64, 64)))})
    assert r.status_code == 200 and r.json()["faces"] == []


def test_large_jpeg_decoded_at_reduced_scale_keeps_original_coordinates(client: TestClient):
    # 1400 px: decoded at 1/2 (JPEG draft) for the 640 px detector; a 70 px cell is a face
    jpg = (
        "big.jpg",
        encode(photo(7, cell=(3, 1), size=(1400, 1400)), "JPEG", quality=95),
        "image/jpeg",
    )
    r = client.post("/verify-faces", files={"image_a": jpg, "image_b": jpg})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["images"]["a"] == {"width": 1400, "height": 1400}
    assert body["faces"]["a"]["box"] == pytest.approx([210, 70, 280, 140], abs=0.01)
    expected = (np.array([3, 1]) + np.array(KPS).reshape(5, 2)) * 70
    np.testing.assert_allclose(body["faces"]["a"]["landmarks"], expected, atol=0.01)
    assert body["similarity"] == pytest.approx(1.0, abs=1e-5)
