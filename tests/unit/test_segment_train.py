"""train-segmenter end to end on a few generated images: COCO in, checkpoints and a
served model card out. Tiny sizes: this checks the plumbing, not the accuracy (the default
model's own test does that)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.recipes.shapes import CLASSES, SplitSpec, make_split
from scripts.train.segmentation.data import CocoInstances, annotation_mask, load_coco, split_ids
from service.masks import BoxMask, encode_rle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {
        "train": make_split(root, SplitSpec("train", 6, 1, ("astronaut.png", "coins.png"))),
        "val": make_split(root, SplitSpec("val", 2, 2, ("coffee.png",))),
    }


def test_generated_annotations_are_exact_coco(shapes):
    index = load_coco(shapes["train"])
    assert index.labels == ["__background__", *CLASSES]
    data = CocoInstances(index, shapes["train"].parent / "images")
    pixels, objects = data.load(0)
    anns = index.annotations[data.ids[0]]
    assert len(objects) == len(anns) > 0
    for (label, mask), ann in zip(objects, anns, strict=True):
        assert label == ann["category_id"]
        assert ann["area"] == int(mask.sum())
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    image, target = data[0]
    assert image.shape == (3, *pixels.shape[:2]) and float(image.max()) <= 1.0
    assert target["masks"].shape == (len(anns), *pixels.shape[:2])


def test_polygon_and_rle_segmentations_load_alike():
    square = np.zeros((20, 30), bool)
    square[5:15, 10:20] = True
    polygon = [[10, 5, 20, 5, 20, 15, 10, 15]]
    from_poly = annotation_mask(polygon, 20, 30)
    from_rle = annotation_mask(encode_rle(BoxMask.from_full(square)), 20, 30)
    np.testing.assert_array_equal(from_rle, square)
    # PIL fills a polygon's boundary pixels too: the shapes agree up to that one-pixel rim
    assert (from_poly & square).sum() == square.sum() and from_poly.sum() <= 11 * 11


def test_split_is_seeded_and_disjoint():
    train, val = split_ids(list(range(1, 21)), 0.2, seed=3)
    assert len(val) == 4 and not set(train) & set(val) and len(train) + len(val) == 20
    assert split_ids(list(range(1, 21)), 0.2, seed=3) == (train, val)


def test_train_checkpoints_and_exports(shapes, tmp_path: Path):
    import torch
    import torchvision

    from scripts.export.maskrcnn import CHECKPOINT_FORMAT
    from scripts.train.segmentation.cli import main

    backbone = tmp_path / "mobilenet_v2.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), backbone)
    out, models = tmp_path / "run", tmp_path / "models"
    code = main(
        [
            "--coco", str(shapes["train"]),
            "--images", str(shapes["train"].parent / "images"),
            "--val-coco", str(shapes["val"]),
            "--val-images", str(shapes["val"].parent / "images"),
            "--weights", str(backbone),
            "--epochs", "1", "--batch-size", "3", "--min-size", "128", "--max-size", "192",
            "--warmup", "1", "--out", str(out), "--export", "tiny-shapes",
            "--models-dir", str(models),
        ]
    )  # fmt: skip
    assert code == 0
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["step"] == 2
    assert ckpt["labels"] == ["__background__", *CLASSES]
    assert set(ckpt["metrics"]) >= {"mask_iou", "precision", "recall"}
    assert (out / "last.pt").is_file()
    card = json.loads((models / "tiny-shapes" / "model.json").read_text())
    assert card["task"] == "segment" and card["labels"] == ckpt["labels"]
    assert card["postprocess"]["min_size"] == 128
    assert card["source"]["training_data"]["images"] == 6
    assert card["source"]["validation"] == ckpt["metrics"]


@pytest.mark.parametrize("arch", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_resnet50_from_coco_weights_gets_new_predictors(arch):
    """The transfer-learning path: a 91-class COCO state_dict loads strictly (BatchNorm
    buffers included), the predictors are replaced for our classes, early stages freeze, and
    a checkpoint of the result rebuilds from its config alone (as the exporter does)."""
    import torch
    import torchvision

    from scripts.train.segmentation.models import ModelConfig, build_model

    coco = getattr(torchvision.models.detection, arch)(
        weights=None, weights_backbone=None, num_classes=91
    ).state_dict()
    model = build_model(ModelConfig(arch, 3), coco, trainable_layers=2)
    heads = model.roi_heads
    assert heads.box_predictor.cls_score.out_features == 3
    assert heads.mask_predictor.mask_fcn_logits.out_channels == 3
    torch.testing.assert_close(
        model.backbone.body.layer4[0].conv1.weight, coco["backbone.body.layer4.0.conv1.weight"]
    )
    trained = {
        n.split(".")[0] for n, p in model.backbone.body.named_parameters() if p.requires_grad
    }
    assert trained == {"layer3", "layer4"}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    build_model(ModelConfig(arch, 3)).load_state_dict(model.state_dict(), strict=True)
