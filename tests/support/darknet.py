"""A tiny Darknet YOLO written here as a cfg (every layer type the reader supports), with random
weights: the subject of the Darknet reader's tests and the source of the `tiny-yolo` fixture."""

from __future__ import annotations

import torch

from scripts.export.darknet import Darknet, parse_cfg

ANCHORS = "4,5, 8,10, 12,14, 20,24, 30,28, 50,60"
LABELS = ["apple", "banana", "cherry"]


def section(kind: str, **options: object) -> str:
    """One cfg section: `[kind]`, then a `key=value` line per option, in order."""
    return "\n".join([f"[{kind}]", *(f"{k}={v}" for k, v in options.items())]) + "\n"


def conv(filters: int, size: int = 3, stride: int = 1, *, bn: bool = True,
         activation: str = "leaky") -> str:  # fmt: skip
    norm = {"batch_normalize": 1} if bn else {}
    return section("convolutional", **norm, filters=filters, size=size, stride=stride, pad=1,
                   activation=activation)  # fmt: skip


def yolo(mask: str) -> str:
    return section("yolo", mask=mask, anchors=ANCHORS, classes=3, num=6)


# 64x64 input, 3 classes. Heads at stride 8 (8x8) and stride 4 (16x16): 3 * (64 + 256) = 960
# anchors. Uses convolutional (with and without BN, 3x3 stride 2), maxpool (stride 2 and the
# size-2 stride-1 one), shortcut, route (one layer and a concat), upsample and yolo.
TINY_CFG = "\n".join(
    [
        section("net", width=64, height=64, channels=3),
        conv(8),
        section("maxpool", size=2, stride=2),
        conv(16),
        conv(16, size=1),
        section("shortcut", **{"from": -2}, activation="linear"),
        section("maxpool", size=2, stride=2),
        conv(32, stride=2),
        section("maxpool", size=2, stride=1),
        conv(24, size=1, bn=False, activation="linear"),
        yolo("3,4,5"),
        section("route", layers=-3),
        conv(8, size=1),
        section("upsample", stride=2),
        section("route", layers="-1, 5"),
        conv(24, size=1, bn=False, activation="linear"),
        yolo("0,1,2"),
    ]
)


def randomized(seed: int = 0) -> Darknet:
    """The tiny network with every parameter random, BN running stats included."""
    torch.manual_seed(seed)
    model = Darknet(parse_cfg(TINY_CFG)).eval()
    with torch.no_grad():
        for conv_, norm in model.convs:
            conv_.weight.normal_(0, 0.1)
            if conv_.bias is not None:
                conv_.bias.normal_(0, 0.5)
            if norm is not None:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_(0, 0.2)
                norm.running_mean.normal_(0, 0.2)
                norm.running_var.uniform_(0.5, 2.0)
    return model
