"""Fine-tune a pretrained classifier on a folder of labelled photos and export it for the service.

    python -m scripts train-classifier photos/ --name flowers          # auto strategy, MobileNetV2
    python -m scripts train-classifier photos/ --name flowers --strategy partial --unfreeze 3
    python -m scripts train-classifier photos/ --name flowers --resume # continue after Ctrl-C

photos/ holds one sub-folder per class (split 80/20 here), or train/ and val/ with one
sub-folder per class each. Writes runs/<name>/ (best.pt, last.pt, summary.json, confusion.png,
curves.png) and models/<name>/ (model.onnx + model.json), then prints the call that hot-loads it
into a running service (--load-into URL makes it), after which
`curl -F image=@x.jpg 'localhost:8000/classify?model=<name>'`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from scripts import hotload
from scripts.constants import ROOT
from scripts.train import config_from

if TYPE_CHECKING:  # torch at import time would slow --help
    from scripts.train.classification.train import Config

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # as service/cards.py requires


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("data", type=Path, help="ImageFolder: class folders, or train/ and val/")
    p.add_argument("--name", required=True, help="model name: models/<name>, ?model=<name>")
    p.add_argument(
        "--arch",
        default="mobilenet_v2",
        choices=["mobilenet_v2", "resnet18", "resnet34", "resnet50", "vgg16", "vgg16_bn"],
    )
    p.add_argument(
        "--weights",
        default="auto",
        help="auto | registry | torchvision | none | PATH to a .pt/.pth (default auto: the "
        "registry-bundled ImageNet weights for mobilenet_v2, else torchvision's local cache)",
    )
    p.add_argument(
        "--strategy", default="auto", choices=["auto", "feature-extraction", "partial", "full"]
    )
    p.add_argument("--unfreeze", type=int, help="partial: how many last blocks train")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=1e-3, help="head learning rate")
    p.add_argument("--backbone-lr-mult", type=float, default=0.1, help="backbone lr = lr x this")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--schedule", choices=["cosine", "step"], default="cosine")
    p.add_argument("--patience", type=int, default=5, help="early stop after N flat epochs")
    p.add_argument("--hidden", type=int, default=256, help="head hidden units (0: linear)")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--size", type=int, default=224, help="input side; resize to size*256/224")
    p.add_argument("--val-split", type=float, default=0.2, help="with one folder per class")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--no-flip", action="store_true", help="for text, digits, handedness")
    p.add_argument(
        "--balance",
        choices=["auto", "on", "off"],
        default="auto",
        help="class-balanced sampling (auto: when classes differ by > 1.5x)",
    )
    p.add_argument(
        "--cache-views",
        type=int,
        default=4,
        help="augmented views per image kept of the frozen activations",
    )
    p.add_argument("--cache-mb", type=int, default=2048, help="0: never cache activations")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "auto"],
        default="fp32",
        help="bf16: bfloat16 autocast, about 2x faster on CPUs with AVX512-BF16 or AMX and "
        "slower without; auto: bf16 where the CPU has it. The exported ONNX is fp32 either way",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    p.add_argument("--run-dir", type=Path, help="default runs/<name>")
    p.add_argument(
        "--models-dir", type=Path, default=ROOT / "models", help="default: this checkout's models/"
    )
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    hotload.add_arguments(p)
    args = p.parse_args(argv)
    if args.load_into and args.no_export:
        p.error("--load-into needs the export: drop --no-export")
    if not NAME.match(args.name):
        p.error(f"--name {args.name!r}: letters, digits, '.', '_', '-'; 64 characters at most")
    return args


def config_for(args: argparse.Namespace) -> Config:
    """The training run the parsed arguments ask for. The defaults above repeat Config's so that
    `--help` needs no torch; tests/unit/test_trainer_defaults.py keeps them equal."""
    from scripts.train.classification.loop import LoopConfig
    from scripts.train.classification.train import Config

    return config_from(
        Config,
        args,
        val_fraction=args.val_split,
        augment=not args.no_augment,
        flip=not args.no_flip,
        export=not args.no_export,
        loop=config_from(LoopConfig, args, skip={"balanced", "precision"}),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # Idle OpenMP threads sleep instead of spinning: on a CPU shared with other work, spinning
    # threads made training steps up to 10x slower here. Only effective before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from scripts.train.classification import FinetuneError
    from scripts.train.classification.train import run

    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        summary = run(config_for(args))
    except FinetuneError as exc:  # bad folder, weights, settings: a sentence, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "exported" in summary:
        hotload.after_export(args, args.name, Path(summary["exported"]))
    return 0
