"""service/tiling.py: the tile grid, mapping boxes back, and merging, with numpy alone."""

from __future__ import annotations

import numpy as np
import pytest

from service.tiling import (
    MAX_TILES,
    Candidates,
    MergeOptions,
    Tile,
    TilingOptions,
    axis_starts,
    cut,
    cut_by_edge,
    grid,
    merge,
    plan,
    to_photo,
)


def coverage(width: int, height: int, tiles: list[Tile]) -> np.ndarray:
    hits = np.zeros((height, width), np.int32)
    for t in tiles:
        hits[t.y0 : t.y1, t.x0 : t.x1] += 1
    return hits


@pytest.mark.parametrize(
    "width, height, tile, overlap",
    [
        (1352, 900, 416, 0.25),  # kite.jpg
        (416, 416, 416, 0.25),  # exactly one tile
        (300, 200, 416, 0.25),  # smaller than a tile
        (417, 416, 416, 0.25),  # one pixel over: two tiles
        (5000, 40, 416, 0.25),  # extreme aspect ratios
        (40, 5000, 416, 0.5),
        (1, 1, 64, 0.0),
        (1000, 1000, 64, 0.0),  # no overlap: tiles meet edge to edge
        (999, 777, 100, 0.75),
    ],
)
def test_grid_covers_the_photo_exactly(width, height, tile, overlap):
    tiles = grid(width, height, tile, overlap)
    hits = coverage(width, height, tiles)
    assert hits.min() >= 1  # every pixel in some tile
    for t in tiles:
        assert 0 <= t.x0 < t.x1 <= width and 0 <= t.y0 < t.y1 <= height
        assert t.x1 - t.x0 == min(tile, width) and t.y1 - t.y0 == min(tile, height)
        assert t.inner == (t.x0 > 0, t.y0 > 0, t.x1 < width, t.y1 < height)
    for starts, length in (
        (sorted({t.x0 for t in tiles}), width),
        (sorted({t.y0 for t in tiles}), height),
    ):
        side = min(tile, length)
        assert starts[0] == 0 and starts[-1] + side == length
        # neighbours share at least the overlap asked for
        assert (np.diff(starts) <= side * (1 - overlap) + 1).all()


def test_axis_starts_spread_evenly():
    assert axis_starts(1352, 416, 0.25) == [0, 312, 624, 936]
    assert axis_starts(416, 416, 0.25) == [0]
    assert axis_starts(100, 416, 0.25) == [0]


def test_cut_is_exact_views_of_the_pixels():
    pixels = np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8)
    tiles = grid(130, 90, 64, 0.25)
    for t, part in zip(tiles, cut(pixels, tiles), strict=True):
        assert np.array_equal(part, pixels[t.y0 : t.y1, t.x0 : t.x1])


def test_boxes_map_back_exactly():
    tile = Tile(312, 208, 728, 624, (True, True, True, True))
    boxes = np.array([[0, 0, 10, 20], [100.5, 7.25, 416, 416]], np.float32)
    assert np.array_equal(to_photo(boxes, tile), [[312, 208, 322, 228], [412.5, 215.25, 728, 624]])


def test_cut_by_edge_only_counts_inner_sides():
    # a tile in the photo's top-left corner: its left and top sides are the photo's edges
    tile = Tile(0, 0, 416, 416, (False, False, True, True))
    boxes = np.array(
        [
            [0, 0, 50, 50],  # touches the photo's corner only: whole
            [380, 100, 416, 150],  # runs into the inner right side: cut
            [100, 400, 150, 415],  # within the margin of the inner bottom side: cut
            [100, 100, 200, 200],  # inside: whole
        ],
        np.float32,
    )
    assert cut_by_edge(boxes, tile).tolist() == [False, True, True, False]


def test_plan_modes_and_the_tile_cap():
    off = TilingOptions(mode="off")
    assert plan(4000, 3000, off, 416) == []
    auto = TilingOptions(mode="auto")
    assert plan(800, 600, auto, 416) == []  # under twice the model's input
    assert len(plan(1352, 900, auto, 416)) == 12
    on = TilingOptions(mode="on")
    assert plan(400, 300, on, 416) == []  # one tile would be the photo itself
    assert len(plan(1352, 900, on, 416)) == 12
    # a huge photo: the tiles grow until the cap holds, and still cover it
    tiles = plan(20000, 20000, TilingOptions(mode="on", tile_size=64, max_tiles=9), 416)
    assert 1 < len(tiles) <= 9
    assert coverage(20000, 20000, tiles).min() >= 1
    # the cap a request cannot raise
    assert len(plan(20000, 20000, TilingOptions(mode="on", max_tiles=10_000), 416)) <= MAX_TILES


def candidates(rows: list[tuple[tuple[float, float, float, float], int, float, int, bool]]):
    return Candidates(
        np.array([r[0] for r in rows], np.float32).reshape(-1, 4),
        np.array([r[1] for r in rows], np.int64),
        np.array([r[2] for r in rows], np.float32),
        np.array([r[3] for r in rows], np.int64),
        np.array([r[4] for r in rows], bool),
    )


def test_an_object_split_across_two_tiles_becomes_one_box():
    # a car from x=380 to 460; tile 0 ends at 416, tile 1 starts at 312: each sees a piece
    left = Tile(0, 0, 416, 416, (False, False, True, False))
    right = Tile(312, 0, 728, 416, (True, False, False, False))
    pieces = np.array([[380, 100, 416, 140], [380, 100, 460, 140]], np.float32)
    assert cut_by_edge(pieces[:1], left).tolist() == [True]
    assert cut_by_edge(pieces[1:], right).tolist() == [False]
    c = candidates([(tuple(pieces[0]), 2, 0.7, 0, True), (tuple(pieces[1]), 2, 0.9, 1, False)])
    m = merge(c, MergeOptions())
    assert m.xyxy.tolist() == [[380, 100, 460, 140]]
    assert m.groups == [[1, 0]]


def test_an_object_split_across_four_tiles_becomes_one_box():
    # a large object around the point where four tiles meet; each tile sees a quarter, cut
    quarters = [
        ((300, 300, 416, 416), 0),
        ((312, 300, 500, 416), 1),
        ((300, 312, 416, 500), 2),
        ((312, 312, 500, 500), 3),
    ]
    c = candidates([(box, 0, 0.8 - 0.1 * view, view, True) for box, view in quarters])
    m = merge(c, MergeOptions())
    assert m.xyxy.tolist() == [[300, 300, 500, 500]]
    assert sorted(m.groups[0]) == [0, 1, 2, 3]
    assert m.score.tolist() == pytest.approx([0.8 * 0.6])  # only the tiles saw it


def test_two_real_neighbours_stay_two():
    # two people side by side, seen apart by the whole view and by two tiles each
    a, b = (100, 100, 130, 200), (125, 100, 155, 200)
    c = candidates(
        [
            (a, 0, 0.9, -1, False),
            (b, 0, 0.8, -1, False),
            (a, 0, 0.85, 0, False),
            (b, 0, 0.75, 0, False),
            (a, 0, 0.8, 1, False),
            (b, 0, 0.7, 1, False),
        ]
    )
    m = merge(c, MergeOptions())
    assert m.xyxy.tolist() == [list(a), list(b)]
    assert m.score.tolist() == pytest.approx([0.9, 0.8])


def test_a_lone_cut_piece_is_down_weighted_and_a_fragment_joins_the_whole_view():
    c = candidates(
        [
            ((0, 0, 400, 300), 5, 0.9, -1, False),  # a bus the whole view saw
            ((300, 50, 416, 250), 5, 0.8, 0, True),  # a tile's piece of it
            ((600, 50, 616, 90), 0, 0.8, 1, True),  # a piece nothing completes
        ]
    )
    m = merge(c, MergeOptions(cut_weight=0.5, tile_weight=1.0))
    assert m.xyxy.tolist() == [[0, 0, 416, 300], [600, 50, 616, 90]]
    assert m.score.tolist() == pytest.approx([0.9, 0.4])


def test_classes_never_merge():
    c = candidates([((0, 0, 50, 50), 0, 0.9, 0, False), ((0, 0, 50, 50), 1, 0.8, 1, False)])
    assert sorted(merge(c, MergeOptions()).class_id.tolist()) == [0, 1]


def test_merge_of_nothing():
    m = merge(candidates([]), MergeOptions())
    assert m.xyxy.shape == (0, 4) and m.groups == []
