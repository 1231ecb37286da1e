"""Mask quality on a validation set, measured through the service's own post-processing.

The model runs as it is exported (`MaskRCNNOutputs`: boxes, labels, scores, 28x28 mask
probabilities) and `service.tasks.segment.postprocess` pastes and thresholds the masks, so the
figure is what `/segment` answers with its default options, not what torchvision's own paste
would give.

Metrics (class-aware; a prediction matches a ground-truth instance of its class when their
mask IoU is >= 0.5, greedily by score):
    mask_iou: mean over ground-truth instances of the IoU with the matched prediction, a
        missed instance counting 0. The headline figure.
    matched_iou: the same mean over matched instances only.
    precision, recall: at mask IoU 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torchvision.models.detection import MaskRCNN
from tqdm import tqdm

from scripts.train.segmentation.data import CocoInstances
from scripts.train.segmentation.models import MaskRCNNOutputs
from service.preprocess import Geometry
from service.tasks.segment import Instances, SegmentOptions, postprocess


@dataclass(frozen=True)
class MaskScores:
    mask_iou: float
    matched_iou: float
    precision: float
    recall: float
    instances: int
    predictions: int
    images: int

    def as_dict(self) -> dict[str, float | int]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def mask_iou_matrix(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """Lists of (H, W) bool masks -> (len(a), len(b)) IoU."""
    if not a or not b:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    fa = np.stack([m.ravel() for m in a]).astype(np.float32)
    fb = np.stack([m.ravel() for m in b]).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match(
    gt_labels: Sequence[int],
    gt_masks: Sequence[np.ndarray],
    pred: Instances,
    threshold: float = 0.5,
) -> list[float]:
    """-> per ground-truth instance, the IoU of its greedy match (0.0 when missed)."""
    pred_masks = [m.full() for m in pred.masks]
    ious = mask_iou_matrix(list(gt_masks), pred_masks)
    same = np.asarray(gt_labels)[:, None] == pred.class_id[None, :] if len(gt_labels) else ious
    ious = np.where(same, ious, 0.0)
    best = [0.0] * len(gt_labels)
    taken = np.zeros(len(gt_labels), dtype=bool)
    for p in np.argsort(-pred.score, kind="stable"):
        if not len(gt_labels):
            break
        candidates = np.where(taken, -1.0, ious[:, p])
        g = int(np.argmax(candidates))
        if candidates[g] >= threshold:
            taken[g] = True
            best[g] = float(candidates[g])
    return best


@torch.no_grad()
def evaluate(
    model: MaskRCNN,
    dataset: CocoInstances,
    options: SegmentOptions | None = None,
    *,
    limit: int | None = None,
    progress: bool = True,
) -> MaskScores:
    options = options or SegmentOptions()
    wrapper = MaskRCNNOutputs(model).eval()
    per_instance: list[float] = []
    n_pred = 0
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for i in tqdm(range(count), desc="val", unit="img", leave=False, disable=not progress):
        pixels, objects = dataset.load(i)
        h, w = pixels.shape[:2]
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()[None] / 255
        outputs = [t.numpy() for t in wrapper(image)]
        pred = postprocess(outputs, Geometry((w, h), (1.0, 1.0), (0.0, 0.0)), options)
        per_instance += match([c for c, _ in objects], [m for _, m in objects], pred)
        n_pred += len(pred.masks)
    matched = [v for v in per_instance if v > 0]
    return MaskScores(
        mask_iou=float(np.mean(per_instance)) if per_instance else 0.0,
        matched_iou=float(np.mean(matched)) if matched else 0.0,
        precision=len(matched) / n_pred if n_pred else 0.0,
        recall=len(matched) / len(per_instance) if per_instance else 0.0,
        instances=len(per_instance),
        predictions=n_pred,
        images=count,
    )
