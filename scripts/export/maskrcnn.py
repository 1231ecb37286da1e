"""Mask R-CNN export: torchvision Mask R-CNN (MobileNetV2-FPN, ResNet-50-FPN, ResNet-50-FPN v2)
-> ONNX with a dynamic image size + model card.

The graph keeps torchvision's resize and normalisation and stops before the full-resolution
mask paste: it returns boxes, labels, scores and each detection's M x M mask probabilities
(`MaskRCNNOutputs`); the service pastes only the instances it keeps.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torchvision.models.detection import MaskRCNN

from scripts.export.common import OPSET, Parity, export_info, write_model_dir
from scripts.train.segmentation.models import MaskRCNNOutputs, ModelConfig, build_model, coco_labels

INPUT = "images"
OUTPUTS = ("boxes", "labels", "scores", "mask_probs")
CHECKPOINT_FORMAT = "iis-maskrcnn/1"


def to_onnx_bytes(model: MaskRCNN, example: torch.Tensor, opset: int = OPSET) -> bytes:
    """Trace `MaskRCNNOutputs(model)` on example (1, 3, H, W); height, width and the number of
    detections are dynamic. The batch axis is fixed at 1 (torchvision's exportable path takes
    one image), which the service reads as max_batch 1."""
    wrapper = MaskRCNNOutputs(model).eval()
    n = {1: "detections"}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about torchvision's shape arithmetic
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            opset_version=opset,
            dynamo=False,
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes={INPUT: {2: "height", 3: "width"}} | {name: n for name in OUTPUTS},
        )
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    return data


def _settled(
    scores: np.ndarray, min_score: float, max_detections: int, margin: float
) -> np.ndarray:
    """(N,) bool: detections whose presence cannot hinge on float rounding. A score within
    `margin` of the graph's score threshold, or of the lowest kept score when the graph hit
    its detection limit, may be in one runtime's answer and not the other's."""
    cut = min_score
    if scores.shape[0] >= max_detections and scores.size:
        cut = max(cut, float(scores.min()))
    out: np.ndarray = scores >= cut + margin
    return out


def check_parity(
    model: MaskRCNN,
    onnx_bytes: bytes,
    images: Sequence[torch.Tensor],
    *,
    tolerance: float,
    min_score: float = 0.0,
    max_detections: int = 100,
    margin: float = 0.01,
) -> tuple[Parity, dict[str, float | int]]:
    """Run each (1, 3, H, W) image (sizes may differ: the size is dynamic) through PyTorch and
    onnxruntime: every settled detection (see `_settled`) of either runtime has one of its
    label in the other whose box (pixels), score and mask probabilities are within
    `tolerance`. Detections are paired by box, not by position: scores that tie to 1e-7 may
    sort differently in the two runtimes. -> (Parity, per-output worst differences, count)."""
    wrapper = MaskRCNNOutputs(model).eval()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    detail: dict[str, float | int] = {"boxes_px": 0.0, "scores": 0.0, "mask_probs": 0.0}
    compared = 0
    for image in images:
        with torch.no_grad():
            want = [t.numpy()[0] for t in wrapper(image)]
        got = [o[0] for o in session.run(list(OUTPUTS), {INPUT: image.numpy()})]
        size = tuple(image.shape[-2:])
        for a, b, names in ((want, got, ("torch", "onnx")), (got, want, ("onnx", "torch"))):
            boxes, labels, scores, masks = a
            b_boxes, b_labels, b_scores, b_masks = b
            for i in np.flatnonzero(_settled(scores, min_score, max_detections, margin)):
                box_diff = np.abs(b_boxes - boxes[i]).max(axis=1, initial=0.0)
                box_diff[b_labels != labels[i]] = np.inf
                if not box_diff.size or not box_diff.min() <= tolerance:
                    raise RuntimeError(
                        f"at {size}: {names[0]}'s detection {i} (label {labels[i]}, score "
                        f"{scores[i]:.4f}) has no counterpart in {names[1]} within {tolerance:g}"
                    )
                j = int(np.argmin(box_diff))
                compared += names[0] == "torch"
                detail["boxes_px"] = max(detail["boxes_px"], float(box_diff[j]))
                score_diff = abs(float(b_scores[j]) - float(scores[i]))
                detail["scores"] = max(detail["scores"], score_diff)
                mask_diff = float(np.abs(b_masks[j] - masks[i]).max())
                detail["mask_probs"] = max(detail["mask_probs"], mask_diff)
    worst = max(float(v) for v in detail.values())
    if not worst <= tolerance:
        raise RuntimeError(f"onnxruntime differs from torch by {detail} > {tolerance:g}")
    detail["detections"] = compared
    return Parity(max_abs_diff=worst, batch=len(images), tolerance=tolerance), detail


def card_for(
    cfg: ModelConfig,
    *,
    name: str,
    labels: Sequence[str],
    parity: Parity,
    parity_sizes: Sequence[tuple[int, int]],
    parity_detail: Mapping[str, float | int],
    source: Mapping[str, Any],
) -> dict[str, Any]:
    mask = 28  # torchvision's mask head output (14x14 RoIAlign, one 2x deconvolution)
    return {
        "schema_version": 1,
        "name": name,
        "task": "segment",
        "version": "1",
        "labels": list(labels),
        "inputs": [
            {
                "name": INPUT,
                "shape": [1, 3, "height", "width"],
                "dtype": "float32",
                "description": "one RGB image, 0..1, NCHW, any size; resize and ImageNet "
                "normalisation happen inside the graph",
            }
        ],
        "outputs": [
            {
                "name": "boxes",
                "shape": [1, "detections", 4],
                "description": "x1, y1, x2, y2 in input-tensor pixels",
            },
            {
                "name": "labels",
                "shape": [1, "detections"],
                "dtype": "int64",
                "description": "index into labels (0 is the background, never output)",
            },
            {"name": "scores", "shape": [1, "detections"], "description": "0..1, best first"},
            {
                "name": "mask_probs",
                "shape": [1, "detections", mask, mask],
                "description": "per-detection mask probabilities over its box (own class); "
                "the service pastes them into the image",
            },
        ],
        "preprocess": {
            "resize": "none-in-graph",
            "scale": 1 / 255,
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
            "channel_order": "RGB",
            "layout": "NCHW",
        },
        "postprocess": {
            "min_size": cfg.min_size,
            "max_size": cfg.max_size,
            "mask_size": mask,
            "in_graph": {
                "resize": f"shorter side to {cfg.min_size}, longer at most {cfg.max_size}, "
                "bilinear",
                "normalise": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                "score_threshold": cfg.box_score_thresh,
                "nms_iou": cfg.box_nms_thresh,
                "max_detections": cfg.detections_per_img,
            },
        },
        "source": {"config": cfg.to_dict(), **source},
        "export": export_info(
            parity,
            parity_sizes=[list(s) for s in parity_sizes],
            parity_detail=dict(parity_detail),
        ),
    }


def export_segmenter(
    model: MaskRCNN,
    cfg: ModelConfig,
    *,
    name: str,
    labels: Sequence[str],
    out_dir: Path,
    source: Mapping[str, Any],
    parity_images: Sequence[torch.Tensor] | None = None,
    tolerance: float = 0.05,
    seed: int = 0,
) -> Path:
    """Export to out_dir/name (model.onnx + model.json); returns the folder.

    parity_images: (1, 3, H, W) images for the ONNX-vs-PyTorch check (default: two random
    images of different sizes; trained models find nothing in noise, so pass real ones).
    tolerance: in each output's own units: box pixels, scores and mask probabilities (a
        ResNet-50 graph differs from torch by ~0.02 px on boxes).
    """
    if len(labels) != cfg.num_classes:
        raise ValueError(f"{len(labels)} labels for a model with {cfg.num_classes} classes")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    example = torch.rand(1, 3, 240, 320, generator=generator)
    onnx_bytes = to_onnx_bytes(model, example)
    images = list(parity_images or [])
    if not images:
        images = [torch.rand(1, 3, h, w, generator=generator) for h, w in ((480, 640), (300, 200))]
    parity, detail = check_parity(
        model,
        onnx_bytes,
        images,
        tolerance=tolerance,
        min_score=cfg.box_score_thresh,
        max_detections=cfg.detections_per_img,
    )
    compared = int(detail["detections"])
    if compared == 0:
        print(
            f"{name}: warning: no detection in the parity images, so only the graph ran; "
            "pass images with objects in them"
        )
    sizes = [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
    card = card_for(
        cfg,
        name=name,
        labels=labels,
        parity=parity,
        parity_sizes=sizes,
        parity_detail=detail,
        source=source,
    )
    folder = write_model_dir(out_dir, name, onnx_bytes, card)
    print(
        f"{name}: ONNX vs torch max |diff| {parity.max_abs_diff:.2e} over {compared} "
        f"detections in {len(images)} images "
        f"({', '.join(f'{h}x{w}' for h, w in sizes)}), "
        f"{len(onnx_bytes) / 1e6:.1f} MB -> {folder}"
    )
    return folder


def load_checkpoint(path: Path, arch: str | None) -> dict[str, Any]:
    """A scripts/train/segmentation/cli.py checkpoint, or a bare torchvision Mask R-CNN state_dict
    (e.g. COCO weights for maskrcnn_resnet50_fpn: give `arch`). -> {"config": ModelConfig,
    "labels", "state_dict", "source"}."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return {
            "config": ModelConfig.from_dict(obj["config"]),
            "labels": list(obj["labels"]),
            "state_dict": obj["state_dict"],
            "source": dict(obj.get("source", {})),
        }
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if arch is None or arch == "mobilenet_v2_fpn":
            raise ValueError(
                f"{path} is a bare state_dict: say which torchvision model it is with "
                "--arch maskrcnn_resnet50_fpn or maskrcnn_resnet50_fpn_v2"
            )
        num_classes = int(obj["roi_heads.box_predictor.cls_score.weight"].shape[0])
        labels = coco_labels() if num_classes == 91 else [f"class_{i}" for i in range(num_classes)]
        if num_classes != 91:
            labels[0] = "__background__"
        return {
            # torchvision's own inference settings for these weights
            "config": ModelConfig(
                arch=arch,
                num_classes=num_classes,
                min_size=800,
                max_size=1333,
                rpn_pre_nms_top_n_test=1000,
                rpn_post_nms_top_n_test=1000,
            ),
            "labels": labels,
            "state_dict": obj,
            "source": {"weights": str(path)},
        }
    raise ValueError(f"{path}: neither a train_segmenter checkpoint nor a state_dict")


def read_image(path: Path) -> torch.Tensor:
    """An image file -> (1, 3, H, W) RGB 0..1, as the service feeds the graph."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        pixels = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255


def build_from_checkpoint(ckpt: Mapping[str, Any], cfg: ModelConfig) -> MaskRCNN:
    model = build_model(cfg)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval()
