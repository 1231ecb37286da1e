"""Train a Siamese face-embedding tower with triplet loss, calibrate its threshold, export it.

    # folder-per-identity face crops (DATA/<person>/<photo>.jpg), aligned like the service does:
    python -m scripts train-faces align RAW_PHOTOS DATA --detector models/yunet-2023mar
    python -m scripts train-faces train DATA --name my-faces --epochs 30
    python -m scripts train-faces toy /tmp/toy-faces      # a tiny generated dataset

One shared CNN tower embeds anchor, positive and negative; batches hold P identities x K images
and each anchor-positive pair is matched with a semi-hard negative (FaceNet): the closest
negative that is still farther than the positive, else the farthest negative. Identities held
out of training give the pairs the cosine threshold is calibrated on (the accuracy-maximising
one, and the one at a target false-accept rate); ROC AUC is reported and written to the card.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scripts import hotload
from scripts.train import config_from
from scripts.train.similarity.data import align_dataset, make_toy_dataset
from scripts.train.similarity.train import Config, TrainResult, run


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train, calibrate and export a tower")
    t.add_argument("data", type=Path, help="folder of <identity>/<image> face crops")
    t.add_argument("--name", required=True, help="model name (folder under --out)")
    t.add_argument("--out", type=Path, default=Path("models"))
    t.add_argument("--checkpoint", type=Path, help="default runs/<name>/tower.pt")
    t.add_argument("--arch", choices=["small", "mobilenet_v2"], default="small")
    t.add_argument("--pretrained", type=Path, help="torchvision mobilenet_v2 state_dict")
    t.add_argument("--size", type=int, default=112, help="input side of the aligned crop")
    t.add_argument("--dim", type=int, default=128)
    t.add_argument("--width", type=int, default=32, help="channels of the small tower")
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--steps", type=int, default=0, help="batches per epoch (0: one pass)")
    t.add_argument("--pk", type=int, nargs=2, default=[8, 4], metavar=("P", "K"))
    t.add_argument("--margin", type=float, default=0.2)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--val-fraction", type=float, default=0.2)
    t.add_argument("--target-far", type=float, default=0.01)
    t.add_argument("--threshold", choices=["accuracy", "far"], default="accuracy")
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    hotload.add_arguments(t)

    a = sub.add_parser("align", help="raw photos -> aligned crops for training")
    a.add_argument("raw", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--detector", type=Path, default=Path("models/yunet-2023mar"))
    a.add_argument("--size", type=int, default=112)

    y = sub.add_parser("toy", help="write a tiny generated dataset")
    y.add_argument("out", type=Path)
    y.add_argument("--identities", type=int, default=10)
    y.add_argument("--per-identity", type=int, default=6)
    y.add_argument("--size", type=int, default=32)

    return parser


def config_for(args: argparse.Namespace) -> Config:
    """The training run `train`'s parsed arguments ask for (their defaults repeat Config's:
    tests/unit/test_trainer_defaults.py keeps them equal)."""
    return config_from(Config, args, pk=tuple(args.pk))


def main(argv: list[str] | None = None) -> TrainResult | None:
    args = parser().parse_args(argv)
    if args.command == "train":
        result = run(config_for(args))
        hotload.after_export(args, args.name, result.model_dir)
        return result
    if args.command == "align":
        print(f"{align_dataset(args.raw, args.out, args.detector, args.size)} crops written")
    else:
        make_toy_dataset(args.out, args.identities, args.per_identity, args.size)
        print(f"toy dataset in {args.out}")
    return None
