"""The one container for detection-like results (service/detections.py) and the tiled merge
that combines them (service/tasks/tiled.py: merge_views), with synthetic arrays."""

from __future__ import annotations

import numpy as np
import pytest

from service.detections import Detections
from service.masks import BoxMask
from service.tasks.detect import DetectOptions
from service.tasks.segment import SegmentOptions
from service.tasks.tiled import merge_views
from service.tiling import Tile


def three(**extra: object) -> Detections:
    xyxy = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 50]], np.float32)
    return Detections(
        xyxy, np.array([2, 0, 7], np.int64), np.array([0.9, 0.8, 0.7], np.float32), **extra
    )


def test_take_keeps_every_per_detection_field_aligned():
    masks = [BoxMask(np.ones((2, 2), bool), i, i, (64, 64)) for i in range(3)]
    landmarks = np.arange(3 * 5 * 2, dtype=np.float32).reshape(3, 5, 2)
    embeddings = np.eye(3, 4, dtype=np.float32)
    found = three(
        masks=masks, landmarks=landmarks, embeddings=embeddings, class_names=("a", "b", "c")
    )
    picked = found.take([2, 0])
    assert len(picked) == 2
    np.testing.assert_array_equal(picked.xyxy, found.xyxy[[2, 0]])
    np.testing.assert_array_equal(picked.class_id, [7, 2])
    np.testing.assert_array_equal(picked.score, np.float32([0.7, 0.9]))
    assert picked.masks == [masks[2], masks[0]]
    np.testing.assert_array_equal(picked.landmarks, landmarks[[2, 0]])
    np.testing.assert_array_equal(picked.embeddings, embeddings[[2, 0]])
    assert picked.class_names == ("a", "b", "c")
    assert len(found.take([])) == 0 and found.take([]).masks == []


@pytest.mark.parametrize(
    ("i", "label"),
    [(0, "c"), (1, "a"), (2, "7")],  # class 7 is past the labels: its id as text
)
def test_label_names_the_class_or_gives_its_id(i, label):
    assert three(class_names=("a", "b", "c")).label(i) == label


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"xyxy": np.zeros((3, 5), np.float32)}, "xyxy (K, 4)"),
        ({"class_id": np.zeros(2, np.int64)}, "class_id (K,)"),
        ({"masks": []}, "expected 3 masks, got 0"),
        ({"landmarks": np.zeros((2, 5, 2), np.float32)}, "landmarks (3, ...)"),
        ({"embeddings": np.zeros(3, np.float32)}, "embeddings (3, ...)"),
    ],
)
def test_shapes_are_checked_once_with_what_was_expected(change, message):
    fields = {
        "xyxy": np.zeros((3, 4), np.float32),
        "class_id": np.zeros(3, np.int64),
        "score": np.zeros(3, np.float32),
    }
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Detections(**{**fields, **change})


def test_empty_is_empty():
    found = Detections.empty()
    assert len(found) == 0 and found.xyxy.shape == (0, 4) and found.masks is None


# A 100x100 photo; one tile, x 40..100, y 0..60 (its left and bottom sides inside the photo).
TILE = Tile(40, 0, 100, 60, (True, False, False, True))


def whole_and_piece(with_masks: bool) -> list[Detections]:
    """The whole view sees an object at x 10..60, y 10..50; the tile sees its right part,
    cut by the tile's left side, at x 0..20 (tile pixels) = 40..60 in the photo."""

    def one(box: list[float], score: float, mask: BoxMask) -> Detections:
        return Detections(
            np.array([box], np.float32),
            np.array([3], np.int64),
            np.array([score], np.float32),
            [mask] if with_masks else None,
            class_names=("a", "b", "c", "d"),
        )

    return [
        one([10, 10, 60, 50], 0.9, BoxMask(np.ones((40, 30), bool), 10, 10, (100, 100))),
        one([0, 10, 20, 50], 0.8, BoxMask(np.ones((40, 20), bool), 10, 0, (60, 60))),
    ]


def test_merge_views_joins_an_object_seen_whole_and_in_a_tile():
    merged = merge_views(whole_and_piece(False), [TILE], (100, 100), DetectOptions())
    assert len(merged) == 1 and merged.masks is None
    np.testing.assert_allclose(merged.xyxy, [[10, 10, 60, 50]])
    assert merged.label(0) == "d" and merged.score[0] == pytest.approx(0.9)


def test_merge_views_ors_the_masks_of_one_objects_pieces_in_photo_pixels():
    merged = merge_views(whole_and_piece(True), [TILE], (100, 100), SegmentOptions())
    assert len(merged) == 1 and merged.masks is not None
    expected = np.zeros((100, 100), bool)
    expected[10:50, 10:40] = True  # the whole view's mask
    expected[10:50, 40:60] = True  # the tile's, moved by the tile's offset
    np.testing.assert_array_equal(merged.masks[0].full(), expected)


def test_merge_views_drops_what_scores_under_the_threshold():
    options = DetectOptions(score_threshold=0.95)
    assert len(merge_views(whole_and_piece(False), [TILE], (100, 100), options)) == 0
