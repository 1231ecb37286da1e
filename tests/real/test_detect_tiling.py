"""`tiling` on /detect and /segment through the API, with the default models: a real photo where
the tiles find what the whole view misses, masks merged into the photo's frame, and no 5xx for
any parameter value."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pycocotools.mask as coco_mask
import pytest
from PIL import Image, ImageDraw

from scripts.recipes.detect_truth import tuning_set
from tests.support.app import serve
from tests.support.images import encode, noise_image

pytestmark = [
    pytest.mark.real_weights,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools"),
]


@pytest.fixture(scope="module")
def client(default_models: Path):
    with serve(default_models) as c:
        yield c


def post(client, path: str, data: bytes):
    return client.post(path, files={"image": ("x.jpg", data, "application/octet-stream")})


def found_objects(truths, detections) -> set[int]:
    from scripts.recipes.detect_truth import match

    return {i for i, v in enumerate(match(truths, detections)) if v >= 0.5}


def test_tiles_find_small_objects_the_whole_view_misses(client, testdata: Path):
    truths = tuning_set()["kite.jpg"]
    data = (testdata / "kite.jpg").read_bytes()
    off = post(client, "/detect?tiling=off", data).json()
    on = post(client, "/detect?tiling=on", data).json()
    assert "tiling" not in off or off["tiling"] is None
    assert on["tiling"] == {"mode": "on", "tiles": 12, "tile_size": 416, "overlap": 0.25}
    assert {"tile_preprocess", "merge", "inference"} <= set(on["timing_ms"])
    only_tiled = found_objects(truths, on["detections"]) - found_objects(truths, off["detections"])
    labels = {truths[i].labels[0] for i in only_tiled}
    assert len(only_tiled) >= 2 and labels == {"kite", "person"}, on["detections"]
    assert on["image"] == {"width": 1352, "height": 900}
    for d in on["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= 1352 and 0 <= y1 < y2 <= 900 and d["score"] >= 0.25


def test_auto_leaves_a_small_photo_alone(client, testdata: Path):
    data = (testdata / "dog.jpg").read_bytes()  # 768x576: under twice the 416 input
    off = post(client, "/detect", data).json()
    auto = post(client, "/detect?tiling=auto", data).json()
    assert auto["tiling"]["tiles"] == 0
    assert auto["detections"] == off["detections"]


def shapes_photo(scale: int) -> tuple[bytes, np.ndarray]:
    """A 3x-scaled drawing of small shapes on grey -> (PNG bytes, the circle's full mask)."""
    w, h = 400 * scale, 300 * scale
    img = Image.new("RGB", (w, h), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    box = [150 * scale, 100 * scale, 230 * scale, 180 * scale]
    draw.ellipse(box, fill=(220, 40, 40))
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return encode(img, "PNG"), np.asarray(mask) > 0


def test_segment_tiles_paste_masks_into_the_photo(client):
    data, truth = shapes_photo(3)
    body = post(client, "/segment?tiling=on&tile_size=400", data).json()
    assert body["tiling"]["tiles"] == 12  # 4 x 3 at 400 px, 25 % overlap
    assert body["image"] == {"width": 1200, "height": 900}
    assert {"tile_preprocess", "merge"} <= set(body["timing_ms"])
    for inst in body["instances"]:
        mask = coco_mask.decode(inst["mask"]).astype(bool)
        assert mask.shape == (900, 1200) and mask.sum() == inst["area"]
    circles = [i for i in body["instances"] if i["label"] == "circle" and i["score"] >= 0.5]
    assert circles, body["instances"]
    best = coco_mask.decode(circles[0]["mask"]).astype(bool)
    # one object cut by tile sides comes back as one mask covering it
    assert (best & truth).sum() / (best | truth).sum() > 0.7


WIDE = encode(noise_image(2000, 20, seed=1))
TALL = encode(noise_image(20, 2000, seed=2))
TINY = encode(noise_image(1, 1, seed=3))
PHOTO = encode(noise_image(900, 700, seed=4))


@pytest.mark.parametrize("path", ["/detect", "/segment"])
@pytest.mark.parametrize(
    "query, status",
    [
        ("tiling=on", 200),
        ("tiling=auto", 200),
        ("tiling=off", 200),
        ("tiling=ON", 422),
        ("tiling=", 422),
        ("tiling=maybe", 422),
        ("tiling=on&tile_size=64", 200),
        ("tiling=on&tile_size=4096", 200),
        ("tiling=on&tile_size=63", 422),
        ("tiling=on&tile_size=4097", 422),
        ("tiling=on&tile_size=-1", 422),
        ("tiling=on&tile_size=1e9", 422),
        ("tiling=on&tile_size=abc", 422),
        ("tiling=on&tile_overlap=0", 200),
        ("tiling=on&tile_overlap=0.75", 200),
        ("tiling=on&tile_overlap=0.76", 422),
        ("tiling=on&tile_overlap=-0.1", 422),
        ("tiling=on&tile_overlap=nan", 422),
        ("tiling=on&tile_overlap=inf", 422),
        ("tiling=on&max_tiles=1", 200),
        ("tiling=on&max_tiles=32", 200),
        ("tiling=on&max_tiles=0", 422),
        ("tiling=on&max_tiles=33", 422),
        ("tiling=on&tile_size=64&tile_overlap=0.75&max_tiles=32", 200),
        ("tiling=on&score_threshold=0&max_detections=1000", 200),
    ],
)
def test_no_5xx_for_any_parameter(client, path, query, status):
    for data in (WIDE, TALL, TINY, PHOTO):
        r = post(client, f"{path}?{query}", data)
        assert r.status_code == status, (query, r.text)
        if status == 200:
            body = r.json()
            assert (body.get("tiling") or {"tiles": 0})["tiles"] <= 32
            found = body["detections"] if path == "/detect" else body["instances"]
            for d in found:
                assert all(math.isfinite(v) for v in d["box"])


def test_huge_photo_is_capped(client):
    img = Image.new("RGB", (6000, 4000), (90, 120, 150))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=50)
    r = post(client, "/detect?tiling=on&tile_size=64&max_tiles=32", buffer.getvalue())
    assert r.status_code == 200, r.text
    tiling = r.json()["tiling"]
    assert 1 < tiling["tiles"] <= 32 and tiling["tile_size"] > 64
