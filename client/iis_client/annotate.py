"""Draw the service's answers onto the photo with Pillow (for `iis --draw`).

Coordinates in answers are pixels of the image as displayed, so the photo is opened with its
EXIF orientation applied before anything is drawn.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from iis_client.masks import decode_rle
from iis_client.schemas import (
    ClassifyResponse,
    DetectedFace,
    DetectResponse,
    SegmentMask,
    SegmentResponse,
    VerifyFacesResponse,
)

PALETTE = [
    (230, 25, 75), (60, 180, 75), (67, 99, 216), (245, 130, 49), (145, 30, 180),
    (66, 212, 244), (240, 50, 230), (191, 239, 69), (70, 153, 144), (154, 99, 36),
]  # fmt: skip
MASK_ALPHA = 0.5


def colour(i: int) -> tuple[int, int, int]:
    return PALETTE[i % len(PALETTE)]


def open_photo(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def _font(img: Image.Image) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(12, max(img.size) // 40))


def _line(img: Image.Image) -> int:
    return max(2, max(img.size) // 300)


def _tag(draw: ImageDraw.ImageDraw, img: Image.Image, xy: tuple[float, float], text: str,
         fill: tuple[int, int, int], above: bool = True) -> float:  # fmt: skip
    """A filled label above xy (below it at the top edge, or if not `above`); -> its height."""
    font = _font(img)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 3
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, xy[0]), max(0.0, img.width - w))
    y = xy[1] - h if above and xy[1] - h >= 0 else xy[1]
    draw.rectangle((x, y, x + w, y + h), fill=fill)
    draw.text((x + pad - left, y + pad - top), text, fill=(255, 255, 255), font=font)
    return h


def _box(img: Image.Image, box: list[float], fill: tuple[int, int, int], text: str) -> None:
    draw = ImageDraw.Draw(img)
    draw.rectangle(tuple(box), outline=fill, width=_line(img))
    _tag(draw, img, (box[0], box[1]), text, fill)


def mask_array(mask: SegmentMask) -> np.ndarray:
    """Any wire format -> (H, W) bool over the whole image."""
    height, width = mask.size
    if mask.format == "rle" and mask.counts is not None:
        return decode_rle({"size": mask.size, "counts": mask.counts})
    if mask.format == "png" and mask.png_base64 is not None:
        with Image.open(io.BytesIO(base64.b64decode(mask.png_base64))) as png:
            return np.asarray(png.convert("L")) > 127
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in mask.polygons or []:
        draw.polygon(poly, fill=255)
    return np.asarray(canvas) > 127


def draw_classify(img: Image.Image, answer: ClassifyResponse) -> Image.Image:
    draw = ImageDraw.Draw(img)
    y = 0.0
    for i, p in enumerate(answer.predictions):
        y += _tag(draw, img, (0, y), f"{p.label} {100 * p.score:.1f}%", colour(i), False) + 2
    return img


def draw_detect(img: Image.Image, answer: DetectResponse) -> Image.Image:
    for d in answer.detections:
        _box(img, d.box, colour(d.class_id), f"{d.label} {d.score:.2f}")
    return img


def draw_segment(img: Image.Image, answer: SegmentResponse) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32).copy()
    for i, inst in enumerate(answer.instances):
        bits = mask_array(inst.mask)
        if bits.shape != pixels.shape[:2]:
            raise ValueError(f"mask is {bits.shape}, the photo {pixels.shape[:2]}")
        pixels[bits] = (1 - MASK_ALPHA) * pixels[bits] + MASK_ALPHA * np.asarray(colour(i))
    out = Image.fromarray(pixels.round().astype(np.uint8))
    for i, inst in enumerate(answer.instances):
        _box(out, inst.box, colour(i), f"{inst.label} {inst.score:.2f}")
    return out


def _face(img: Image.Image, face: DetectedFace) -> Image.Image:
    _box(img, face.box, (37, 99, 235), f"face {face.score:.2f}")
    draw = ImageDraw.Draw(img)
    r = _line(img) * 2
    for i, (x, y) in enumerate(face.landmarks):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour(i))
    return img


def draw_faces(a: Image.Image, b: Image.Image, answer: VerifyFacesResponse) -> Image.Image:
    """Both photos side by side (same height) under a verdict banner."""
    a, b = _face(a, answer.faces.a), _face(b, answer.faces.b)
    height = min(a.height, b.height, 1024)
    a = a.resize((round(a.width * height / a.height), height))
    b = b.resize((round(b.width * height / b.height), height))
    banner = max(40, height // 12)
    out = Image.new("RGB", (a.width + b.width, height + banner), (255, 255, 255))
    out.paste(a, (0, banner))
    out.paste(b, (a.width, banner))
    verdict = "Same person" if answer.verified else "Different people"
    text = (
        f"{verdict}: {answer.metric} similarity {answer.similarity:.3f}, "
        f"distance {answer.distance:.3f}, threshold {answer.threshold}"
    )
    fill = (21, 128, 61) if answer.verified else (180, 35, 24)
    draw = ImageDraw.Draw(out)
    size = banner // 2
    font = ImageFont.load_default(size=size)
    while size > 10 and draw.textlength(text, font=font) > out.width - 20:  # fit the width
        size -= 2
        font = ImageFont.load_default(size=size)
    draw.text((10, (banner - size) // 2), text, fill=fill, font=font)
    return out
