"""Box geometry shared by the detection tasks: IoU and non-maximum suppression, in numpy.

Boxes are xyxy: (N, 4) float32, [x1, y1, x2, y2], origin top-left.
"""

from __future__ import annotations

import numpy as np


def area(xyxy: np.ndarray) -> np.ndarray:
    """(N, 4) -> (N,) float32; degenerate boxes have area 0."""
    wh = np.clip(xyxy[:, 2:4] - xyxy[:, 0:2], 0, None)
    out: np.ndarray = (wh[:, 0] * wh[:, 1]).astype(np.float32)
    return out


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) -> (N, M) intersection over union; 0 where the union is empty."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def nms(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS. -> (K,) int64 indices into the input, highest score first.

    Each step keeps the best remaining box and drops, in one vectorised IoU against all the
    others, those overlapping it by more than `iou_threshold`; the Python loop runs once per
    kept box, never once per candidate pair.
    """
    if xyxy.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    boxes = xyxy[order].astype(np.float32, copy=False)
    areas = area(boxes)
    keep: list[int] = []
    alive = np.arange(len(order))
    while alive.size:
        best, rest = alive[0], alive[1:]
        keep.append(int(best))
        lt = np.maximum(boxes[best, :2], boxes[rest, :2])
        rb = np.minimum(boxes[best, 2:], boxes[rest, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[:, 0] * wh[:, 1]
        union = areas[best] + areas[rest] - inter
        overlap = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        alive = rest[overlap <= iou_threshold]
    return order[np.asarray(keep, dtype=np.int64)]


def batched_nms(
    xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Class-wise NMS in one pass: boxes of different classes are shifted apart by more than
    the whole image extent, so they can never overlap (torchvision's trick)."""
    if xyxy.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    span = float(xyxy.max()) - float(min(xyxy.min(), 0.0)) + 1.0
    shifted = xyxy + (class_ids.astype(np.float32) * span)[:, None]
    return nms(shifted, scores, iou_threshold)
