"""Face crops, one folder per identity: scanning, the P x K batch sampler, a tiny generated
data set, aligning raw photos, and the identity split."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from scripts.constants import IMAGE_SUFFIXES

# --- data -------------------------------------------------------------------------------


def scan(root: Path) -> dict[str, list[Path]]:
    """identity -> its images, for every sub-folder of root holding at least 2 images."""
    found = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(root.iterdir())
        if d.is_dir()
    }
    return {k: v for k, v in found.items() if len(v) >= 2}


class FaceFolder(Dataset[tuple[torch.Tensor, int]]):
    """(path, label) items -> normalised (3, H, W) tensors; flips and brightness if augment."""

    def __init__(
        self, items: list[tuple[Path, int]], size: int, pre: dict[str, Any], augment: bool
    ) -> None:
        self.items, self.size, self.augment = items, size, augment
        self.scale = float(pre["scale"])
        self.mean = torch.tensor(pre["mean"]).view(3, 1, 1)
        self.std = torch.tensor(pre["std"]).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1)
        if self.augment:
            if random.random() < 0.5:
                x = x.flip(2)
            x = (x * random.uniform(0.8, 1.2)).clamp(0, 255)
        return (x * self.scale - self.mean) / self.std, label


class PKSampler(Sampler[list[int]]):
    """Batches of P identities x K images each (drawn with replacement when an identity has
    fewer than K), so every anchor has positives and negatives in its batch."""

    def __init__(self, labels: list[int], p: int, k: int, batches: int, seed: int) -> None:
        self.by_label: dict[int, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            self.by_label[label].append(i)
        self.p, self.k, self.batches = min(p, len(self.by_label)), k, batches
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):  # type: ignore[no-untyped-def]
        labels = list(self.by_label)
        for _ in range(self.batches):
            batch: list[int] = []
            for label in self.rng.sample(labels, self.p):
                pool = self.by_label[label]
                if len(pool) >= self.k:
                    batch += self.rng.sample(pool, self.k)
                else:
                    batch += [self.rng.choice(pool) for _ in range(self.k)]
            yield batch


def make_toy_dataset(
    root: Path, identities: int = 10, per_identity: int = 6, size: int = 32, seed: int = 0
) -> Path:
    """A tiny generated folder-per-identity set: each identity is a fixed arrangement of
    coloured blobs on its own background; its images vary position, brightness and noise."""
    rng = np.random.default_rng(seed)
    for ident in range(identities):
        background = tuple(int(v) for v in rng.integers(0, 256, 3))
        blobs = [
            (
                rng.uniform(0.15, 0.85, 2) * size,
                rng.uniform(0.08, 0.2) * size,
                rng.integers(0, 256, 3),
            )
            for _ in range(4)
        ]
        folder = root / f"person_{ident:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_identity):
            img = Image.new("RGB", (size, size), background)
            draw = ImageDraw.Draw(img)
            shift = rng.normal(0, size * 0.03, 2)
            for (cx, cy), r, colour in blobs:
                x, y = cx + shift[0], cy + shift[1]
                draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in colour))
            arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.85, 1.15)
            arr += rng.normal(0, 8, arr.shape)
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(folder / f"{n:03d}.png")
    return root


def align_dataset(raw: Path, out: Path, detector: Path, size: int = 112) -> int:
    """Raw photos (folder per identity) -> aligned face crops as the service makes them:
    the detector's largest face, 5-point similarity onto the ArcFace template."""
    import onnxruntime as ort

    from service.cards import read_card
    from service.images import decode
    from service.tasks.faces import (
        ARCFACE_TEMPLATE,
        DetectorSettings,
        align,
        detect_postprocess,
        detect_preprocess,
        largest,
    )

    loaded = read_card(detector)
    session = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    settings = DetectorSettings.from_card(loaded.card)
    written = 0
    for identity, paths in tqdm(scan(raw).items(), desc="aligning", unit="identity"):
        for path in paths:
            image = decode(path.read_bytes(), max_pixels=100_000_000)
            tensor, geometry = detect_preprocess(image, loaded.card.preprocess)
            rows = session.run(None, {input_name: tensor})
            outputs = {n: o[0] for n, o in zip(names, rows, strict=True)}
            faces = detect_postprocess(outputs, tensor.shape[2:4], geometry, settings)
            if not len(faces):
                print(f"no face in {path}; skipped")
                continue
            marks = faces.landmarks[largest(faces)]
            crop = align(image.pixels, marks, ARCFACE_TEMPLATE * size / 112, (size, size))
            (out / identity).mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop).save(out / identity / f"{path.stem}.png")
            written += 1
    return written


def split(identities: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    shuffled = identities[:]
    random.Random(seed).shuffle(shuffled)
    n_val = max(2, round(len(shuffled) * val_fraction))
    if len(shuffled) - n_val < 2:
        raise SystemExit(
            f"{len(shuffled)} identities with >= 2 images: need at least 4 (2 to train on, "
            "2 held out for calibration)"
        )
    return sorted(shuffled[n_val:]), sorted(shuffled[:n_val])
