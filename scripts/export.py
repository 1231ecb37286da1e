"""Export a trained PyTorch model to ONNX + model card, ready for the service.

    python -m scripts.export classify --arch resnet50 --checkpoint my.pt --labels labels.txt \
        --name my-classifier
    python -m scripts.export classify --checkpoint runs/cats/best.pt --name cats   # fine-tune ckpt

Every export checks the graph (`onnx.checker`) and compares onnxruntime against PyTorch; the
figure is printed and written into the card. The folder is replaced atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/export.py`: make `scripts.` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _classify(args: argparse.Namespace) -> None:
    import torch

    from scripts.exporters.classify import (
        IMAGENET_PREPROCESS,
        build_classifier,
        export_classifier,
        imagenet_labels,
        load_checkpoint,
    )

    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint else {}
    arch = ckpt.get("arch", args.arch)
    if not arch:
        raise SystemExit("--arch is required when the checkpoint does not name one")
    labels: list[str] | None = ckpt.get("labels")
    if args.labels:
        labels = [ln.strip() for ln in args.labels.read_text().splitlines() if ln.strip()]
    head = ckpt.get("head", {"type": args.head, "hidden": args.hidden})
    if labels is None:
        if "state_dict" in ckpt:
            # a stock torchvision state_dict: class count from its last layer
            num = next(v.shape[0] for k, v in reversed(ckpt["state_dict"].items()) if v.ndim == 2)
        else:
            num = 1000
        labels = imagenet_labels() if num == 1000 else [f"class_{i}" for i in range(num)]
    model = build_classifier(
        arch, len(labels), head=head.get("type", "torchvision"), hidden=head.get("hidden", 0)
    )
    if "state_dict" in ckpt:
        model.load_state_dict(ckpt["state_dict"], strict=True)
        weights = str(args.checkpoint)
    elif args.random:
        torch.manual_seed(0)
        weights = "random (for tests and timing only; predictions are meaningless)"
    else:
        raise SystemExit("give --checkpoint (your trained weights) or --random")
    preprocess = ckpt.get("preprocess") or dict(IMAGENET_PREPROCESS)
    if args.size:
        preprocess["size"] = [args.size, args.size]
        preprocess["resize_short"] = round(args.size * 256 / 224)
    export_classifier(
        model,
        name=args.name,
        labels=labels,
        out_dir=args.out,
        preprocess=preprocess,
        source={
            "architecture": f"torchvision {arch}",
            "head": head,
            "weights": weights,
            **ckpt.get("source", {}),
        },
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="task", required=True)

    cls = sub.add_parser("classify", help="ResNet / VGG / MobileNetV2 classifier")
    cls.add_argument(
        "--arch", choices=["resnet18", "resnet34", "resnet50", "vgg16", "vgg16_bn", "mobilenet_v2"]
    )
    cls.add_argument("--checkpoint", type=Path, help="state_dict or fine-tune checkpoint (.pt)")
    cls.add_argument("--labels", type=Path, help="text file, one class name per line")
    cls.add_argument("--head", choices=["torchvision", "gap"], default="torchvision")
    cls.add_argument("--hidden", type=int, default=0, help="hidden units of a gap head")
    cls.add_argument("--size", type=int, help="input side (default 224, crop from 256)")
    cls.add_argument("--random", action="store_true", help="random weights, for timing only")
    cls.add_argument("--name", required=True, help="model name (folder under --out)")
    cls.add_argument("--out", type=Path, default=Path("models"))
    cls.set_defaults(func=_classify)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
