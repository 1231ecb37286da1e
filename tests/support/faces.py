"""Tiny face models whose answers are known: a YuNet-shaped detector that finds a "face" in
every bright 32x32 cell of its input (stride 32), with fixed landmarks inside the cell, and a
small random embedding tower; plus photos made for that detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from scripts.export.common import to_onnx_bytes
from scripts.export.faces import (
    EmbeddingTower,
    embedder_postprocess,
    export_embedder,
    package_detector,
)
from tests.support.images import encode

KPS = [0.3, 0.35, 0.7, 0.35, 0.5, 0.55, 0.35, 0.75, 0.65, 0.75]
OUTPUTS = [f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)]
THRESHOLD = 0.5


class TinyYuNet(nn.Module):
    """YuNet's outputs from brightness: a stride-32 cell whose mean is bright is a face filling
    the cell (score sigmoid(10 (mean/255 - 0.5))); strides 8 and 16 never fire."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cls, obj, bbox, kps = [], [], [], []
        for s in (8, 16, 32):
            b = F.avg_pool2d(x, s).mean(1, keepdim=True).flatten(2).transpose(1, 2) / 255
            logit = 10 * (b - 0.5) if s == 32 else b * 0 - 20
            cls.append(torch.sigmoid(logit))
            obj.append(torch.ones_like(b))
            bbox.append(torch.cat([b * 0 + 0.5, b * 0 + 0.5, b * 0, b * 0], dim=2))
            kps.append(b * 0 + torch.tensor(KPS))
        return (*cls, *obj, *bbox, *kps)


def export_tiny_faces(out: Path) -> Path:
    """`tiny-facedet` (TinyYuNet, packaged as the YuNet detector is) and `tiny-faceemb` (a small
    random tower) in `out`, written by scripts/export/faces.py."""
    data = to_onnx_bytes(
        TinyYuNet(), torch.zeros(1, 3, 640, 640), input_name="input", output_names=OUTPUTS
    )
    package_detector(
        onnx.load_from_string(data),
        name="tiny-facedet",
        out_dir=out,
        source={"weights": "none: brightness rule (tests only)"},
        export={"tool": "tests"},
    )
    torch.manual_seed(0)
    export_embedder(
        EmbeddingTower("small", dim=16, width=4),
        name="tiny-faceemb",
        out_dir=out,
        preprocess={
            "resize": "stretch",
            "size": [32, 32],
            "scale": 1 / 255,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
        postprocess=embedder_postprocess({"cosine": THRESHOLD}, "tests: arbitrary"),
        source={"weights": "random (tests only)"},
    )
    return out


def photo(seed: int, cell: tuple[int, int] = (3, 1), size: tuple[int, int] = (320, 320)):
    """A dark textured image with one bright textured square that fills the stride-32 cell
    (col, row) of the detector input exactly once the long side is scaled to 640."""
    rng = np.random.default_rng(seed)
    w, h = size
    side = round(32 * max(w, h) / 640)
    img = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
    x, y = cell[0] * side, cell[1] * side
    img[y : y + side, x : x + side] = rng.integers(200, 256, (side, side, 3), dtype=np.uint8)
    return Image.fromarray(img)


def png(img: Image.Image) -> tuple[str, bytes, str]:
    return ("face.png", encode(img, "PNG"), "image/png")
