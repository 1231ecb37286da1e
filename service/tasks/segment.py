"""Instance segmentation: Mask R-CNN outputs -> scored boxes and binary masks in original pixels.

In the graph (card `preprocess.resize = "none-in-graph"`): resize (shorter side to
`postprocess.min_size`, longer at most `postprocess.max_size`), ImageNet normalisation, the
network, class-wise NMS, boxes mapped back to the input tensor's pixels. The graph does NOT
paste masks at full resolution; it returns each detection's small (M x M) mask probabilities.

Here: RGB/255 into a (1, 3, H, W) tensor (uploads larger than the graph's working size are
shrunk first; they would be anyway, and a 40 MP float tensor is 480 MB), then score threshold,
class filter, class-wise NMS, top-k, and only the kept masks are pasted into their boxes in the
original image's pixels, thresholded, measured and encoded (RLE / polygons / PNG).

Graph outputs, batch axis first (the batch is always 1: Mask R-CNN exports cannot stack
images of different sizes):
    boxes (1, N, 4) float32 xyxy in input pixels; labels (1, N) int64; scores (1, N) float32;
    mask_probs (1, N, M, M) float32 in 0..1 for the detection's own class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from iis_client.params import MaskFormat as MaskFormat  # re-exported for the routes
from service.boxes import batched_nms
from service.cards import ModelCard, SegmentPostprocess
from service.detections import Detections
from service.images import DecodedImage
from service.masks import BoxMask, encode_rle, png_base64, polygons
from service.preprocess import Geometry
from service.runtime import ModelRuntime
from service.timing import Timing, in_thread


@dataclass(frozen=True)
class GraphResize:
    """The resize rule inside the graph (torchvision GeneralizedRCNNTransform)."""

    min_size: int
    max_size: int

    @classmethod
    def of(cls, card: ModelCard) -> GraphResize:
        post = card.postprocess
        if not isinstance(post, SegmentPostprocess):
            raise ValueError(f"model {card.name} is a {card.task} model, not segment")
        return cls(post.min_size, post.max_size)

    def scale(self, width: int, height: int) -> float:
        return min(self.min_size / min(width, height), self.max_size / max(width, height))


@dataclass(frozen=True)
class SegmentOptions:
    """score_threshold / iou_threshold / max_detections / classes: as /detect.
    mask_threshold: a pixel belongs to the object when its pasted probability is above it."""

    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    classes: tuple[int, ...] | None = None
    mask_threshold: float = 0.5


# What segment() finds: Detections with masks (the name scripts and tests use).
Instances = Detections


def preprocess(image: DecodedImage, resize: GraphResize) -> tuple[np.ndarray, Geometry]:
    """-> ((1, 3, h, w) float32 RGB in 0..1, Geometry from tensor to original pixels).

    Shrinks (Pillow bilinear, antialiased) to the graph's working size when the image is
    larger than that; smaller images go in as they are and the graph upsamples them.
    """
    pixels = image.pixels
    ph, pw = pixels.shape[:2]
    scale = resize.scale(pw, ph)
    if scale < 1.0:
        w, h = max(1, math.floor(pw * scale + 0.5)), max(1, math.floor(ph * scale + 0.5))
        pixels = np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR))
    h, w = pixels.shape[:2]
    tensor = np.empty((1, 3, h, w), dtype=np.float32)
    np.multiply(pixels.transpose(2, 0, 1), np.float32(1 / 255), out=tensor[0], casting="unsafe")
    geometry = Geometry(
        (image.width, image.height), (w / image.width, h / image.height), (0.0, 0.0)
    )
    return tensor, geometry


def _sample_points(
    start: float, length: float, cells: int, pixels: int, first: int
) -> tuple[np.ndarray, np.ndarray]:
    """Where the centres of pixels first .. first+pixels-1 fall in a zero-padded row of `cells`
    values spanning [start, start + length): -> (index of the left neighbour in the padded row,
    (pixels,) int64; weight of the right neighbour, (pixels,) float32).

    Cell i is centred at start + (i + 0.5) * length / cells; beyond the outer cells the value
    falls linearly to 0 at one more cell out (the zero padding), as torchvision's paste does."""
    centres = np.arange(first, first + pixels, dtype=np.float64) + 0.5
    u = (centres - start) * (cells / length) - 0.5 + 1.0  # +1: index into the padded row
    u = np.clip(u, 0.0, cells + 1.0)
    lo = np.minimum(np.floor(u).astype(np.int64), cells)
    return lo, (u - lo).astype(np.float32)


def paste(probs: np.ndarray, box: np.ndarray, size: tuple[int, int], threshold: float) -> BoxMask:
    """Paste one (M, M) probability map into `box` (x1, y1, x2, y2, original pixels) of an image
    of `size` (height, width); pixels whose bilinear-sampled probability is > threshold are set.

    The map covers the box exactly (cell centres at (i + 0.5) / M of it); only the window the
    map can reach (the box plus one cell) is computed, so the cost is O(box area). Separable
    gathers rather than matrix products: BLAS would spread a 1 ms job over threads.
    """
    height, width = size
    mh, mw = probs.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = x2 - x1, y2 - y1
    if not (bw > 0 and bh > 0):
        return BoxMask(np.zeros((0, 0), dtype=bool), 0, 0, size)
    # pixels whose centre lies within one cell of the box
    left = max(0, math.floor(x1 - bw / mw))
    right = min(width, math.ceil(x2 + bw / mw))
    top = max(0, math.floor(y1 - bh / mh))
    bottom = min(height, math.ceil(y2 + bh / mh))
    if right <= left or bottom <= top:
        return BoxMask(np.zeros((0, 0), dtype=bool), 0, 0, size)
    padded = np.zeros((mh + 2, mw + 2), dtype=np.float32)
    padded[1:-1, 1:-1] = probs
    ry, fy = _sample_points(y1, bh, mh, bottom - top, top)
    rx, fx = _sample_points(x1, bw, mw, right - left, left)
    rows = padded[ry] * (1 - fy)[:, None] + padded[ry + 1] * fy[:, None]  # (h, M + 2)
    window = rows[:, rx] * (1 - fx) + rows[:, rx + 1] * fx  # (h, w)
    return BoxMask(window > threshold, top, left, size)


def select(
    xyxy: np.ndarray, class_id: np.ndarray, score: np.ndarray, options: SegmentOptions
) -> np.ndarray:
    """-> (K,) int64 indices to keep, best first: score, class filter, class-wise NMS, top-k."""
    keep = score >= options.score_threshold
    if options.classes is not None:
        keep &= np.isin(class_id, options.classes)
    rows = np.flatnonzero(keep)
    order = batched_nms(xyxy[rows], score[rows], class_id[rows], options.iou_threshold)
    out: np.ndarray = rows[order][: options.max_detections]
    return out


def postprocess(
    outputs: Sequence[np.ndarray],
    geometry: Geometry,
    options: SegmentOptions,
    class_names: Sequence[str] = (),
) -> Detections:
    """outputs: (boxes, labels, scores, mask_probs) with batch axis 1 (see module doc) ->
    Detections with boxes and masks in original pixels (`class_names`: the card's labels)."""
    if len(outputs) != 4:
        raise ValueError(f"expected 4 Mask R-CNN outputs, got {len(outputs)}")
    boxes, labels, scores, probs = (o[0] for o in outputs)
    n = scores.shape[0]
    if boxes.shape != (n, 4) or labels.shape != (n,) or probs.ndim != 3 or probs.shape[0] != n:
        raise ValueError(
            f"expected boxes (N, 4), labels (N,), scores (N,), mask_probs (N, M, M); got "
            f"{boxes.shape}, {labels.shape}, {scores.shape}, {probs.shape}"
        )
    keep = select(boxes, labels, scores, options)
    xyxy = geometry.to_original(boxes[keep]) if keep.size else np.zeros((0, 4), np.float32)
    size = (geometry.original[1], geometry.original[0])
    # paste into the unclipped box: clipping first would squeeze the map into the visible part
    sx, sy = geometry.scale
    raw = boxes[keep].astype(np.float64) / np.array([sx, sy, sx, sy])
    masks = [
        paste(probs[i], b, size, options.mask_threshold) for i, b in zip(keep, raw, strict=True)
    ]
    return Detections(
        xyxy.astype(np.float32),
        labels[keep].astype(np.int64),
        scores[keep].astype(np.float32),
        masks,
        class_names=class_names,
    )


def encode_mask(mask: BoxMask, fmt: MaskFormat) -> dict[str, Any]:
    """-> the response's `mask` object: {format, size: [h, w], counts | polygons | png_base64}."""
    out: dict[str, Any] = {"format": fmt, "size": list(mask.size)}
    if fmt == "rle":
        out["counts"] = encode_rle(mask)["counts"]
    elif fmt == "polygon":
        out["polygons"] = polygons(mask)
    elif fmt == "png":
        out["png_base64"] = png_base64(mask)
    else:
        raise ValueError(f"unknown mask format {fmt!r}")
    return out


def encode_masks(masks: Sequence[BoxMask], fmt: MaskFormat) -> list[dict[str, Any]]:
    return [encode_mask(m, fmt) for m in masks]


@dataclass(frozen=True)
class SegmentResult:
    instances: Detections  # with masks
    encoded: list[dict[str, Any]]  # each mask in the asked format


async def find_instances(
    runtime: ModelRuntime, image: DecodedImage, options: SegmentOptions, timing: Timing
) -> Detections:
    """The instances in one image, masks not yet encoded (the OIP answer has no masks)."""
    resize = GraphResize.of(runtime.card)
    tensor, geometry = await in_thread(timing, "preprocess", preprocess, image, resize)
    result = await runtime.infer(tensor, timing)
    return await in_thread(
        timing,
        "postprocess",
        postprocess,
        result.outputs,
        geometry,
        options,
        runtime.card.labels,
    )


async def segment(
    runtime: ModelRuntime,
    image: DecodedImage,
    options: SegmentOptions,
    mask_format: MaskFormat,
    timing: Timing,
) -> SegmentResult:
    """The instances in one image with their masks encoded in `mask_format`."""
    instances = await find_instances(runtime, image, options, timing)
    encoded = await in_thread(timing, "encode", encode_masks, instances.masks or [], mask_format)
    return SegmentResult(instances, encoded)
