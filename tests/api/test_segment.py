"""/segment over a tiny Mask R-CNN exported by scripts/export/maskrcnn.py, through the real
lifespan; plus the export's own parity check.

The tiny model has random weights except its class-1 predictors, so its answers are known:
every detection is class 1 ("circle") with a score near 0.86, and every mask probability is
~0.95, so each pasted mask fills its box. That makes box and mask coordinates checkable in
original pixels.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pycocotools.mask as coco_mask
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.cards import read_card
from service.images import DecodedImage
from service.tasks.segment import GraphResize, SegmentOptions, postprocess, preprocess
from tests.support.app import serve
from tests.support.images import encode, noise_image
from tests.support.segment import LABELS

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


@pytest.fixture(scope="module")
def client(tiny_segmenter_dir: Path):
    with serve(tiny_segmenter_dir) as c:
        yield c


def post(client: TestClient, img: Image.Image, query: str = "", fmt: str = "PNG"):
    data = encode(img, fmt)
    return client.post(f"/segment{query}", files={"image": ("x.img", data, "image/png")})


def rle_of(instance: dict) -> np.ndarray:
    mask = instance["mask"]
    return coco_mask.decode({"size": mask["size"], "counts": mask["counts"]}).astype(bool)


def pixels_inside(box: list[float], h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    return (xs > box[0]) & (xs < box[2]) & (ys > box[1]) & (ys < box[3])


def test_card_and_models_endpoint(client: TestClient, tiny_segmenter_dir: Path):
    card = read_card(tiny_segmenter_dir / "tiny-seg").card
    assert card.task == "segment" and card.labels == LABELS
    assert card.preprocess.resize == "none-in-graph"
    assert card.postprocess.min_size == 128 and card.postprocess.mask_size == 28
    assert card.export["parity_vs_torch"]["max_abs_diff"] <= 1e-2
    body = client.get("/v1/models").json()
    (entry,) = [m for m in body["models"] if m["card"]["name"] == "tiny-seg"]
    assert entry["batching"]["max_batch"] == 1  # [1, 3, H, W]: fixed batch of one
    assert body["defaults"]["segment"] == "tiny-seg"


@pytest.mark.parametrize("size", [(200, 150), (640, 480), (90, 300)])
def test_rle_masks_fill_their_boxes_in_original_pixels(client: TestClient, size):
    w, h = size
    r = post(client, noise_image(w, h, seed=1))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-seg"
    assert body["image"] == {"width": w, "height": h}
    assert set(body["timing_ms"]) >= {"decode", "preprocess", "inference", "postprocess", "encode"}
    instances = body["instances"]
    assert 0 < len(instances) <= 100
    assert [i["score"] for i in instances] == sorted((i["score"] for i in instances), reverse=True)
    # boxes spread over the whole original image, not the (smaller) tensor the graph saw
    assert max(i["box"][2] for i in instances) > 0.5 * w
    for inst in instances:
        assert inst["label"] == "circle" and inst["class_id"] == 1
        assert inst["score"] == pytest.approx(0.86, abs=0.02)
        x1, y1, x2, y2 = inst["box"]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert inst["mask"]["format"] == "rle" and inst["mask"]["size"] == [h, w]
        assert set(inst["mask"]) == {"format", "size", "counts"}
        mask = rle_of(inst)
        assert int(mask.sum()) == inst["area"]
        want = pixels_inside(inst["box"], h, w)
        # a ~constant map fills its box except for bilinear rounding at the corners
        assert (mask & want).sum() / max(1, (mask | want).sum()) > 0.9, inst["box"]


def test_answer_equals_a_bare_session_plus_postprocess(client, tiny_segmenter_dir):
    img = noise_image(640, 480, seed=2)
    body = post(client, img).json()
    loaded = read_card(tiny_segmenter_dir / "tiny-seg")
    pixels = np.asarray(img)
    decoded = DecodedImage(pixels, 640, 480, "PNG")
    tensor, geometry = preprocess(decoded, GraphResize.of(loaded.card))
    assert tensor.shape == (1, 3, 128, 171)  # shrunk to the graph size (short side 128) first
    session = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    found = postprocess(session.run(None, {"images": tensor}), geometry, SegmentOptions())
    assert [i["box"] for i in body["instances"]] == [
        [round(float(v), 2) for v in box] for box in found.xyxy
    ]
    for inst, mask in zip(body["instances"], found.masks, strict=True):
        np.testing.assert_array_equal(rle_of(inst), mask.full())


def test_polygon_and_png_formats_describe_the_same_masks(client: TestClient):
    img = noise_image(240, 180, seed=3)
    rle = post(client, img).json()["instances"]
    poly = post(client, img, "?mask_format=polygon").json()["instances"]
    png = post(client, img, "?mask_format=png").json()["instances"]
    assert len(rle) == len(poly) == len(png) > 0
    for a, b, c in zip(rle, poly, png, strict=True):
        mask = rle_of(a)
        assert set(b["mask"]) == {"format", "size", "polygons"} and b["mask"]["format"] == "polygon"
        decoded = coco_mask.decode(
            coco_mask.merge(coco_mask.frPyObjects(b["mask"]["polygons"], 180, 240))
        ).astype(bool)
        assert (decoded & mask).sum() / (decoded | mask).sum() > 0.9
        pixels = Image.open(io.BytesIO(base64.b64decode(c["mask"]["png_base64"])))
        assert pixels.size == (240, 180)
        np.testing.assert_array_equal(np.asarray(pixels.convert("L")) > 127, mask)
        assert a["area"] == b["area"] == c["area"] == int(mask.sum())


def test_mask_threshold_score_threshold_and_classes(client: TestClient):
    img = noise_image(160, 120, seed=4)
    default = post(client, img).json()["instances"]
    assert default
    high = post(client, img, "?mask_threshold=0.97").json()["instances"]
    assert [i["box"] for i in high] == [i["box"] for i in default]
    assert all(i["area"] == 0 and not rle_of(i).any() for i in high)
    assert post(client, img, "?score_threshold=0.95").json()["instances"] == []
    assert post(client, img, "?classes=square").json()["instances"] == []
    assert len(post(client, img, "?classes=circle,2").json()["instances"]) == len(default)
    assert len(post(client, img, "?max_detections=2").json()["instances"]) == min(2, len(default))


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("?mask_format=jpeg", 422, "invalid_parameter"),
        ("?mask_threshold=1.5", 422, "invalid_parameter"),
        ("?mask_threshold=0", 422, "invalid_parameter"),
        ("?score_threshold=-1", 422, "invalid_parameter"),
        ("?classes=giraffe", 422, "invalid_parameter"),
        ("?model=nope", 404, "model_not_found"),
    ],
)
def test_bad_queries_are_client_errors(client: TestClient, query, status, code):
    r = post(client, noise_image(64, 48), query)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_bad_uploads_are_client_errors(client: TestClient):
    r = client.post("/segment", files={"image": ("x.png", b"not an image", "image/png")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
    r = client.post("/segment")
    assert r.status_code == 400


def test_jpeg_exif_rotation_is_applied_to_boxes(client: TestClient):
    img = noise_image(120, 80, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    r = client.post("/segment", files={"image": ("x.jpg", buf.getvalue(), "image/jpeg")})
    body = r.json()
    assert body["image"] == {"width": 80, "height": 120}
    for inst in body["instances"]:
        assert inst["mask"]["size"] == [120, 80]
        assert inst["box"][2] <= 80 and inst["box"][3] <= 120
