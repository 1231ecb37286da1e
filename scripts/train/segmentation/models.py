"""Mask R-CNN builders shared by training and export.

Three architectures:
- `mobilenet_v2_fpn`: the light CPU model. MobileNetV2 (ImageNet weights from the registry, see
  MODELS.md section 1) + a 3-level FPN; narrower heads than torchvision's defaults so it trains
  in minutes on two cores and exports to ~30 MB.
- `maskrcnn_resnet50_fpn`, `maskrcnn_resnet50_fpn_v2`: torchvision's, for users who have COCO
  weights (a checkpoint path; nothing is downloaded).

Every model resizes (shorter side to `min_size`, longer at most `max_size`) and normalises with
ImageNet mean/std inside its own graph, so the service only feeds RGB in 0..1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

ARCHS = ("mobilenet_v2_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")

# MobileNetV2 `features` blocks: index -> (output channels, stride). FPN taps strides 8/16/32.
_MBV2_TAPS = {"6": "0", "13": "1", "18": "2"}
_MBV2_CHANNELS = [32, 96, 1280]
# Blocks from the top of `features` that `trainable_layers` unfreezes, in stage order.
_MBV2_STAGES = [18, 17, 14, 11, 7, 4, 2, 1, 0]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved in checkpoints and cards.

    num_classes counts the background (class 0), as torchvision does.
    """

    arch: str
    num_classes: int
    min_size: int = 320
    max_size: int = 544
    fpn_channels: int = 128  # mobilenet_v2_fpn only
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    detections_per_img: int = 100
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 100

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _common_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return {
        "min_size": cfg.min_size,
        "max_size": cfg.max_size,
        "box_score_thresh": cfg.box_score_thresh,
        "box_nms_thresh": cfg.box_nms_thresh,
        "box_detections_per_img": cfg.detections_per_img,
        "rpn_pre_nms_top_n_test": cfg.rpn_pre_nms_top_n_test,
        "rpn_post_nms_top_n_test": cfg.rpn_post_nms_top_n_test,
    }


def mobilenet_v2_maskrcnn(
    cfg: ModelConfig,
    backbone_state: Mapping[str, torch.Tensor] | None = None,
    trainable_layers: int = 9,
) -> MaskRCNN:
    """MobileNetV2-FPN Mask R-CNN (the construction tested in MODELS.md section 4).

    backbone_state: torchvision mobilenet_v2 ImageNet state_dict (classifier keys ignored).
    trainable_layers: how many MobileNetV2 stages, from the top, are trained (0..9); the others
        are frozen. BatchNorm is always frozen: detection batches are too small for its
        statistics.
    """
    net = torchvision.models.mobilenet_v2(norm_layer=FrozenBatchNorm2d)
    if backbone_state is not None:
        features_state = {k: v for k, v in backbone_state.items() if k.startswith("features.")}
        missing, unexpected = net.load_state_dict(features_state, strict=False)
        missing = [k for k in missing if k.startswith("features.")]
        if missing or unexpected:
            raise ValueError(
                f"backbone weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
    features = net.features
    if not 0 <= trainable_layers <= len(_MBV2_STAGES):
        raise ValueError(f"trainable_layers must be 0..{len(_MBV2_STAGES)}")
    first_trained = _MBV2_STAGES[trainable_layers - 1] if trainable_layers else len(features)
    for index, block in enumerate(features):
        block.requires_grad_(index >= first_trained)
    backbone = BackboneWithFPN(
        features,
        return_layers=_MBV2_TAPS,
        in_channels_list=_MBV2_CHANNELS,
        out_channels=cfg.fpn_channels,
    )
    c = cfg.fpn_channels
    levels = ["0", "1", "2"]
    return MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=AnchorGenerator(
            ((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 4
        ),
        box_roi_pool=MultiScaleRoIAlign(levels, 7, 2),
        box_head=TwoMLPHead(c * 7 * 7, 512),
        box_predictor=FastRCNNPredictor(512, cfg.num_classes),
        mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
        mask_head=MaskRCNNHeads(c, [c, c, c, c], 1),
        mask_predictor=MaskRCNNPredictor(c, c, cfg.num_classes),
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        box_batch_size_per_image=128,
        **_common_kwargs(cfg),
    )


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below `module` with FrozenBatchNorm2d, in place (the running
    statistics and affine terms are copied). Detection batches of 2-8 images are too small for
    batch statistics, which is why torchvision fine-tunes its detectors this way."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    value = getattr(child, key)
                    if value is not None:
                        getattr(frozen, key).copy_(value)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def resnet50_maskrcnn(
    cfg: ModelConfig,
    coco_state: Mapping[str, torch.Tensor] | None = None,
    trainable_layers: int = 3,
) -> MaskRCNN:
    """torchvision maskrcnn_resnet50_fpn(_v2), BatchNorm frozen. coco_state: its 91-class COCO
    state_dict; the box and mask predictors are then replaced for `cfg.num_classes` (the
    transfer-learning recipe)."""
    builder = getattr(torchvision.models.detection, cfg.arch)
    start_classes = 91 if coco_state is not None else cfg.num_classes
    model: MaskRCNN = builder(
        weights=None,
        weights_backbone=None,
        num_classes=start_classes,
        trainable_backbone_layers=None,  # all trainable here; `trainable_layers` applies below
        **_common_kwargs(cfg),
    )
    freeze_batchnorm(model)
    if coco_state is not None:
        model.load_state_dict(coco_state, strict=True)
        if cfg.num_classes != 91:
            box_in = model.roi_heads.box_predictor.cls_score.in_features
            model.roi_heads.box_predictor = FastRCNNPredictor(box_in, cfg.num_classes)
            mask_in = model.roi_heads.mask_predictor.conv5_mask.in_channels
            model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in, 256, cfg.num_classes)
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    for name, param in model.backbone.body.named_parameters():
        param.requires_grad_(any(name.startswith(layer) for layer in layers))
    return model


def build_model(
    cfg: ModelConfig,
    init_state: Mapping[str, torch.Tensor] | None = None,
    trainable_layers: int | None = None,
) -> MaskRCNN:
    """init_state: ImageNet MobileNetV2 weights for mobilenet_v2_fpn, COCO Mask R-CNN weights
    for the ResNet-50 models, or None (random: tests and timing only)."""
    if cfg.arch == "mobilenet_v2_fpn":
        return mobilenet_v2_maskrcnn(
            cfg, init_state, 9 if trainable_layers is None else trainable_layers
        )
    if cfg.arch in ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"):
        return resnet50_maskrcnn(
            cfg, init_state, 3 if trainable_layers is None else trainable_layers
        )
    raise ValueError(f"unknown arch {cfg.arch!r}; choose from {', '.join(ARCHS)}")


def coco_labels() -> list[str]:
    """torchvision's 91 COCO category names ("__background__" and "N/A" gaps included)."""
    weights = torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    return list(weights.meta["categories"])


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


class MaskRCNNOutputs(nn.Module):
    """The exported forward pass: torchvision's Mask R-CNN up to and including the mask head,
    minus the full-resolution paste (which emits N x 1 x H x W floats; the service pastes only
    the instances it keeps, in numpy).

    images: (1, 3, H, W) RGB in 0..1, any H and W. -> boxes (1, N, 4) xyxy in input pixels,
    labels (1, N) int64, scores (1, N), mask_probs (1, N, M, M) for each box's own class.
    """

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from torchvision.models.detection.transform import resize_boxes

        image = images[0]
        original = image.shape[-2:]
        batch, _ = self.model.transform([image])
        features = self.model.backbone(batch.tensors)
        proposals, _ = self.model.rpn(batch, features)
        detections, _ = self.model.roi_heads(features, proposals, batch.image_sizes)
        det = detections[0]
        boxes = resize_boxes(det["boxes"], list(batch.image_sizes[0]), list(original))
        return boxes[None], det["labels"][None], det["scores"][None], det["masks"][:, 0][None]
