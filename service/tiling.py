"""Tiled inference for small objects: the tile grid, and merging what the tiles found with
what the whole-photo view found. Pure numpy; the tasks (service/tasks/tiled.py) run it.

A detector that sees every photo at its input size (416 px for YOLOv3-tiny) shrinks a small
object in a large photo to a few pixels. Cutting the photo into overlapping tiles about the
size of the model's input and running each at full resolution lets the same weights see it
(the method of SAHI, Akyon et al. 2022). The whole-photo view runs in the same batch and keeps
the objects larger than a tile.

Merging (`merge`), in photo pixels:
  1. Boxes of one object seen by several views (tiles and the whole photo) are merged, not
     only suppressed: greedy non-maximum merging per class (SAHI's GREEDYNMM) on intersection
     over the smaller box, best score first, a group taking at most one box per view (so two
     neighbours that one view saw apart stay two), growing to the union of its boxes. A piece
     of a large object that a tile saw joins the whole view's box of it.
  2. A box that touches a tile side lying inside the photo may be a piece of something larger
     cut by that side. Merged with a box from another view it is whole; alone it is
     down-weighted (`cut_weight`).
  3. The groups then go through class-wise NMS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from iis_client.params import TilingMode as TilingMode  # re-exported for the routes
from service.boxes import area, batched_nms

# Limits a request cannot raise: the tiles of one photo (the photo's own view not counted),
# and the tile side in pixels.
MAX_TILES = 32
MIN_TILE, MAX_TILE = 64, 4096
# A box side within this many photo pixels of an inner tile side counts as cut by it.
EDGE_MARGIN = 2.0


@dataclass(frozen=True)
class TilingOptions:
    """mode: off | on | auto (tiles only when the photo's longer side is at least
    `auto_ratio` times the model's input side). tile_size: tile side in photo pixels (None:
    the model's input side). overlap: fraction of a tile shared with its neighbour.
    max_tiles: at most this many tiles; past it the tiles grow until the grid fits."""

    mode: TilingMode = "off"
    tile_size: int | None = None
    overlap: float = 0.25
    max_tiles: int = 16
    auto_ratio: float = 2.0


@dataclass(frozen=True)
class Tile:
    """A window of the photo: x0 <= x < x1, y0 <= y < y1 (pixels). inner: whether its left,
    top, right, bottom side lies inside the photo (where an object may be cut)."""

    x0: int
    y0: int
    x1: int
    y1: int
    inner: tuple[bool, bool, bool, bool]


def axis_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Starts of windows of `tile` pixels covering 0..length, neighbours sharing at least
    `overlap` of a tile, spread evenly so the last one ends exactly at `length`."""
    if length <= tile:
        return [0]
    stride = max(1, math.floor(tile * (1.0 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def grid(width: int, height: int, tile: int, overlap: float) -> list[Tile]:
    """Tiles covering a width x height photo exactly, row by row. A photo side shorter than
    `tile` gets one tile as long as that side."""
    if width < 1 or height < 1 or tile < 1 or not 0.0 <= overlap < 1.0:
        raise ValueError(f"grid: bad arguments {width}x{height}, tile {tile}, overlap {overlap}")
    xs, ys = axis_starts(width, tile, overlap), axis_starts(height, tile, overlap)
    tiles = []
    for y0 in ys:
        y1 = min(y0 + tile, height)
        for x0 in xs:
            x1 = min(x0 + tile, width)
            tiles.append(Tile(x0, y0, x1, y1, (x0 > 0, y0 > 0, x1 < width, y1 < height)))
    return tiles


def plan(width: int, height: int, options: TilingOptions, input_side: int) -> list[Tile]:
    """The tiles to run for this photo: [] when tiling is off, when `auto` finds the photo
    small against the model's input, or when one tile would be the whole photo. Tiles grow
    (by 1/8 at a time) until at most `options.max_tiles` cover the photo."""
    if options.mode == "off":
        return []
    if options.mode == "auto" and max(width, height) < options.auto_ratio * input_side:
        return []
    tile = options.tile_size or input_side
    limit = max(1, min(options.max_tiles, MAX_TILES))
    tiles = grid(width, height, tile, options.overlap)
    while len(tiles) > limit:
        tile += max(1, tile // 8)
        tiles = grid(width, height, tile, options.overlap)
    return tiles if len(tiles) > 1 else []


def cut(pixels: np.ndarray, tiles: Sequence[Tile]) -> list[np.ndarray]:
    """(H, W, 3) photo -> each tile's (y1 - y0, x1 - x0, 3) pixels (views, no copy)."""
    return [pixels[t.y0 : t.y1, t.x0 : t.x1] for t in tiles]


def to_photo(xyxy: np.ndarray, tile: Tile) -> np.ndarray:
    """(N, 4) boxes in a tile's pixels -> (N, 4) float32 in the photo's pixels."""
    offset = np.array([tile.x0, tile.y0, tile.x0, tile.y0], np.float32)
    out: np.ndarray = xyxy.astype(np.float32) + offset
    return out


def cut_by_edge(xyxy: np.ndarray, tile: Tile, margin: float = EDGE_MARGIN) -> np.ndarray:
    """(N, 4) photo-pixel boxes found in `tile` -> (N,) bool: touches a side of the tile that
    lies inside the photo."""
    left, top, right, bottom = tile.inner
    out: np.ndarray = (
        (left & (xyxy[:, 0] <= tile.x0 + margin))
        | (top & (xyxy[:, 1] <= tile.y0 + margin))
        | (right & (xyxy[:, 2] >= tile.x1 - margin))
        | (bottom & (xyxy[:, 3] >= tile.y1 - margin))
    )
    return out


def ios(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(4,), (N, 4) -> (N,) intersection over the smaller of the two areas (0 if empty)."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    smaller = np.minimum(area(box[None])[0], area(boxes))
    out: np.ndarray = np.where(smaller > 0, iw * ih / np.maximum(smaller, 1e-12), 0.0)
    return out


@dataclass(frozen=True)
class Candidates:
    """Every box the views found, in photo pixels.

    xyxy: (N, 4) float32; class_id: (N,) int64; score: (N,) float32;
    view: (N,) int64, -1 for the whole-photo view, else the tile's index;
    cut: (N,) bool, touches an inner side of its tile (always False for the whole view).
    """

    xyxy: np.ndarray
    class_id: np.ndarray
    score: np.ndarray
    view: np.ndarray
    cut: np.ndarray

    def __post_init__(self) -> None:
        n = self.score.shape[0]
        shapes = (self.xyxy.shape, self.class_id.shape, self.view.shape, self.cut.shape)
        if shapes != ((n, 4), (n,), (n,), (n,)):
            raise ValueError(
                f"Candidates: expected xyxy (N, 4), class_id/score/view/cut (N,); got "
                f"{self.xyxy.shape}, {self.class_id.shape}, {self.score.shape}, "
                f"{self.view.shape}, {self.cut.shape}"
            )


@dataclass(frozen=True)
class MergeOptions:
    """match_ios: a box joins a group when it overlaps the group's box by at least this
    fraction of the smaller box. cut_weight: score factor for a cut box nothing else
    completed. tile_weight: score factor for an object only the tiles found: zoomed-in tiles
    also see things in texture, and 0.6 kept every object found on the tuning photos while
    bringing the confident false boxes (score >= 0.5) from 18 to 9 (scripts/bench_tiling.py)."""

    iou_threshold: float = 0.45
    match_ios: float = 0.5
    cut_weight: float = 0.5
    tile_weight: float = 0.6


@dataclass(frozen=True)
class Merged:
    """The merged answer, best first. groups[k]: indices into the Candidates that make
    object k (one index for a whole-view box); xyxy: (K, 4) union of each group's boxes;
    class_id (K,); score (K,) float32 (the group's best, weighted)."""

    groups: list[list[int]]
    xyxy: np.ndarray
    class_id: np.ndarray
    score: np.ndarray


def _group_pieces(c: Candidates, rows: np.ndarray, match_ios: float) -> list[list[int]]:
    """Greedy non-maximum merging of tile boxes of one class, best score first."""
    order = rows[np.argsort(-c.score[rows], kind="stable")]
    free = np.ones(order.shape[0], dtype=bool)
    groups = []
    for i in range(order.shape[0]):
        if not free[i]:
            continue
        free[i] = False
        members = [int(order[i])]
        box = c.xyxy[order[i]].copy()
        views = {int(c.view[order[i]])}
        grown = True
        while grown:  # the union grows: pieces further along may now reach it
            grown = False
            rest = np.flatnonzero(free)
            if rest.size == 0:
                break
            hits = rest[ios(box, c.xyxy[order[rest]]) >= match_ios]
            for j in hits.tolist():
                view = int(c.view[order[j]])
                if view in views:  # one piece per tile: that tile saw two objects
                    continue
                free[j] = False
                members.append(int(order[j]))
                views.add(view)
                piece = c.xyxy[order[j]]
                box[:2] = np.minimum(box[:2], piece[:2])
                box[2:] = np.maximum(box[2:], piece[2:])
                grown = True
        groups.append(members)
    return groups


def merge(c: Candidates, options: MergeOptions) -> Merged:
    """Whole-view boxes + tile boxes -> one answer (see the module doc), best first."""
    groups: list[list[int]] = []
    boxes, classes, scores = [], [], []
    for cls in np.unique(c.class_id).tolist():
        rows = np.flatnonzero(c.class_id == cls)
        for members in _group_pieces(c, rows, options.match_ios):
            score = float(c.score[members].max())
            if not (c.view[members] < 0).any():  # the whole view did not see it
                score *= options.tile_weight
                if len(members) == 1 and c.cut[members[0]]:
                    score *= options.cut_weight
            groups.append(members)
            boxes.append(
                np.concatenate([c.xyxy[members, :2].min(axis=0), c.xyxy[members, 2:].max(axis=0)])
            )
            classes.append(cls)
            scores.append(score)
    if not groups:
        empty = np.zeros(0, np.float32)
        return Merged([], np.zeros((0, 4), np.float32), np.zeros(0, np.int64), empty)
    xyxy = np.asarray(boxes, np.float32).reshape(-1, 4)
    class_id = np.asarray(classes, np.int64)
    weighted = np.asarray(scores, np.float32)
    keep = batched_nms(xyxy, weighted, class_id, options.iou_threshold)
    return Merged([groups[k] for k in keep.tolist()], xyxy[keep], class_id[keep], weighted[keep])
