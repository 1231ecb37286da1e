"""Upload bytes -> RGB pixels, safely.

Order matters: identify the format and read the size from the header, check the pixel budget,
only then decode (at reduced scale for large JPEGs when the model needs far fewer pixels).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType

# Formats a camera, phone or browser produces. Anything else Pillow can parse (PSD, EPS, ICO,
# PCX, ...) is refused: each extra parser is attack surface and none is needed for photos.
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF"})

# Formats that clients send by mistake, recognised so the answer can say what was sent.
_FOREIGN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
    (b"<!doctype html", "HTML"),
    (b"<html", "HTML"),
    (b"{", "JSON"),
    (b"PK\x03\x04", "ZIP"),
    (b"\x1f\x8b", "gzip"),
)

# Our own budget check runs first; Pillow's bomb guard stays on as a second line.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodedImage:
    """An upload ready for a task's preprocess.

    pixels: (H, W, 3) uint8 RGB, possibly smaller than the original (JPEG draft decoding).
    width, height: the original image as displayed (EXIF orientation applied), in pixels;
        every coordinate the service returns is in this frame.
    format: the container format Pillow identified, e.g. "JPEG".
    """

    pixels: np.ndarray
    width: int
    height: int
    format: str

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy) that map `pixels` coordinates to original coordinates."""
        return self.width / self.pixels.shape[1], self.height / self.pixels.shape[0]


@dataclass(frozen=True)
class EncodedImage:
    """An upload not decoded yet, with the limits its decode must respect: a task decodes it
    in the same worker thread as its preprocessing (see service.tasks.pipeline)."""

    data: bytes
    max_pixels: int
    min_side: int | None = None

    def decode(self) -> DecodedImage:
        return decode(self.data, max_pixels=self.max_pixels, min_side=self.min_side)


def _sniff_foreign(data: bytes) -> str | None:
    head = data[:256].lstrip().lower()
    for signature, name in _FOREIGN_SIGNATURES:
        if head.startswith(signature.lower()):
            return name
    if b"<svg" in head:
        return "SVG"
    return None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Alpha is composited on white (transparent pixels' colour is
    arbitrary); 16/32-bit integer and float greyscale are scaled into 0..255, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
            arr, top = arr - lo, max(hi - lo, 1e-12)
        grey = np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode(data: bytes, *, max_pixels: int, min_side: int | None = None) -> DecodedImage:
    """Bytes -> DecodedImage.

    max_pixels: width*height budget, checked from the header before any pixel is decoded.
    min_side: the smallest side the model needs; a JPEG much larger than that is decoded at
        1/2, 1/4 or 1/8 scale (never below `min_side` on its short side).
    Raises InvalidImage (400), UnsupportedMediaType (415) or ImageTooLarge (413).
    """
    if not data:
        raise InvalidImage("the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        foreign = _sniff_foreign(data)
        if foreign:
            raise UnsupportedMediaType(
                f"the upload is {foreign}, not an image; send JPEG, PNG, WebP, BMP, TIFF or GIF"
            ) from None
        raise InvalidImage("the upload is not a decodable image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"image exceeds the pixel limit of {max_pixels} pixels") from None
    # Pillow's parsers raise many exception types on hostile headers (SyntaxError, struct.error,
    # ValueError, ...): all of them mean the same thing to the client.
    except Exception as exc:
        raise InvalidImage(f"the image header is corrupt or truncated: {exc}") from None

    with img:
        fmt = img.format or "unknown"
        if fmt not in ALLOWED_FORMATS:
            raise UnsupportedMediaType(
                f"{fmt} images are not accepted; send JPEG, PNG, WebP, BMP, TIFF or GIF"
            )
        w, h = img.size
        if w < 1 or h < 1:
            raise InvalidImage(f"image has no pixels ({w}x{h})")
        if w * h > max_pixels:
            raise ImageTooLarge(
                f"image is {w}x{h} = {w * h / 1e6:.1f} megapixels; "
                f"the limit is {max_pixels / 1e6:g} megapixels"
            )
        try:
            return _decode_pixels(img, fmt, min_side)
        except ImageTooLarge:
            raise
        except Exception as exc:  # truncated data, bad Huffman tables, ...: see above
            raise InvalidImage(f"the image data is corrupt or truncated: {exc}") from None


def _decode_pixels(img: Image.Image, fmt: str, min_side: int | None) -> DecodedImage:
    orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
    swapped = orientation in (5, 6, 7, 8)
    stored_w, stored_h = img.size
    width, height = (stored_h, stored_w) if swapped else (stored_w, stored_h)

    if fmt in ("JPEG", "MPO") and min_side:
        factor = min(stored_w, stored_h) / min_side
        if factor >= 2:
            # draft() picks the largest 1/2^k scale whose result is still >= the request.
            img.draft("RGB", (math.ceil(stored_w / factor), math.ceil(stored_h / factor)))
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img.load()
    if orientation in range(2, 9):  # exif_transpose copies the image even when upright
        img = ImageOps.exif_transpose(img) or img
    rgb = _to_rgb(img)
    pixels = np.asarray(rgb, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvalidImage(f"decoded image has unexpected shape {pixels.shape}")
    return DecodedImage(pixels=pixels, width=width, height=height, format=fmt)
