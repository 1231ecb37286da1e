"""images.decode: every odd-but-valid image becomes the right RGB pixels; every bad upload gets
the right named error before any large allocation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from service.images import decode
from tests.support.images import (
    animated_gif,
    encode,
    exif_rotated_jpeg,
    noise_image,
    png_header_only,
    sixteen_bit_png,
)

BUDGET = 40_000_000


@pytest.mark.parametrize(
    ("data", "size", "centre_rgb"),
    [
        (encode(Image.new("RGB", (7, 5), (10, 200, 30)), "PNG"), (7, 5), (10, 200, 30)),
        (encode(Image.new("L", (4, 4), 77), "PNG"), (4, 4), (77, 77, 77)),
        (encode(Image.new("1", (4, 4), 1), "BMP"), (4, 4), (255, 255, 255)),
        # palette, with and without transparency
        (encode(Image.new("RGB", (6, 6), (0, 0, 255)).convert("P"), "PNG"), (6, 6), (0, 0, 255)),
        (encode(Image.new("RGBA", (6, 6), (0, 0, 0, 0)), "PNG"), (6, 6), (255, 255, 255)),
        (
            encode(Image.new("RGBA", (6, 6), (200, 0, 0, 255)), "WEBP", lossless=True),
            (6, 6),
            (200, 0, 0),
        ),
        (encode(Image.new("LA", (3, 3), (100, 0)), "PNG"), (3, 3), (255, 255, 255)),
        # CMYK JPEG: pure cyan is (0, 255, 255) in RGB
        (
            encode(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=100),
            (16, 16),
            (0, 255, 255),
        ),
        (encode(Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "TIFF"), (4, 4), (255, 255, 255)),
        # 16-bit greyscale is scaled, not clipped: 65535 -> 255, 32896 -> 128
        (sixteen_bit_png(65535), (5, 6), (255, 255, 255)),
        (sixteen_bit_png(32896), (5, 6), (128, 128, 128)),
        # animated GIF: the first frame (green)
        (animated_gif(), (8, 8), (0, 255, 0)),
        (encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), (1, 1), (1, 2, 3)),
        (encode(Image.new("RGB", (4, 4000), (9, 9, 9)), "PNG"), (4, 4000), (9, 9, 9)),
    ],
    ids=[
        "rgb",
        "grey",
        "1bit-bmp",
        "palette",
        "transparent",
        "webp-alpha",
        "LA",
        "cmyk-jpeg",
        "cmyk-tiff",
        "16bit-max",
        "16bit-mid",
        "gif-first-frame",
        "1x1",
        "4x4000",
    ],
)
def test_decodes_odd_valid_images_to_rgb(data, size, centre_rgb):
    image = decode(data, max_pixels=BUDGET)
    w, h = size
    assert (image.width, image.height) == (w, h)
    assert image.pixels.shape == (h, w, 3) and image.pixels.dtype == np.uint8
    got = image.pixels[h // 2, w // 2].astype(int)
    np.testing.assert_allclose(got, centre_rgb, atol=3)


@pytest.mark.parametrize(
    ("orientation", "size", "left_colour"),
    [
        (1, (40, 20), "red"),  # as stored
        (3, (40, 20), "blue"),  # rotated 180: blue is now on the left
        (6, (20, 40), None),  # rotated 90: portrait
        (8, (20, 40), None),
    ],
)
def test_exif_orientation_is_applied(orientation, size, left_colour):
    image = decode(exif_rotated_jpeg(orientation), max_pixels=BUDGET)
    assert (image.width, image.height) == size
    assert image.pixels.shape[:2] == (size[1], size[0])
    if left_colour:
        r, _, b = image.pixels[size[1] // 2, 2].astype(int)
        assert (r > b) == (left_colour == "red")


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", InvalidImage, "empty"),
        (b"hello, world" * 10, InvalidImage, "not a decodable image"),
        (b"%PDF-1.7\n1 0 obj<<>>endobj", UnsupportedMediaType, "PDF"),
        (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
            UnsupportedMediaType,
            "SVG",
        ),
        (b"<svg width='10' height='10'></svg>", UnsupportedMediaType, "SVG"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", UnsupportedMediaType, "HTML"),
        (encode(noise_image(8, 8), "ICO"), UnsupportedMediaType, "ICO"),
        (encode(noise_image(64, 64), "JPEG")[:300], InvalidImage, "truncated"),
        (encode(noise_image(64, 64), "PNG")[:-40], InvalidImage, "truncated"),
        (png_header_only(100_000, 100_000), ImageTooLarge, "10000.0 megapixels"),
        (png_header_only(7000, 6000), ImageTooLarge, "the limit is 40 megapixels"),
        (png_header_only(0, 10), InvalidImage, ""),
    ],
    ids=[
        "empty",
        "text",
        "pdf",
        "svg-xml",
        "svg",
        "html",
        "ico",
        "truncated-jpeg",
        "truncated-png",
        "bomb-header",
        "over-budget",
        "zero-width",
    ],
)
def test_bad_uploads_raise_named_errors(data, error, words):
    with pytest.raises(error) as info:
        decode(data, max_pixels=BUDGET)
    assert words in str(info.value)


def test_pixel_budget_is_checked_before_decoding():
    # 7000x6000 would need 126 MB decoded; the header check refuses it without allocating.
    with pytest.raises(ImageTooLarge):
        decode(png_header_only(7000, 6000), max_pixels=BUDGET)
    assert decode(encode(noise_image(100, 100), "PNG"), max_pixels=10_000).width == 100


def test_large_jpeg_decodes_at_reduced_scale_keeping_original_size():
    data = encode(noise_image(2000, 1200, seed=1), "JPEG", quality=80)
    full = decode(data, max_pixels=BUDGET)
    small = decode(data, max_pixels=BUDGET, min_side=256)
    assert full.pixels.shape == (1200, 2000, 3)
    # 1200 / 256 = 4.7 -> the largest 1/2^k scale keeping the short side >= 256 is 1/4
    assert small.pixels.shape == (300, 500, 3)
    assert (small.width, small.height) == (2000, 1200)
    assert small.scale == (4.0, 4.0)
