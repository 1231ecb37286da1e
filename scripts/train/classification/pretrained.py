"""Pretrained backbone weights as the trainer takes them, from whichever source
(weights.resolve: the registry, torchvision's cache, a file; vgg16_keras: the Keras VGG16)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from scripts.export.classifier import IMAGENET_PREPROCESS

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Pretrained:
    """state_dict: keys of `GapClassifier.features` (no "features." prefix).
    preprocess: the card preprocess dict these weights were trained with (size may be
    overridden by the caller). description / licence: written into the model card."""

    state_dict: StateDict | None
    description: str
    licence: str = "unknown"
    preprocess: dict[str, Any] = field(default_factory=lambda: dict(IMAGENET_PREPROCESS))
