"""Pixels -> model input tensor, per a card's `Preprocess`. Pure numpy/Pillow, no session.

Each resize mode returns a `Geometry` recording how input-tensor coordinates relate to the
original image, so a task's postprocess can map boxes back:
    x_original = (x_input - pad_x) / scale_x        (likewise y)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from service.cards import ModelCard, Preprocess
from service.images import DecodedImage

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


@dataclass(frozen=True)
class Geometry:
    """How one image sits inside the input tensor.

    original: (width, height) of the image as displayed.
    scale: (sx, sy) input pixels per original pixel.
    pad: (px, py) input pixels of padding before the image (letterbox), else (0, 0).
    """

    original: tuple[int, int]
    scale: tuple[float, float]
    pad: tuple[float, float]

    def to_original(self, xyxy: np.ndarray) -> np.ndarray:
        """xyxy: (N, 4) in input pixels -> (N, 4) float32 in original pixels, clipped."""
        sx, sy = self.scale
        px, py = self.pad
        out = np.empty_like(xyxy, dtype=np.float32)
        out[:, 0::2] = (xyxy[:, 0::2] - px) / sx
        out[:, 1::2] = (xyxy[:, 1::2] - py) / sy
        w, h = self.original
        # basic slices are views, so clip really writes into `out`
        np.clip(out[:, 0::2], 0, w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, h, out=out[:, 1::2])
        return out


def _crop_box(
    w: int, h: int, short: int, out_h: int, out_w: int
) -> tuple[float, float, float, float]:
    """Source box that `resize short side to `short`, centre crop out_h x out_w` reads.

    Mirrors torchvision: Resize(short) truncates the long side to int(short * long / short_side),
    CenterCrop rounds its offsets. Resizing only that box never builds the (possibly enormous)
    intermediate image: a 4x4000 strip at short=256 would be 65 megapixels.
    """
    if w <= h:
        rw, rh = short, int(short * h / w)
    else:
        rw, rh = int(short * w / h), short
    left = int(round((rw - out_w) / 2.0))
    top = int(round((rh - out_h) / 2.0))
    sx, sy = rw / w, rh / h
    return (left / sx, top / sy, (left + out_w) / sx, (top + out_h) / sy)


def resize(image: DecodedImage, spec: Preprocess) -> tuple[np.ndarray, Geometry]:
    """-> (H, W, 3) uint8 RGB at the model's input size, and its Geometry."""
    if spec.size is None:
        raise ValueError("resize needs spec.size")
    out_h, out_w = spec.size
    pixels = image.pixels
    ph, pw = pixels.shape[:2]
    dsx, dsy = image.scale  # decoded -> original (JPEG draft)
    pil = Image.fromarray(pixels)
    resample = _RESAMPLE[spec.interpolation]
    if spec.resize == "crop":
        assert spec.resize_short is not None
        box = _crop_box(pw, ph, spec.resize_short, out_h, out_w)
        out = pil.resize((out_w, out_h), resample, box=box)
        sx, sy = out_w / (box[2] - box[0]), out_h / (box[3] - box[1])
        geometry = Geometry(
            (image.width, image.height), (sx / dsx, sy / dsy), (-box[0] * sx, -box[1] * sy)
        )
        return np.asarray(out), geometry
    if spec.resize == "stretch":
        out = pil.resize((out_w, out_h), resample)
        geometry = Geometry(
            (image.width, image.height), (out_w / pw / dsx, out_h / ph / dsy), (0.0, 0.0)
        )
        return np.asarray(out), geometry
    if spec.resize == "letterbox":
        r = min(out_w / pw, out_h / ph)
        nw, nh = max(1, round(pw * r)), max(1, round(ph * r))
        left, top = (out_w - nw) // 2, (out_h - nh) // 2
        if spec.pad_anchor == "top-left":
            left, top = 0, 0
        canvas = np.full((out_h, out_w, 3), spec.pad_value, dtype=np.uint8)
        canvas[top : top + nh, left : left + nw] = np.asarray(pil.resize((nw, nh), resample))
        geometry = Geometry(
            (image.width, image.height), (nw / pw / dsx, nh / ph / dsy), (float(left), float(top))
        )
        return canvas, geometry
    raise ValueError(f"resize mode {spec.resize!r} is done inside the graph")


def normalize_into(out: np.ndarray, pixels: np.ndarray, spec: Preprocess) -> None:
    """Write (pixels * scale - mean) / std into `out` (one image of the batch tensor).

    pixels: (H, W, 3) uint8 RGB. out: (3, H, W) for NCHW or (H, W, 3) for NHWC, float32.
    mean/std are in `channel_order`, as the card states them.
    """
    src = pixels[..., ::-1] if spec.channel_order == "BGR" else pixels
    gain = np.asarray(spec.scale, np.float32) / np.asarray(spec.std, np.float32)
    bias = np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        np.multiply(src.transpose(2, 0, 1), gain[:, None, None], out=out, casting="unsafe")
        out -= bias[:, None, None]
    else:
        np.multiply(src, gain, out=out, casting="unsafe")
        out -= bias


def to_batch(images: Sequence[DecodedImage], spec: Preprocess) -> tuple[np.ndarray, list[Geometry]]:
    """N decoded images -> (N, 3, H, W) (or NHWC) float32 tensor and N Geometry records."""
    if spec.size is None:
        raise ValueError("to_batch needs spec.size")
    h, w = spec.size
    shape = (len(images), 3, h, w) if spec.layout == "NCHW" else (len(images), h, w, 3)
    batch = np.empty(shape, dtype=np.float32)
    geometries = []
    for i, image in enumerate(images):
        pixels, geometry = resize(image, spec)
        normalize_into(batch[i], pixels, spec)
        geometries.append(geometry)
    return batch, geometries


def needed_side(card: ModelCard) -> int | None:
    """The smallest source side that still feeds the model at full resolution (JPEG draft)."""
    spec = card.preprocess
    if spec.resize == "crop":
        return spec.resize_short
    if spec.size is not None:
        return max(spec.size)
    return None
