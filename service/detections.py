"""One image's detection-like results: objects (/detect), instances with masks (/segment) and
faces with landmarks and embeddings (/verify-faces, /faces/embed, the galleries), in one
container the tasks return, the tiled merge combines and the routes and OIP answers encode.
(roboflow/supervision's `Detections`, with the fields this service needs.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from service.masks import BoxMask


def label_of(class_names: Sequence[str], class_id: int) -> str:
    """The class's name, or its id as text when the model's labels do not reach it."""
    return class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)


@dataclass(frozen=True, eq=False)
class Detections:
    """K detections in one image, best first.

    xyxy: (K, 4) float32 pixels (x1, y1, x2, y2); class_id: (K,) int64; score: (K,) float32.
    Optional, per detection: masks, K BoxMasks over the image; landmarks, (K, P, 2) float32
    (x, y) points (faces: 5); embeddings, (K, D) float32.
    class_names: the model's labels, for `label(i)` (not per detection).
    """

    xyxy: np.ndarray
    class_id: np.ndarray
    score: np.ndarray
    masks: list[BoxMask] | None = None
    landmarks: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    class_names: Sequence[str] = ()

    def __post_init__(self) -> None:
        k = self.score.shape[0]
        if self.xyxy.shape != (k, 4) or self.class_id.shape != (k,) or self.score.shape != (k,):
            raise ValueError(
                f"Detections: expected xyxy (K, 4), class_id (K,), score (K,); got "
                f"{self.xyxy.shape}, {self.class_id.shape}, {self.score.shape}"
            )
        if self.masks is not None and len(self.masks) != k:
            raise ValueError(f"Detections: expected {k} masks, got {len(self.masks)}")
        for name in ("landmarks", "embeddings"):
            value = getattr(self, name)
            if value is not None and (value.ndim < 2 or value.shape[0] != k):
                raise ValueError(f"Detections: expected {name} ({k}, ...), got {value.shape}")

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def take(self, indices: np.ndarray | Sequence[int]) -> Detections:
        """The detections at `indices`, in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "masks" and value is not None:
                rows[f.name] = [value[i] for i in idx.tolist()]
            elif isinstance(value, np.ndarray):
                rows[f.name] = value[idx]
        return replace(self, **rows)

    def label(self, i: int) -> str:
        """The class name of detection i."""
        return label_of(self.class_names, int(self.class_id[i]))

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
        )
