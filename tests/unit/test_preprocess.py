"""Card-driven preprocessing (resize/crop/letterbox/normalise) and classification top-k."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from service.cards import Preprocess
from service.images import DecodedImage
from service.preprocess import to_batch
from service.tasks.classify import postprocess
from tests.support.images import noise_image

IMAGENET = Preprocess(
    resize="crop",
    resize_short=256,
    size=(224, 224),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)


def decoded(img: Image.Image) -> DecodedImage:
    arr = np.asarray(img.convert("RGB"))
    return DecodedImage(arr, arr.shape[1], arr.shape[0], "PNG")


def torchvision_reference(img: Image.Image) -> np.ndarray:
    pipeline = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
            T.CenterCrop(224),
            T.PILToTensor(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(IMAGENET.mean, IMAGENET.std),
        ]
    )
    return pipeline(img).numpy()


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (256, 256), (1000, 260), (100, 80)])
def test_crop_matches_torchvision_resize_then_centre_crop(size):
    # smooth content: resampling differences show as noise, geometry errors as large shifts
    w, h = size
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    arr = np.concatenate(
        [np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.full((h, w, 1), 128.0)],
        axis=2,
    ).astype(np.uint8)
    img = Image.fromarray(arr)
    batch, _ = to_batch([decoded(img)], IMAGENET)
    assert batch.shape == (1, 3, 224, 224) and batch.dtype == np.float32
    reference = torchvision_reference(img)
    # in normalised units (1/255/0.225 = 0.0175 per grey level): within ~3 grey levels
    assert np.abs(batch[0] - reference).mean() < 0.02
    assert np.abs(batch[0] - reference).max() < 0.06


def test_extreme_strip_does_not_build_a_huge_intermediate():
    # 4x4000 at short side 256 would be a 256x256000 image; the crop box avoids it
    img = Image.new("RGB", (4, 4000), (200, 100, 50))
    batch, _ = to_batch([decoded(img)], IMAGENET)
    expected = (np.array([200, 100, 50]) / 255 - IMAGENET.mean) / IMAGENET.std
    np.testing.assert_allclose(batch[0, :, 112, 112], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("spec_kw", "expected_rgb_first"),
    [
        ({"channel_order": "RGB"}, True),
        ({"channel_order": "BGR"}, False),
    ],
)
def test_channel_order_and_caffe_style_means(spec_kw, expected_rgb_first):
    spec = Preprocess(resize="stretch", size=(4, 4), scale=1.0, mean=(10.0, 20.0, 30.0), **spec_kw)
    batch, _ = to_batch([decoded(Image.new("RGB", (8, 8), (100, 150, 200)))], spec)
    got = batch[0, :, 0, 0]
    if expected_rgb_first:
        np.testing.assert_allclose(got, [90, 130, 170])
    else:  # BGR: channel 0 is blue; the mean is stated in the card's channel order
        np.testing.assert_allclose(got, [190, 130, 70])


def test_nhwc_layout():
    spec = Preprocess(resize="stretch", size=(5, 6), layout="NHWC")
    batch, _ = to_batch([decoded(noise_image(10, 10))] * 2, spec)
    assert batch.shape == (2, 5, 6, 3)


@pytest.mark.parametrize(
    ("mode", "img_size", "box"),
    [
        ("letterbox", (640, 480), [100, 50, 300, 400]),
        ("letterbox", (300, 900), [10, 10, 290, 890]),
        ("stretch", (640, 480), [0, 0, 640, 480]),
        ("crop", (640, 480), [200, 150, 400, 300]),
    ],
)
def test_geometry_maps_boxes_back_to_original_pixels(mode, img_size, box):
    spec = Preprocess(resize=mode, size=(416, 416), resize_short=416)
    _, (geometry,) = to_batch([decoded(noise_image(*img_size))], spec)
    sx, sy = geometry.scale
    px, py = geometry.pad
    into = np.array([[box[0] * sx + px, box[1] * sy + py, box[2] * sx + px, box[3] * sy + py]])
    np.testing.assert_allclose(geometry.to_original(into)[0], box, atol=1e-3)


def test_letterbox_pads_with_card_value_and_centres():
    spec = Preprocess(resize="letterbox", size=(100, 100), scale=1.0, pad_value=114)
    batch, (geometry,) = to_batch([decoded(Image.new("RGB", (200, 100), (0, 0, 0)))], spec)
    assert geometry.pad == (0.0, 25.0)
    assert batch[0, 0, 10, 50] == 114 and batch[0, 0, 50, 50] == 0 and batch[0, 0, 90, 50] == 114


@pytest.mark.parametrize(
    ("logits", "k", "activation", "ids", "scores"),
    [
        ([[0.0, 0.0, np.log(2.0)]], 2, "softmax", [2, 0], [0.5, 0.25]),
        ([[1.0, 3.0, 2.0]], 5, "none", [1, 2, 0], [3.0, 2.0, 1.0]),
        ([[0.0, 100.0, -100.0]], 1, "sigmoid", [1], [1.0]),
        ([[5.0, 5.0, 1.0]], 2, "none", [0, 1], [5.0, 5.0]),  # ties: lower id first
    ],
)
def test_top_k(logits, k, activation, ids, scores):
    (pred,) = postprocess(np.asarray(logits, np.float32), k, activation)
    assert pred.class_id.tolist() == ids
    np.testing.assert_allclose(pred.score, scores, rtol=1e-6)


def test_top_k_is_per_row_for_a_batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 1000)).astype(np.float32)
    preds = postprocess(logits, 5, "softmax")
    for row, pred in zip(logits, preds, strict=True):
        assert pred.class_id.tolist() == np.argsort(-row)[:5].tolist()


def test_geometry_clips_boxes_to_the_image():
    spec = Preprocess(resize="letterbox", size=(100, 100))
    _, (geometry,) = to_batch([decoded(noise_image(200, 100))], spec)
    # a box spilling into the top padding and past the right edge
    out = geometry.to_original(np.array([[-10.0, 0.0, 120.0, 60.0]], np.float32))[0]
    assert out[0] == 0 and out[1] == 0 and out[2] == 200
    assert 0 < out[3] < 100
