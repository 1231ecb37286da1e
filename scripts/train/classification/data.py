"""ImageFolder in: one sub-folder per class (split into train/val here), or train/ and val/
each holding one sub-folder per class.

Images are decoded by the service's own `decode` and, for evaluation, preprocessed by the
service's own `to_batch` with the card's preprocess, so validation accuracy measured here is
what /classify will see. Training images get random augmentation on top.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from scripts.constants import IMAGE_SUFFIXES
from scripts.train.classification import FinetuneError
from service.cards import Preprocess
from service.images import DecodedImage, decode
from service.preprocess import normalize_into, to_batch

MAX_PIXELS = 200_000_000  # a training photo may be large; a decompression bomb may not


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class Dataset:
    """classes: names, index = label. layout: "train/val folders" or "split NN%"."""

    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    layout: str
    skipped: list[str]

    def counts(self, split: str) -> list[int]:
        c = Counter(s.label for s in (self.train if split == "train" else self.val))
        return [c.get(i, 0) for i in range(len(self.classes))]

    def summary(self) -> dict[str, Any]:
        """What the model card and the JSON report say about the training data."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": self.classes,
            "train_per_class": dict(zip(self.classes, self.counts("train"), strict=True)),
            "val_per_class": dict(zip(self.classes, self.counts("val"), strict=True)),
            "train_images": len(self.train),
            "val_images": len(self.val),
            "skipped_files": len(self.skipped),
        }


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path, skipped: list[str]) -> list[Path]:
    """Readable image files under `folder` (recursively), sorted; the others go to `skipped`."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(f"{path}: not an image file name")
            continue
        try:  # header only: cheap, and catches truncated / mislabelled files up front
            with Image.open(path) as img:
                img.size  # noqa: B018
        except Exception as exc:
            skipped.append(f"{path}: {exc}")
            continue
        found.append(path)
    return found


def scan(root: Path, *, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Index an ImageFolder. With a single folder, each class is split on its own (stratified)
    so every class keeps at least one validation image. Raises ValueError on a layout that
    cannot train a classifier."""
    if not root.is_dir():
        raise FinetuneError(f"{root}: not a folder")
    skipped: list[str] = []
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes = [p.name for p in _class_dirs(root / "train")]
        extra = {p.name for p in _class_dirs(root / "val")} - set(classes)
        if extra:
            raise FinetuneError(f"{root}/val has classes missing from train/: {sorted(extra)}")
        train = [
            Sample(p, i)
            for i, c in enumerate(classes)
            for p in _images(root / "train" / c, skipped)
        ]
        val = [
            Sample(p, i)
            for i, c in enumerate(classes)
            if (root / "val" / c).is_dir()
            for p in _images(root / "val" / c, skipped)
        ]
        layout = "train/val folders"
    else:
        classes = [p.name for p in _class_dirs(root)]
        rng = random.Random(seed)
        train, val = [], []
        for i, c in enumerate(classes):
            paths = _images(root / c, skipped)
            rng.shuffle(paths)
            n_val = max(1, round(len(paths) * val_fraction)) if len(paths) >= 2 else 0
            val += [Sample(p, i) for p in sorted(paths[:n_val])]
            train += [Sample(p, i) for p in sorted(paths[n_val:])]
        layout = f"split {val_fraction:.0%} per class (seed {seed})"
    ds = Dataset(root, classes, train, val, layout, skipped)
    if len(classes) < 2:
        raise FinetuneError(f"{root}: found {len(classes)} class folder(s); need at least 2")
    empty = [c for c, n in zip(classes, ds.counts("train"), strict=True) if n == 0]
    if empty:
        raise FinetuneError(f"{root}: no training images for classes {empty}")
    if not val:
        raise FinetuneError(f"{root}: no validation images (need 2+ images per class)")
    return ds


def load(path: Path, min_side: int | None) -> DecodedImage:
    """The service's decode: EXIF orientation, any mode -> RGB, JPEG draft when large."""
    return decode(path.read_bytes(), max_pixels=MAX_PIXELS, min_side=min_side)


class Transforms:
    """eval: exactly the service's preprocessing for the card. train: random resized crop,
    horizontal flip and a little colour jitter, then the same normalisation."""

    def __init__(self, preprocess: dict[str, Any], *, augment: bool, flip: bool = True) -> None:
        self.spec = Preprocess.model_validate(preprocess)
        assert self.spec.size is not None
        self.min_side = self.spec.resize_short or max(self.spec.size)
        self.augment = augment
        steps: list[Any] = [
            v2.RandomResizedCrop(tuple(self.spec.size), scale=(0.5, 1.0), antialias=True)
        ]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
        self._train = v2.Compose(steps)

    def eval(self, image: DecodedImage) -> torch.Tensor:
        """-> (3, H, W) float32, identical to what /classify feeds the model."""
        batch, _ = to_batch([image], self.spec)
        return torch.from_numpy(batch[0])

    def train(self, image: DecodedImage) -> torch.Tensor:
        """-> (3, H, W) float32, randomly augmented (draws from torch's global RNG)."""
        if not self.augment:
            return self.eval(image)
        pixels = np.asarray(self._train(Image.fromarray(image.pixels)), dtype=np.uint8)
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
        normalize_into(out, pixels, self.spec)
        return torch.from_numpy(out)


class ImageSet(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """samples -> (tensor (3, H, W), label); `train=True` augments."""

    def __init__(self, samples: list[Sample], transforms: Transforms, *, train: bool) -> None:
        self.samples = samples
        self.transforms = transforms
        self.is_train = train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        s = self.samples[index]
        image = load(s.path, self.transforms.min_side)
        fn = self.transforms.train if self.is_train else self.transforms.eval
        return fn(image), s.label


def is_skewed(counts: list[int], ratio: float = 1.5) -> bool:
    """Class-balanced sampling kicks in when the largest class outnumbers the smallest by more
    than `ratio`."""
    return max(counts) > ratio * max(1, min(counts))


def epoch_order(
    labels: torch.Tensor, *, balanced: bool, generator: torch.Generator
) -> torch.Tensor:
    """Indices for one epoch (len(labels) of them). balanced: drawn with replacement, each
    class equally likely; else a permutation."""
    n = len(labels)
    if not balanced:
        return torch.randperm(n, generator=generator)
    counts = torch.bincount(labels).double()
    weights = 1.0 / counts[labels]
    return torch.multinomial(weights, n, replacement=True, generator=generator)
