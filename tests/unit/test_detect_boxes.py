"""IoU, greedy NMS, class-wise NMS and the letterbox round trip: pure numpy, no session."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.boxes import batched_nms, iou, nms
from service.cards import Preprocess
from service.images import decode
from service.preprocess import resize
from service.tasks.detect import DetectOptions, postprocess
from tests.support.images import encode


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
        ([0, 0, 10, 10], [2, 2, 8, 8], 36 / 100),
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),  # empty union
        ([0, 0, 10, 10], [5, 5, 5, 5], 0.0),  # a point inside
        ([0, 0, 4, 2], [1, -1, 3, 5], 4 / 16),  # a cross
    ],
)
def test_iou_table(a, b, expected):
    got = iou(np.array([a], np.float32), np.array([b], np.float32))
    assert got.shape == (1, 1) and got.dtype == np.float32
    assert got[0, 0] == pytest.approx(expected, abs=1e-6)
    assert iou(np.array([b], np.float32), np.array([a], np.float32))[0, 0] == got[0, 0]


def test_iou_matrix_shape_and_integer_boxes():
    a = np.array([[0, 0, 10, 10], [0, 0, 5, 5]])
    b = np.array([[0, 0, 10, 10], [5, 5, 10, 10], [100, 100, 110, 110]])
    np.testing.assert_allclose(iou(a, b), [[1, 0.25, 0], [0.25, 0, 0]], atol=1e-6)


def reference_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """The textbook greedy loop, one pair at a time."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[[k]], boxes[[i]])[0, 0] <= thr for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize(
    ("boxes", "scores", "thr", "expected"),
    [
        ([], [], 0.5, []),
        ([[0, 0, 10, 10]], [0.3], 0.5, [0]),
        # the second overlaps the first by 0.68 > 0.5: gone; the third is apart
        ([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], [0.9, 0.8, 0.7], 0.5, [0, 2]),
        # a chain: 0 kills 1; 1 (suppressed) would have killed 2, which therefore survives
        ([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]], [0.9, 0.8, 0.7], 0.5, [0, 2]),
        # the best box is in the middle of the chain
        ([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]], [0.8, 0.9, 0.7], 0.5, [1]),
        ([[0, 0, 10, 10], [3, 0, 13, 10], [7, 0, 17, 10]], [0.8, 0.9, 0.7], 0.5, [1, 2]),
        ([[0, 0, 10, 10], [6, 0, 16, 10], [12, 0, 22, 10]], [0.9, 0.8, 0.7], 0.2, [0, 2]),
        # IoU exactly at the threshold is kept (only > suppresses)
        ([[0, 0, 10, 10], [5, 0, 15, 10]], [0.9, 0.8], 1 / 3, [0, 1]),
        # equal scores: the lower index wins
        ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5], 0.5, [0]),
        # degenerate boxes never suppress anything
        ([[5, 5, 5, 5], [5, 5, 5, 5]], [0.9, 0.8], 0.0, [0, 1]),
    ],
)
def test_nms_table(boxes, scores, thr, expected):
    b = np.array(boxes, np.float32).reshape(-1, 4)
    s = np.array(scores, np.float32)
    got = nms(b, s, thr)
    assert got.dtype == np.int64
    assert got.tolist() == expected
    assert got.tolist() == reference_nms(b, s, thr)


def random_boxes(n: int, seed: int, extent: float = 200.0, max_wh: float = 60.0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(0, max_wh, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.choice(np.linspace(0, 1, 50), n).astype(np.float32)  # many ties
    return boxes, scores, rng


@pytest.mark.parametrize(("n", "seed", "thr"), [(60, 0, 0.3), (150, 1, 0.5), (300, 2, 0.7)])
def test_nms_matches_the_textbook_loop(n, seed, thr):
    boxes, scores, _ = random_boxes(n, seed)
    assert nms(boxes, scores, thr).tolist() == reference_nms(boxes, scores, thr)


@pytest.mark.parametrize("n", [511, 512, 513, 1300])
def test_nms_across_blocks_equals_one_big_block(n, monkeypatch):
    """The block-wise pass (blocks of 512) gives the same answer as a single block."""
    import service.boxes as boxes_module

    boxes, scores, _ = random_boxes(n, seed=n, extent=400, max_wh=80)
    blocked = nms(boxes, scores, 0.45)
    monkeypatch.setattr(boxes_module, "_BLOCK", 10_000)
    assert blocked.tolist() == nms(boxes, scores, 0.45).tolist()
    monkeypatch.setattr(boxes_module, "_BLOCK", 7)
    assert blocked.tolist() == nms(boxes, scores, 0.45).tolist()


@pytest.mark.parametrize(
    ("n", "classes", "seed"), [(0, 3, 0), (1, 1, 0), (400, 5, 1), (2000, 80, 2)]
)
def test_batched_nms_is_per_class_nms(n, classes, seed):
    boxes, scores, rng = random_boxes(n, seed)
    class_ids = rng.integers(0, classes, n)
    got = batched_nms(boxes, scores, class_ids, 0.45)
    expected = np.concatenate(
        [np.zeros(0, np.int64)]
        + [
            np.flatnonzero(class_ids == c)[nms(boxes[class_ids == c], scores[class_ids == c], 0.45)]
            for c in range(classes)
        ]
    )
    # same set, and in global score order (ties: lower index first)
    assert sorted(got.tolist()) == sorted(expected.tolist())
    assert got.tolist() == sorted(got.tolist(), key=lambda i: (-scores[i], i))


def test_batched_nms_keeps_overlapping_boxes_of_other_classes():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert batched_nms(boxes, scores, np.array([0, 1, 0]), 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, np.array([0, 0, 0]), 0.5).tolist() == [0]


# ---- letterbox: a box drawn on the image is found where the geometry says, and maps back ----


def white_box_image(w: int, h: int, box: tuple[int, int, int, int]) -> Image.Image:
    img = Image.new("RGB", (w, h), (0, 0, 0))
    img.paste((255, 255, 255), box)
    return img


def bright_bbox(pixels: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(pixels.mean(axis=2) > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize(
    ("w", "h", "box", "size"),
    [
        (640, 480, (100, 50, 300, 200), (64, 64)),  # wide: pad top and bottom
        (300, 600, (30, 400, 240, 560), (64, 64)),  # tall: pad left and right
        (200, 200, (0, 0, 100, 200), (64, 64)),  # square: no pad
        (160, 90, (80, 10, 150, 80), (48, 96)),  # non-square input
        (2400, 1600, (600, 400, 1800, 1200), (64, 64)),  # JPEG draft decode at 1/8
    ],
)
def test_letterbox_round_trip(w, h, box, size):
    spec = Preprocess(resize="letterbox", size=size, interpolation="nearest", pad_value=0)
    decoded = decode(
        encode(white_box_image(w, h, box), "JPEG", quality=95), max_pixels=10**8, min_side=max(size)
    )
    assert (decoded.width, decoded.height) == (w, h)
    canvas, geometry = resize(decoded, spec)
    assert canvas.shape == (*size, 3)
    # where the geometry says the box lands in the input ...
    sx, sy = geometry.scale
    px, py = geometry.pad
    mapped = np.array([box[0] * sx + px, box[1] * sy + py, box[2] * sx + px, box[3] * sy + py])
    np.testing.assert_allclose(bright_bbox(canvas), mapped, atol=1.01)
    # ... and mapped back to the original image it is the same box (to an input pixel)
    back = geometry.to_original(mapped[None].astype(np.float32))[0]
    np.testing.assert_allclose(back, box, atol=1e-3)


def test_postprocess_maps_and_clips_to_the_original_image():
    """A box half in the letterbox padding is clipped to the image; one wholly in it dropped."""
    spec = Preprocess(resize="letterbox", size=(64, 64), pad_value=0)
    decoded = decode(encode(white_box_image(128, 64, (0, 0, 1, 1)), "PNG"), max_pixels=10**6)
    _, geometry = resize(decoded, spec)  # scale 0.5, image rows 16..48 of the input
    # yolov5 layout, 1 class: cx, cy, w, h, objectness, class probability
    out = np.array(
        [[[32, 20, 20, 16, 0.9, 1.0], [32, 6, 10, 8, 0.8, 1.0], [-4, 40, 16, 8, 0.7, 1.0]]],
        np.float32,
    )
    (d,) = postprocess(out, [geometry], DetectOptions(), "yolov5")
    np.testing.assert_allclose(d.xyxy, [[44, 0, 84, 24], [0, 40, 8, 56]], atol=1e-4)
    np.testing.assert_allclose(d.score, [0.9, 0.7], atol=1e-6)
    assert d.class_id.tolist() == [0, 0]
