"""A tiny Mask R-CNN whose answers are known: random weights except its class-1 predictors, so
every detection is class 1 ("circle") with a score near 0.86 and every mask probability is
~0.95 (each pasted mask fills its box)."""

from __future__ import annotations

from pathlib import Path

LABELS = ["__background__", "circle", "square", "triangle"]


def tiny_maskrcnn():
    import torch

    from scripts.train.segmentation.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        "mobilenet_v2_fpn",
        len(LABELS),
        min_size=128,
        max_size=192,
        fpn_channels=16,
    )
    model = build_model(cfg).eval()
    with torch.no_grad():
        # "circle" wins every box (softmax ~0.86); the weight spreads the scores apart, so
        # torch and onnxruntime cannot order near-ties differently
        model.roi_heads.box_predictor.cls_score.weight[1] *= 300
        model.roi_heads.box_predictor.cls_score.bias[1] = 4.0
        model.roi_heads.mask_predictor.mask_fcn_logits.bias[1] = 3.0  # sigmoid ~0.95
    return model, cfg


def export_tiny_segmenter(out: Path) -> Path:
    """`tiny-seg` in `out`, written by scripts/export/maskrcnn.py (its parity check included)."""
    from scripts.export.maskrcnn import export_segmenter

    model, cfg = tiny_maskrcnn()
    export_segmenter(
        model,
        cfg,
        name="tiny-seg",
        labels=LABELS,
        out_dir=out,
        source={"weights": "random except two biases (tests only)"},
    )
    return out
