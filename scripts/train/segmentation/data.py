"""COCO-format instance segmentation data for torchvision Mask R-CNN.

Reads the standard `annotations.json` (images, annotations with polygon or RLE segmentation,
categories) and an image folder. Category ids are mapped to contiguous labels 1..K in id order
(0 is the background), and the label names travel into the checkpoint and the model card.
Crowd annotations (`iscrowd: 1`) are skipped, as torchvision's reference training does.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from service.masks import decode_rle


@dataclass(frozen=True)
class CocoIndex:
    """annotations.json, indexed. label_of: category id -> contiguous label (1..K)."""

    path: Path
    images: dict[int, dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]
    categories: list[dict[str, Any]]

    @property
    def labels(self) -> list[str]:
        return ["__background__", *(str(c["name"]) for c in self.categories)]

    @property
    def label_of(self) -> dict[int, int]:
        return {int(c["id"]): i + 1 for i, c in enumerate(self.categories)}


def load_coco(path: Path) -> CocoIndex:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{path}: not a COCO annotations file (no {key!r})")
    images = {int(im["id"]): im for im in data["images"]}
    annotations: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
    for ann in data["annotations"]:
        if int(ann["image_id"]) not in images:
            raise ValueError(f"{path}: annotation {ann.get('id')} names a missing image")
        annotations[int(ann["image_id"])].append(ann)
    categories = sorted(data["categories"], key=lambda c: int(c["id"]))
    if not categories:
        raise ValueError(f"{path}: no categories")
    return CocoIndex(Path(path), images, annotations, categories)


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO `segmentation` (polygons, or RLE with string or list counts) -> (H, W) bool."""
    if isinstance(segmentation, dict):
        return decode_rle(segmentation)
    if isinstance(segmentation, list):
        canvas = Image.new("1", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in segmentation:
            if len(poly) >= 6:
                points = [(float(x), float(y)) for x, y in zip(poly[::2], poly[1::2], strict=False)]
                draw.polygon(points, fill=1)
        return np.asarray(canvas, dtype=bool)
    raise ValueError(f"unknown segmentation type {type(segmentation).__name__}")


def split_ids(ids: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random (train, val) split of image ids; val gets at least one image."""
    shuffled = sorted(ids)
    random.Random(seed).shuffle(shuffled)
    n_val = max(1, round(len(shuffled) * val_fraction)) if val_fraction > 0 else 0
    return sorted(shuffled[n_val:]), sorted(shuffled[:n_val])


class CocoInstances(Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """Items: (image (3, H, W) float 0..1, target {boxes (N, 4) xyxy float32, labels (N,)
    int64, masks (N, H, W) uint8}); boxes are the masks' tight extents.

    hflip: mirror half of the items at random (training augmentation).
    """

    def __init__(
        self,
        index: CocoIndex,
        image_dir: Path,
        image_ids: Sequence[int] | None = None,
        *,
        hflip: bool = False,
        label_of: dict[int, int] | None = None,
    ) -> None:
        self.index = index
        self.image_dir = Path(image_dir)
        self.ids = sorted(index.images) if image_ids is None else list(image_ids)
        self.hflip = hflip
        self.label_of = label_of or index.label_of

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        """(H, W, 3) uint8 image, [(label, (H, W) bool mask)] for item i."""
        info = self.index.images[self.ids[i]]
        with Image.open(self.image_dir / info["file_name"]) as img:
            pixels = np.asarray(img.convert("RGB"))
        h, w = pixels.shape[:2]
        if (w, h) != (int(info.get("width", w)), int(info.get("height", h))):
            raise ValueError(
                f"{info['file_name']}: file is {w}x{h}, annotations say "
                f"{info.get('width')}x{info.get('height')}"
            )
        objects = []
        for ann in self.index.annotations[self.ids[i]]:
            if ann.get("iscrowd", 0) or int(ann["category_id"]) not in self.label_of:
                continue
            mask = annotation_mask(ann["segmentation"], h, w)
            if mask.any():
                objects.append((self.label_of[int(ann["category_id"])], mask))
        return pixels, objects

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pixels, objects = self.load(i)
        h, w = pixels.shape[:2]
        masks = np.stack([m for _, m in objects]) if objects else np.zeros((0, h, w), bool)
        if self.hflip and random.random() < 0.5:
            pixels, masks = pixels[:, ::-1], masks[:, :, ::-1]
        boxes = np.zeros((len(objects), 4), dtype=np.float32)
        for k, mask in enumerate(masks):
            ys, xs = np.nonzero(mask)
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        image = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255
        target = {
            "boxes": torch.from_numpy(boxes),
            "labels": torch.tensor([label for label, _ in objects], dtype=torch.int64),
            "masks": torch.from_numpy(np.ascontiguousarray(masks).astype(np.uint8)),
        }
        return image, target


def collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Detection batches are lists: images differ in size."""
    return [b[0] for b in batch], [b[1] for b in batch]
