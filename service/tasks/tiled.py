"""/detect and /segment with tiling: the photo's own view and its tiles through the model in
one go, their answers merged (service/tiling.py).

The photo is decoded once, at full resolution (no JPEG draft: tiles need every pixel), and the
tiles are cut from the decoded array. For the detector (fixed input size, dynamic batch) the
whole view and the tiles are rows of one tensor, handed to the model's micro-batcher in pieces
of at most `max_batch` rows, all at once; the batcher runs them as full batches. Mask R-CNN
exports take one image of any size per run (batch axis fixed at 1), so there each view is its
own one-row submission, all queued at once: the batcher runs them back to back on its run
slots without a Python loop over the session or a round trip per tile.

Timing steps beyond a plain request: `tile_preprocess` (cutting and preparing the tiles'
rows), `merge`; `inference` and `postprocess` cover every view.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from service.batching import BatchResult
from service.detections import Detections
from service.images import DecodedImage, EncodedImage
from service.masks import BoxMask
from service.preprocess import Geometry
from service.runtime import ModelRuntime
from service.tasks import detect as det
from service.tasks import segment as seg
from service.tiling import (
    Candidates,
    MergeOptions,
    Tile,
    TilingOptions,
    cut_by_edge,
    merge,
    plan,
    to_photo,
)
from service.tiling import cut as cut_tiles
from service.timing import Timing, in_thread

# Per view, before merging: more than a response's max_detections (tiles repeat objects).
_PER_VIEW = 300


@dataclass(frozen=True)
class TilingReport:
    """What the response says about tiling: the mode asked, the tiles run (0: the whole view
    alone), their side in photo pixels and overlap."""

    mode: str
    tiles: int
    tile_size: int | None
    overlap: float


def input_side(runtime: ModelRuntime) -> int:
    """The side the model sees a whole photo at: the card's input size, else the graph's
    working size (Mask R-CNN's min_size)."""
    size = runtime.card.preprocess.size
    if size is not None:
        return max(size)
    return seg.GraphResize.of(runtime.card).min_size


@dataclass(frozen=True)
class TiledResult:
    """found: merged, in photo pixels; image: the photo (decoded at full size);
    encoded: segment only, each mask in the asked format."""

    found: Detections
    image: DecodedImage
    tiling: TilingReport
    encoded: list[dict[str, Any]] | None = None


def _tile_images(image: DecodedImage, tiles: list[Tile]) -> list[DecodedImage]:
    return [
        DecodedImage(np.ascontiguousarray(p), p.shape[1], p.shape[0], image.format)
        for p in cut_tiles(image.pixels, tiles)
    ]


async def _decode(image: DecodedImage | EncodedImage, timing: Timing) -> DecodedImage:
    if isinstance(image, EncodedImage):
        full = EncodedImage(image.data, image.max_pixels, None)  # every pixel: no draft
        image = await in_thread(timing, "decode", full.decode)
    if image.pixels.shape[:2] != (image.height, image.width):
        raise ValueError("tiling needs the photo decoded at full size (min_side=None)")
    return image


async def _run_rows(runtime: ModelRuntime, batch: np.ndarray, timing: Timing) -> list[BatchResult]:
    """All rows through the batcher at once, in submissions of at most max_batch rows."""
    step = max(1, runtime.max_batch)
    parts = [batch[i : i + step] for i in range(0, batch.shape[0], step)]
    return list(await asyncio.gather(*(runtime.infer(p, timing) for p in parts)))


def _report(tiling: TilingOptions, tiles: list[Tile]) -> TilingReport:
    side = max(tiles[0].x1 - tiles[0].x0, tiles[0].y1 - tiles[0].y0) if tiles else None
    return TilingReport(tiling.mode, len(tiles), side, tiling.overlap)


def _to_photo_mask(mask: BoxMask, tile: Tile, size: tuple[int, int]) -> BoxMask:
    return BoxMask(mask.bits, mask.top + tile.y0, mask.left + tile.x0, size)


def _union_mask(masks: list[BoxMask]) -> BoxMask:
    """The OR of masks over one image, kept to the window they span."""
    top = min(m.top for m in masks)
    left = min(m.left for m in masks)
    bottom = max(m.top + m.bits.shape[0] for m in masks)
    right = max(m.left + m.bits.shape[1] for m in masks)
    bits = np.zeros((max(0, bottom - top), max(0, right - left)), dtype=bool)
    for m in masks:
        h, w = m.bits.shape
        bits[m.top - top : m.top - top + h, m.left - left : m.left - left + w] |= m.bits
    return BoxMask(bits, top, left, masks[0].size)


def merge_views(
    views: list[Detections],
    tiles: list[Tile],
    size: tuple[int, int],
    options: det.DetectOptions | seg.SegmentOptions,
) -> Detections:
    """views[0]: the whole photo's detections, views[1:]: each tile's in tile pixels ->
    merged Detections in pixels of the photo of `size` (height, width), best first. With
    masks (segment), the masks of one object's pieces are ORed, its box the union of theirs."""
    xyxy = [views[0].xyxy] + [to_photo(v.xyxy, t) for v, t in zip(views[1:], tiles, strict=True)]
    cut = [np.zeros(len(views[0]), bool)] + [
        cut_by_edge(b, t) for b, t in zip(xyxy[1:], tiles, strict=True)
    ]
    c = Candidates(
        np.concatenate(xyxy).astype(np.float32).reshape(-1, 4),
        np.concatenate([v.class_id for v in views]).astype(np.int64),
        np.concatenate([v.score for v in views]).astype(np.float32),
        np.concatenate([np.full(len(v), i - 1, np.int64) for i, v in enumerate(views)]),
        np.concatenate(cut),
    )
    merged = merge(c, MergeOptions(iou_threshold=options.iou_threshold))
    keep = np.flatnonzero(merged.score >= options.score_threshold)[: options.max_detections]
    masks = None
    if views[0].masks is not None:
        pieces = list(views[0].masks) + [
            _to_photo_mask(m, t, size)
            for v, t in zip(views[1:], tiles, strict=True)
            for m in v.masks or []
        ]
        masks = [_union_mask([pieces[i] for i in merged.groups[k]]) for k in keep.tolist()]
    return Detections(
        merged.xyxy[keep],
        merged.class_id[keep],
        merged.score[keep],
        masks,
        class_names=views[0].class_names,
    )


Views = Callable[[DecodedImage, list[Tile]], Awaitable[list[Detections]]]


async def _run_tiled(
    runtime: ModelRuntime,
    image: DecodedImage | EncodedImage,
    options: det.DetectOptions | seg.SegmentOptions,
    tiling: TilingOptions,
    timing: Timing,
    whole_only: Callable[[DecodedImage], Awaitable[Detections]],
    views: Views,
) -> TiledResult:
    """Decode, plan the tiles; none: `whole_only`, else every view's detections (`views`:
    the whole photo's first, then each tile's in tile pixels) merged."""
    decoded = await _decode(image, timing)
    tiles = plan(decoded.width, decoded.height, tiling, input_side(runtime))
    if not tiles:
        return TiledResult(await whole_only(decoded), decoded, _report(tiling, []))
    found = await views(decoded, tiles)
    size = (decoded.height, decoded.width)
    merged = await in_thread(timing, "merge", merge_views, found, tiles, size, options)
    return TiledResult(merged, decoded, _report(tiling, tiles))


async def detect_tiled(
    runtime: ModelRuntime,
    image: DecodedImage | EncodedImage,
    options: det.DetectOptions,
    tiling: TilingOptions,
    timing: Timing,
) -> TiledResult:
    """Detections in one photo, from its whole view and (per `tiling`) its tiles, which run
    as rows of one batch."""
    card, layout = runtime.card, det.layout_of(runtime.card)

    async def whole_only(decoded: DecodedImage) -> Detections:
        return (await det.detect(runtime, decoded, options, timing)).answer

    async def views(decoded: DecodedImage, tiles: list[Tile]) -> list[Detections]:
        whole, whole_geometry = await in_thread(
            timing, "preprocess", det.preprocess, [decoded], card
        )

        def prepare_tiles() -> tuple[np.ndarray, list[Geometry]]:
            return det.preprocess(_tile_images(decoded, tiles), card)

        rows, geometries = await in_thread(timing, "tile_preprocess", prepare_tiles)
        results = await _run_rows(runtime, np.concatenate([whole, rows]), timing)
        output = np.concatenate([r.outputs[0] for r in results])
        per_view = replace(options, max_detections=_PER_VIEW)
        return await in_thread(
            timing,
            "postprocess",
            det.postprocess,
            output,
            whole_geometry + geometries,
            per_view,
            layout,
            card.labels,
        )

    return await _run_tiled(runtime, image, options, tiling, timing, whole_only, views)


async def segment_tiled(
    runtime: ModelRuntime,
    image: DecodedImage | EncodedImage,
    options: seg.SegmentOptions,
    mask_format: seg.MaskFormat,
    tiling: TilingOptions,
    timing: Timing,
) -> TiledResult:
    """Instances in one photo, from its whole view and (per `tiling`) its tiles, each view
    its own run; their masks encoded in `mask_format`."""
    resize = seg.GraphResize.of(runtime.card)

    async def whole_only(decoded: DecodedImage) -> Detections:
        return await seg.find_instances(runtime, decoded, options, timing)

    async def views(decoded: DecodedImage, tiles: list[Tile]) -> list[Detections]:
        whole = await in_thread(timing, "preprocess", seg.preprocess, decoded, resize)

        def prepare_tiles() -> list[tuple[np.ndarray, Geometry]]:
            return [seg.preprocess(t, resize) for t in _tile_images(decoded, tiles)]

        parts = [whole, *await in_thread(timing, "tile_preprocess", prepare_tiles)]
        results = await asyncio.gather(*(runtime.infer(t, timing) for t, _ in parts))
        per_view = replace(options, max_detections=_PER_VIEW)

        def finish_views() -> list[Detections]:
            return [
                seg.postprocess(r.outputs, g, per_view, runtime.card.labels)
                for r, (_, g) in zip(results, parts, strict=True)
            ]

        return await in_thread(timing, "postprocess", finish_views)

    out = await _run_tiled(runtime, image, options, tiling, timing, whole_only, views)
    masks = out.found.masks or []
    encoded = await in_thread(timing, "encode", seg.encode_masks, masks, mask_format)
    return replace(out, encoded=encoded)
