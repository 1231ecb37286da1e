"""Object detection: YOLO-style raw candidates -> boxes in original image pixels.

In the graph: the network and its head decode (boxes as cx, cy, w, h in input pixels, sigmoid
scores). Here: letterbox (per the card), score threshold, class filter, class-wise greedy NMS,
letterbox undo to the image as displayed (EXIF applied), clip.

Card `postprocess.layout`:
    "yolov5": output (N, A, 5 + C) = cx, cy, w, h, objectness, C class probabilities;
              score = objectness * class probability. Darknet exports and YOLOv5 use it.
    "yolov8": output (N, 4 + C, A) = cx, cy, w, h, C class probabilities (YOLOv8 / YOLO11).
Every (box, class) pair over the threshold is a candidate, as in Darknet, so one box may carry
two labels when both score well.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.boxes import batched_nms
from service.cards import DetectPostprocess, ModelCard
from service.detections import Detections
from service.errors import InvalidParameter
from service.images import DecodedImage, EncodedImage
from service.preprocess import Geometry, to_batch
from service.runtime import ModelRuntime
from service.tasks.pipeline import Outcome, run_image
from service.timing import Timing

Layout = Literal["yolov5", "yolov8"]

# Candidates entering NMS (the highest-scoring ones); beyond this a degenerate model (every anchor
# over a threshold of 0) would make NMS the bottleneck without changing the top results.
MAX_CANDIDATES = 10_000


@dataclass(frozen=True)
class DetectOptions:
    """score_threshold: drop candidates scoring below it. iou_threshold: NMS drops a box whose
    IoU with a better box of the same class is above it. classes: class ids to keep (None:
    all)."""

    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    classes: tuple[int, ...] | None = None


def layout_of(card: ModelCard) -> Layout:
    """The card's output layout (validated when the model loaded)."""
    if not isinstance(card.postprocess, DetectPostprocess):
        raise ValueError(f"model {card.name} is a {card.task} model, not detect")
    return card.postprocess.layout


def resolve_classes(values: Iterable[str], labels: Sequence[str]) -> tuple[int, ...]:
    """Query values (label names or ids, each possibly comma-separated) -> sorted class ids.
    Raises InvalidParameter (422) naming the value it does not know."""
    index = {name.lower(): i for i, name in enumerate(labels)}
    ids: set[int] = set()
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            if part.lower() in index:
                ids.add(index[part.lower()])
            elif part.isdigit() and int(part) < len(labels):
                ids.add(int(part))
            else:
                raise InvalidParameter(
                    f"classes: {part!r} is neither a label of this model nor an id in "
                    f"0..{len(labels) - 1}; see the model's labels in /v1/models"
                )
    if not ids:
        raise InvalidParameter("classes: give at least one label or id, or leave it out")
    return tuple(sorted(ids))


def preprocess(
    images: Sequence[DecodedImage], card: ModelCard
) -> tuple[np.ndarray, list[Geometry]]:
    """-> (N, 3, H, W) float32 and, per image, how it sits in the input (for the way back)."""
    return to_batch(images, card.preprocess)


def _candidates(
    pred: np.ndarray, layout: Layout, options: DetectOptions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw output -> (boxes (M, 4) cxcywh, class ids (M,), scores (M,)) over the
    threshold; the class filter applied."""
    if layout == "yolov5":
        boxes, cls = pred[:, :4], pred[:, 5:]
        # obj * cls <= obj: anchors whose objectness is under the threshold cannot qualify
        rows = np.flatnonzero(pred[:, 4] >= options.score_threshold)
        scores = pred[rows, 4:5] * cls[rows]
    else:
        boxes, cls = pred[:4].T, pred[4:].T
        rows = np.flatnonzero(cls.max(axis=1, initial=0.0) >= options.score_threshold)
        scores = cls[rows]
    if options.classes is not None:
        allowed = np.zeros(scores.shape[1], dtype=bool)
        allowed[[c for c in options.classes if c < scores.shape[1]]] = True
        scores = np.where(allowed, scores, 0.0)
    r, c = np.nonzero(scores >= options.score_threshold)
    s = scores[r, c].astype(np.float32)
    if s.size > MAX_CANDIDATES:
        top = np.argpartition(-s, MAX_CANDIDATES - 1)[:MAX_CANDIDATES]
        r, c, s = r[top], c[top], s[top]
    return boxes[rows[r]].astype(np.float32), c.astype(np.int64), s


def postprocess(
    output: np.ndarray,
    geometries: Sequence[Geometry],
    options: DetectOptions,
    layout: Layout,
    class_names: Sequence[str] = (),
) -> list[Detections]:
    """output: (N, A, 5+C) or (N, 4+C, A) per `layout` -> N Detections, boxes in original
    pixels, at most `options.max_detections` each (`class_names`: the card's labels)."""
    if output.ndim != 3 or output.shape[0] != len(geometries):
        raise ValueError(
            f"expected detector output (N={len(geometries)}, ..., ...), got {output.shape}"
        )
    results = []
    for pred, geometry in zip(output, geometries, strict=True):
        cxcywh, class_id, score = _candidates(pred, layout, options)
        xyxy = np.concatenate(
            [cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1
        )
        keep = batched_nms(xyxy, score, class_id, options.iou_threshold)
        boxes = geometry.to_original(xyxy[keep])
        w, h = geometry.original  # clip again: to_original's clip writes into a temporary copy
        np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])
        # a box that lay wholly in the letterbox padding is clipped to a line: not an object
        visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        keep, boxes = (
            keep[visible][: options.max_detections],
            boxes[visible][: options.max_detections],
        )
        results.append(Detections(boxes, class_id[keep], score[keep], class_names=class_names))
    return results


async def detect(
    runtime: ModelRuntime,
    image: DecodedImage | EncodedImage,
    options: DetectOptions,
    timing: Timing,
) -> Outcome[Detections]:
    """Detections in one image (decoded here if still encoded; see service.tasks.pipeline)."""
    card, layout = runtime.card, layout_of(runtime.card)

    def prepare(decoded: DecodedImage) -> tuple[np.ndarray, list[Geometry]]:
        return preprocess([decoded], card)

    def finish(outputs: list[np.ndarray], geometries: list[Geometry]) -> Detections:
        return postprocess(outputs[0], geometries, options, layout, card.labels)[0]

    return await run_image(runtime, image, timing, prepare, finish, heavy_finish=True)
