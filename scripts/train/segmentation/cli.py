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
import time
from pathlib import Path

from scripts import hotload
from scripts.train import config_from
from scripts.train.segmentation.models import ARCHS
from scripts.train.segmentation.train import Config, run


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
    hotload.add_arguments(p)
    return p


def config_for(args: argparse.Namespace) -> Config:
    """The training run the parsed arguments ask for (their defaults repeat Config's:
    tests/unit/test_trainer_defaults.py keeps them equal)."""
    return config_from(Config, args)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.load_into and not args.export:
        p.error("--load-into needs --export NAME")
    started = time.perf_counter()
    trained = run(config_for(args))
    if trained.model_dir is not None:
        hotload.after_export(args, args.export, trained.model_dir)
    result = trained.result
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    return 130 if result.interrupted else 0
