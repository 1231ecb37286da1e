"""Classifier export: torchvision ResNet / VGG / MobileNetV2 (stock or with a global-average-
pooling head, as the fine-tune script trains them) -> ONNX + model card."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from scripts.export.common import check_parity, export_info, to_onnx_bytes, write_model_dir

ARCHS = ("resnet18", "resnet34", "resnet50", "vgg16", "vgg16_bn", "mobilenet_v2")

IMAGENET_PREPROCESS: dict[str, Any] = {
    "resize": "crop",
    "resize_short": 256,
    "size": [224, 224],
    "interpolation": "bilinear",
    "scale": 1 / 255,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "channel_order": "RGB",
    "layout": "NCHW",
}


class GapClassifier(nn.Module):
    """A pretrained convolutional backbone + the transfer-learning head:
    global average pooling -> dropout -> [linear -> ReLU -> dropout] -> linear(num_classes)."""

    def __init__(
        self, features: nn.Module, channels: int, num_classes: int, hidden: int, dropout: float
    ) -> None:
        super().__init__()
        self.features = features
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden or channels, num_classes))
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]


def backbone(arch: str) -> tuple[nn.Module, int]:
    """(convolutional feature extractor of torchvision `arch`, its output channels)."""
    if arch.startswith("resnet"):
        net = getattr(torchvision.models, arch)()
        channels = net.fc.in_features
        return nn.Sequential(*list(net.children())[:-2]), channels
    if arch.startswith("vgg"):
        return getattr(torchvision.models, arch)().features, 512
    if arch == "mobilenet_v2":
        return torchvision.models.mobilenet_v2().features, 1280
    raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")


def build_classifier(
    arch: str,
    num_classes: int,
    *,
    head: str = "torchvision",
    hidden: int = 0,
    dropout: float = 0.2,
) -> nn.Module:
    """head="torchvision": the stock model (its own classifier, resized to num_classes);
    head="gap": `GapClassifier` over the same backbone."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    if head == "torchvision":
        return getattr(torchvision.models, arch)(num_classes=num_classes)  # type: ignore[no-any-return]
    if head == "gap":
        features, channels = backbone(arch)
        return GapClassifier(features, channels, num_classes, hidden, dropout)
    raise ValueError(f"unknown head {head!r}: torchvision | gap")


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names from torchvision's weight metadata (no download)."""
    return list(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Either a fine-tune checkpoint ({"arch", "labels", "state_dict", ...}) or a bare
    state_dict; returns a dict with at least "state_dict"."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj}
    raise ValueError(f"{path}: neither a state_dict nor a fine-tune checkpoint")


def export_classifier(
    model: nn.Module,
    *,
    name: str,
    labels: Sequence[str],
    out_dir: Path,
    preprocess: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    tolerance: float = 1e-3,
    seed: int = 0,
) -> Path:
    """Export `model` (images -> logits) to out_dir/name with its card; returns the folder."""
    pre = dict(preprocess or IMAGENET_PREPROCESS)
    h, w = pre["size"]
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(1, 3, h, w, generator=generator)
    onnx_bytes = to_onnx_bytes(model, example, input_name="input", output_names=["logits"])
    parity = check_parity(
        model, onnx_bytes, torch.randn(2, 3, h, w, generator=generator), tolerance=tolerance
    )
    with torch.no_grad():
        num_classes = int(model(example).shape[1])
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels for a model with {num_classes} outputs")
    card = {
        "schema_version": 1,
        "name": name,
        "task": "classify",
        "version": "1",
        "labels": list(labels),
        "inputs": [
            {
                "name": "input",
                "shape": ["batch", 3, h, w],
                "dtype": "float32",
                "description": "normalised image, NCHW",
            }
        ],
        "outputs": [
            {
                "name": "logits",
                "shape": ["batch", num_classes],
                "dtype": "float32",
                "description": "raw class scores; softmax gives probabilities",
            }
        ],
        "preprocess": pre,
        "postprocess": {"activation": "softmax"},
        "source": source or {},
        "export": export_info(parity),
    }
    folder = write_model_dir(out_dir, name, onnx_bytes, card)
    print(
        f"{name}: ONNX vs torch max |diff| {parity.max_abs_diff:.2e} on batch {parity.batch}"
        f" -> {folder}"
    )
    return folder
