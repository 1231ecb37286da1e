"""Pure mask code: paste + threshold, COCO RLE against pycocotools, polygons, PNG, selection."""

from __future__ import annotations

import io

import numpy as np
import pycocotools.mask as coco_mask
import pytest
from PIL import Image, ImageDraw

from service.images import DecodedImage
from service.masks import (
    BoxMask,
    compress_counts,
    decode_rle,
    decompress_counts,
    encode_rle,
    polygon_area,
    polygons,
    rle_counts,
    to_png,
)
from service.tasks.segment import (
    GraphResize,
    SegmentOptions,
    paste,
    postprocess,
    preprocess,
    select,
)

# pycocotools 2.0.x on numpy 2 warns about __array__(copy=...) inside its own decode
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def inside(box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies strictly inside the box: what a constant map pastes to."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    x1, y1, x2, y2 = box
    return (xs > x1) & (xs < x2) & (ys > y1) & (ys < y2)


def pyco(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


# ---- paste + threshold -------------------------------------------------------------------


def reference_paste(probs: np.ndarray, box, size, threshold: float) -> np.ndarray:
    """Per-pixel bilinear sampling of the zero-padded map, written the slow, obvious way."""
    m = probs.shape[0]
    padded = np.pad(probs.astype(np.float64), 1)
    x1, y1, x2, y2 = box
    out = np.zeros(size, bool)
    for r in range(size[0]):
        for c in range(size[1]):
            v = np.clip((r + 0.5 - y1) * m / (y2 - y1) + 0.5, 0, m + 1)  # padded index
            u = np.clip((c + 0.5 - x1) * m / (x2 - x1) + 0.5, 0, m + 1)
            r0, c0 = min(int(v), m), min(int(u), m)
            fy, fx = v - r0, u - c0
            value = (
                padded[r0, c0] * (1 - fy) * (1 - fx)
                + padded[r0, c0 + 1] * (1 - fy) * fx
                + padded[r0 + 1, c0] * fy * (1 - fx)
                + padded[r0 + 1, c0 + 1] * fy * fx
            )
            out[r, c] = value > threshold
    return out


BOXES = [
    ((10, 20, 30, 50), (80, 60)),  # integer box
    ((10.3, 20.6, 30.2, 50.7), (80, 60)),  # fractional
    ((-15, -5, 25, 30), (40, 50)),  # partly left of / above the image
    ((40, 30, 90, 70), (60, 70)),  # partly right of / below the image
    ((0, 0, 70, 60), (60, 70)),  # the whole image
]


@pytest.mark.parametrize(("box", "size"), BOXES)
@pytest.mark.parametrize("seed", [0, 1])
def test_paste_equals_per_pixel_bilinear_sampling(box, size, seed):
    probs = np.random.default_rng(seed).random((28, 28)).astype(np.float32)
    got = paste(probs, np.array(box, float), size, 0.5)
    np.testing.assert_array_equal(got.full(), reference_paste(probs, box, size, 0.5))


@pytest.mark.parametrize(("box", "size"), BOXES)
def test_constant_map_fills_the_box_up_to_rounded_corners(box, size):
    got = paste(np.ones((28, 28), np.float32), np.array(box, float), size, 0.5).full()
    want = inside(box, size)
    assert not (got & ~want).any()  # never outside the box
    # bilinear fall-off only trims the corners: at most a pixel or two each
    assert want.sum() - got.sum() <= 8
    assert got.sum() > 0


@pytest.mark.parametrize(
    ("value", "threshold", "filled"),
    [(0.9, 0.5, True), (0.9, 0.95, False), (0.3, 0.5, False), (0.3, 0.2, True)],
)
def test_threshold_applies_to_the_pasted_probabilities(value, threshold, filled):
    probs = np.full((28, 28), value, np.float32)
    got = paste(probs, np.array([4.0, 4.0, 36.0, 24.0]), (30, 40), threshold)
    expected = reference_paste(probs, (4, 4, 36, 24), (30, 40), threshold)
    assert got.area == int(expected.sum())
    assert (got.area > 0) == filled


def test_left_half_map_fills_the_left_half_of_the_box():
    probs = np.zeros((28, 28), np.float32)
    probs[:, :14] = 1.0
    got = paste(probs, np.array([20.0, 10.0, 76.0, 38.0]), (50, 100), 0.5).full()
    want = inside((20, 10, 48, 38), (50, 100))
    assert not (got & ~want).any()
    assert want.sum() - got.sum() <= 4  # two rounded corners on the box edge


@pytest.mark.parametrize("box", [(5, 5, 5, 20), (5, 5, 20, 4), (200, 200, 220, 230)])
def test_empty_or_outside_boxes_paste_nothing(box):
    got = paste(np.ones((28, 28), np.float32), np.array(box, float), (50, 60), 0.5)
    assert got.area == 0
    assert got.full().shape == (50, 60)


def test_paste_is_bilinear_between_cells():
    # 2x2 map over a 4x4 box: cell centres at 1 and 3; the pixel centres at 1.5 and 2.5
    # lie a quarter of the way between them.
    probs = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    window = paste(probs, np.array([0.0, 0.0, 4.0, 4.0]), (4, 4), 0.3).full()
    # columns: centre 0.5 -> 0, 1.5 -> 0.25, 2.5 -> 0.75, 3.5 -> 1.0
    np.testing.assert_array_equal(window[1], [False, False, True, True])
    window = paste(probs, np.array([0.0, 0.0, 4.0, 4.0]), (4, 4), 0.2).full()
    np.testing.assert_array_equal(window[1], [False, True, True, True])


# ---- COCO RLE -------------------------------------------------------------------------


def _masks() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = [
        ("empty", np.zeros((5, 7), bool)),
        ("full", np.ones((5, 7), bool)),
        ("first pixel", np.pad(np.ones((1, 1), bool), ((0, 4), (0, 6)))),
        ("last pixel", np.pad(np.ones((1, 1), bool), ((4, 0), (6, 0)))),
        ("column-crossing run", np.zeros((4, 3), bool)),
        ("one row", rng.random((1, 40)) < 0.5),
        ("one column", rng.random((40, 1)) < 0.5),
        ("random sparse", rng.random((31, 17)) < 0.1),
        ("random dense", rng.random((64, 48)) < 0.7),
        ("big blob", inside((10.2, 5.5, 300.0, 200.0), (240, 320))),
    ]
    cases[4][1][2:, 0] = True  # runs through the bottom of column 0 into the top of column 1
    cases[4][1][:2, 1] = True
    return cases


@pytest.mark.parametrize(("name", "mask"), _masks(), ids=[n for n, _ in _masks()])
def test_rle_equals_pycocotools_and_decodes_back(name, mask):
    ours = encode_rle(BoxMask.from_full(mask))
    assert ours == pyco(mask)
    np.testing.assert_array_equal(coco_mask.decode(ours).astype(bool), mask)
    np.testing.assert_array_equal(decode_rle(ours), mask)
    assert int(coco_mask.area(ours)) == int(mask.sum())


def test_rle_of_a_window_equals_the_rle_of_the_whole_mask():
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = rng.integers(1, 30, 2)
        top, left = rng.integers(0, h), rng.integers(0, w)
        bits = rng.random((rng.integers(0, h - top + 1), rng.integers(0, w - left + 1))) < 0.5
        box = BoxMask(bits, int(top), int(left), (int(h), int(w)))
        assert encode_rle(box) == pyco(box.full())
        # uncompressed counts decode the same (pycocotools takes them as frPyObjects input)
        assert decode_rle({"size": [h, w], "counts": rle_counts(box).tolist()}).sum() == box.area


@pytest.mark.parametrize("counts", [[0], [5], [3, 4], [0, 1, 2, 3, 50, 1000, 3, 0], [31, 32, 33]])
def test_compressed_counts_round_trip(counts):
    text = compress_counts(counts)
    assert decompress_counts(text) == counts


def test_decode_rejects_counts_that_do_not_cover_the_image():
    with pytest.raises(ValueError, match="sum to"):
        decode_rle({"size": [4, 4], "counts": [3, 4]})


# ---- polygons and PNG -----------------------------------------------------------------


def _drawn(shapes) -> np.ndarray:
    canvas = Image.new("1", (120, 90), 0)
    draw = ImageDraw.Draw(canvas)
    for kind, coords, fill in shapes:
        getattr(draw, kind)(coords, fill=fill)
    return np.asarray(canvas, dtype=bool)


@pytest.mark.parametrize(
    "shapes",
    [
        [("rectangle", (10, 10, 40, 30), 1)],
        [("ellipse", (20, 15, 90, 80), 1)],
        [("polygon", [(60, 5), (110, 60), (15, 80)], 1), ("rectangle", (2, 2, 8, 8), 1)],
    ],
)
def test_polygons_enclose_exactly_the_mask(shapes):
    from skimage.measure import label

    mask = _drawn(shapes)
    polys = polygons(BoxMask.from_full(mask))
    assert len(polys) == label(mask, connectivity=1).max()  # one per 4-connected part
    assert sum(polygon_area(p) for p in polys) == mask.sum()
    decoded = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polys, 90, 120))).astype(bool)
    assert (decoded & mask).sum() / (decoded | mask).sum() > 0.9


def test_polygons_leave_out_holes_and_split_diagonal_neighbours():
    ring = _drawn([("rectangle", (10, 10, 50, 50), 1), ("rectangle", (20, 20, 30, 30), 0)])
    (outer,) = polygons(BoxMask.from_full(ring))
    assert polygon_area(outer) == 41 * 41
    diagonal = np.zeros((4, 4), bool)
    diagonal[1, 1] = diagonal[2, 2] = True
    polys = polygons(BoxMask(diagonal[1:3, 1:3].copy(), 1, 1, (4, 4)))
    assert sorted(polys) == [[1, 1, 2, 1, 2, 2, 1, 2], [2, 2, 3, 2, 3, 3, 2, 3]]


def test_png_is_the_whole_mask():
    box = BoxMask(np.eye(5, dtype=bool), 3, 4, (12, 10))
    decoded = np.asarray(Image.open(io.BytesIO(to_png(box))).convert("L")) > 127
    np.testing.assert_array_equal(decoded, box.full())


# ---- preprocess / select / postprocess ------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [((640, 480), (427, 320)), ((200, 100), (200, 100)), ((2000, 400), (544, 109))],
)
def test_preprocess_shrinks_only_past_the_graph_size(size, expected):
    w, h = size
    image = DecodedImage(np.zeros((h, w, 3), np.uint8) + 255, w, h, "PNG")
    tensor, geometry = preprocess(image, GraphResize(320, 544))
    assert tensor.shape == (1, 3, expected[1], expected[0])
    assert tensor.dtype == np.float32 and float(tensor.max()) == pytest.approx(1.0)
    box = geometry.to_original(np.array([[0, 0, expected[0], expected[1]]], np.float32))
    np.testing.assert_allclose(box[0], [0, 0, w, h], rtol=1e-5)


def test_select_thresholds_filters_and_suppresses_per_class():
    xyxy = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    class_id = np.array([1, 1, 2, 1])
    score = np.array([0.9, 0.8, 0.7, 0.2])
    assert select(xyxy, class_id, score, SegmentOptions()).tolist() == [0, 2]
    assert select(xyxy, class_id, score, SegmentOptions(iou_threshold=0.9)).tolist() == [0, 1, 2]
    assert select(xyxy, class_id, score, SegmentOptions(score_threshold=0.1)).tolist() == [0, 2, 3]
    assert select(xyxy, class_id, score, SegmentOptions(classes=(2,))).tolist() == [2]
    assert select(xyxy, class_id, score, SegmentOptions(max_detections=1)).tolist() == [0]


def test_postprocess_maps_boxes_and_masks_to_original_pixels():
    # the tensor was the image shrunk by half: boxes and masks come back at full size
    image = DecodedImage(np.zeros((200, 300, 3), np.uint8), 300, 200, "PNG")
    _, geometry = preprocess(image, GraphResize(100, 150))
    outputs = [
        np.array([[[10.0, 20.0, 40.0, 60.0]]], np.float32),
        np.array([[3]], np.int64),
        np.array([[0.9]], np.float32),
        np.full((1, 1, 28, 28), 0.8, np.float32),
    ]
    found = postprocess(outputs, geometry, SegmentOptions())
    np.testing.assert_allclose(found.xyxy, [[20, 40, 80, 120]])
    assert found.class_id.tolist() == [3]
    expected = reference_paste(outputs[3][0, 0], (20, 40, 80, 120), (200, 300), 0.5)
    np.testing.assert_array_equal(found.masks[0].full(), expected)
    assert found.masks[0].area > 0.99 * inside((20, 40, 80, 120), (200, 300)).sum()


def test_postprocess_rejects_outputs_of_the_wrong_shape():
    image = DecodedImage(np.zeros((20, 30, 3), np.uint8), 30, 20, "PNG")
    _, geometry = preprocess(image, GraphResize(20, 30))
    bad = [np.zeros((1, 2, 4)), np.zeros((1, 3), np.int64), np.zeros((1, 2)), np.zeros((1, 2, 28))]
    with pytest.raises(ValueError, match="expected boxes"):
        postprocess(bad, geometry, SegmentOptions())
