"""Transfer-learning building blocks: freezing per strategy, block layouts, the `auto` rule,
data scanning, balanced sampling, weight sources and metrics. Random weights, tiny inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from scripts.export.classifier import build_classifier
from scripts.train.classification import strategies, weights
from scripts.train.classification.data import epoch_order, is_skewed, scan
from scripts.train.classification.report import metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models, shared CPU

_models: dict[str, nn.Module] = {}


def gap_model(arch: str) -> nn.Module:
    """One random GapClassifier per arch for the whole module (VGG16 takes ~1 s to build)."""
    if arch not in _models:
        torch.manual_seed(0)
        _models[arch] = build_classifier(arch, 3, head="gap", hidden=8)
    return _models[arch]


def _prefixes(*blocks: str) -> tuple[str, ...]:
    return tuple(f"features.{b}." for b in blocks) + ("head.",)


@pytest.mark.parametrize(
    ("arch", "strategy", "unfreeze", "trainable_prefixes"),
    [
        ("mobilenet_v2", "feature-extraction", None, ("head.",)),
        ("mobilenet_v2", "partial", None, _prefixes("16", "17", "18")),
        ("mobilenet_v2", "partial", 1, _prefixes("18")),
        ("mobilenet_v2", "full", None, ("features.", "head.")),
        ("resnet18", "feature-extraction", None, ("head.",)),
        ("resnet18", "partial", None, _prefixes("7")),  # layer4
        ("resnet18", "partial", 3, _prefixes("6.1", "7")),  # + the last block of layer3
        ("resnet18", "full", None, ("features.", "head.")),
        ("resnet50", "partial", None, _prefixes("7")),
        ("resnet50", "partial", 4, _prefixes("6.5", "7")),
        ("vgg16", "feature-extraction", None, ("head.",)),
        ("vgg16", "partial", None, _prefixes("24", "26", "28")),  # block5 convs
        ("vgg16", "partial", 2, _prefixes("17", "19", "21", "24", "26", "28")),
        ("vgg16", "full", None, ("features.", "head.")),
    ],
)
def test_freezing_trains_exactly_the_intended_parameters(
    arch: str, strategy: str, unfreeze: int | None, trainable_prefixes: tuple[str, ...]
) -> None:
    model = gap_model(arch)
    split = strategies.apply(model, arch, strategy, unfreeze)  # type: ignore[arg-type]
    names = [n for n, _ in model.named_parameters()]
    want = {n for n in names if n.startswith(trainable_prefixes)}
    got = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got == want
    assert {n for n in names if n.startswith("head.")} <= got
    # frozen blocks stay in eval mode (BatchNorm statistics untouched) while training
    strategies.set_train_mode(split, True)
    for module in split.frozen.modules():
        assert not module.training
    assert split.trainable.training
    # optimiser groups: head at lr, trainable backbone at lr * mult, nothing frozen
    groups = strategies.param_groups(model, 1e-3, 0.1)  # type: ignore[arg-type]
    assert groups[0]["lr"] == 1e-3
    grouped = {id(p) for g in groups for p in g["params"]}  # type: ignore[attr-defined]
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    if strategy != "feature-extraction":
        assert groups[1]["lr"] == pytest.approx(1e-4)


@pytest.mark.parametrize(("arch", "count"), [("mobilenet_v2", 19), ("resnet18", 9), ("vgg16", 5)])
def test_blocks_compose_to_the_backbone(arch: str, count: int) -> None:
    model = gap_model(arch).eval()
    bl = strategies.blocks(arch, model.features)
    assert len(bl) == count
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(nn.Sequential(*bl)(x), model.features(x))


def test_partial_rejects_an_impossible_unfreeze() -> None:
    with pytest.raises(ValueError, match="--unfreeze must be 1..19"):
        strategies.apply(gap_model("mobilenet_v2"), "mobilenet_v2", "partial", 20)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("per_class", "probe_acc", "classes", "expected"),
    [
        (10, 0.99, 2, "feature-extraction"),  # skill 0.98: separated at any size
        (5000, 0.99, 2, "feature-extraction"),
        (5000, 0.96, 10, "feature-extraction"),  # skill 0.956
        (50, 0.90, 2, "feature-extraction"),  # small, skill 0.8: similar
        (50, 0.85, 2, "feature-extraction"),  # skill exactly 0.7
        (50, 0.80, 2, "partial"),  # small, skill 0.6: not similar
        (99, 0.40, 4, "partial"),  # skill 0.2
        (100, 0.90, 2, "partial"),  # medium and similar
        (999, 0.80, 5, "partial"),  # skill 0.75
        (100, 0.80, 2, "full"),  # medium, not similar
        (500, 0.30, 10, "full"),
        (1000, 0.90, 2, "full"),  # large
        (20000, 0.50, 2, "full"),
    ],
)
def test_auto_picks_per_its_rule(
    per_class: int, probe_acc: float, classes: int, expected: str
) -> None:
    decision = strategies.choose(per_class, probe_acc, classes)
    assert decision.strategy == expected
    assert f"{probe_acc:.1%}" in decision.reason and f"{per_class} train images" in decision.reason


def _image(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), colour).save(path)


def test_scan_splits_each_class_and_skips_what_is_not_an_image(tmp_path: Path) -> None:
    for i in range(10):
        _image(tmp_path / "cats" / f"{i}.jpg", (200, 0, 0))
    for i in range(3):
        _image(tmp_path / "dogs" / f"{i}.png", (0, 200, 0))
    (tmp_path / "dogs" / "notes.txt").write_text("not a photo")
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = scan(tmp_path, val_fraction=0.2, seed=0)
    assert ds.classes == ["cats", "dogs"]
    assert ds.counts("train") == [8, 2] and ds.counts("val") == [2, 1]
    assert not {s.path for s in ds.train} & {s.path for s in ds.val}
    assert len(ds.skipped) == 2
    assert scan(tmp_path, val_fraction=0.2, seed=0).val == ds.val  # same seed, same split


def test_scan_reads_train_and_val_folders(tmp_path: Path) -> None:
    for split, n in (("train", 4), ("val", 2)):
        for c, colour in (("a", (0, 0, 0)), ("b", (255, 255, 255))):
            for i in range(n):
                _image(tmp_path / split / c / f"{i}.png", colour)
    ds = scan(tmp_path)
    assert ds.layout == "train/val folders"
    assert ds.counts("train") == [4, 4] and ds.counts("val") == [2, 2]


@pytest.mark.parametrize(
    ("folders", "message"),
    [({"only": 3}, "need at least 2"), ({"a": 1, "b": 1}, "no validation images")],
)
def test_scan_refuses_untrainable_folders(
    tmp_path: Path, folders: dict[str, int], message: str
) -> None:
    for c, n in folders.items():
        for i in range(n):
            _image(tmp_path / c / f"{i}.png", (10, 20, 30))
    with pytest.raises(ValueError, match=message):
        scan(tmp_path)


@pytest.mark.parametrize(
    ("counts", "skewed"),
    [([10, 10], False), ([15, 10], False), ([16, 10], True), ([100, 5, 50], True)],
)
def test_is_skewed(counts: list[int], skewed: bool) -> None:
    assert is_skewed(counts) is skewed


def test_balanced_order_draws_classes_evenly() -> None:
    labels = torch.tensor([0] * 900 + [1] * 100)
    g = torch.Generator().manual_seed(0)
    balanced = epoch_order(labels, balanced=True, generator=g)
    share = float((labels[balanced] == 1).float().mean())
    assert 0.45 < share < 0.55
    plain = epoch_order(labels, balanced=False, generator=g)
    assert sorted(plain.tolist()) == list(range(1000))


def test_torchvision_state_dicts_map_onto_the_backbone() -> None:
    for arch in ("resnet18", "mobilenet_v2"):
        torch.manual_seed(3)
        full = getattr(torchvision.models, arch)().state_dict()
        sd = weights.backbone_state(arch, full)
        model = build_classifier(arch, 2, head="gap")
        model.features.load_state_dict(sd, strict=True)  # type: ignore[union-attr]
        # and a fine-tune checkpoint's state_dict gives the same backbone back
        again = weights.backbone_state(arch, model.state_dict())
        assert again.keys() == sd.keys()
        assert all(torch.equal(again[k], sd[k]) for k in sd)


def test_torchvision_cache_is_used_only_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ValueError, match="no resnet18 ImageNet weights available offline"):
        weights.resolve("resnet18", "auto")
    torch.manual_seed(5)
    full = torchvision.models.resnet18().state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(full, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    got = weights.resolve("resnet18", "auto")
    assert "resnet18-f37072fd.pth" in got.description
    assert got.state_dict is not None
    assert torch.equal(got.state_dict["0.weight"], full["conv1.weight"])
    assert torch.equal(got.state_dict["7.1.bn2.running_var"], full["layer4.1.bn2.running_var"])


def test_registry_names_the_archs_it_ships_when_one_is_missing() -> None:
    assert set(weights.REGISTRY) == {"mobilenet_v2", "vgg16"}
    with pytest.raises(ValueError, match=r"ships resnet50 .*registry has: mobilenet_v2, vgg16"):
        weights.resolve("resnet50", "registry")


def test_metrics_per_class_precision_recall() -> None:
    true = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 1, 1])
    m = metrics(true, pred, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [0, 1, 0]]
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.5)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_weights_from_a_fine_tune_checkpoint_keep_its_backbone_and_preprocess(
    tmp_path: Path,
) -> None:
    model = gap_model("mobilenet_v2")
    pre = {"resize": "crop", "resize_short": 146, "size": [128, 128]}
    ckpt = {"arch": "mobilenet_v2", "labels": ["a", "b", "c"], "preprocess": pre}
    torch.save({**ckpt, "state_dict": model.state_dict()}, tmp_path / "best.pt")
    got = weights.resolve("mobilenet_v2", str(tmp_path / "best.pt"))
    assert got.preprocess == pre
    assert got.state_dict is not None
    want = model.features.state_dict()  # type: ignore[union-attr]
    assert got.state_dict.keys() == want.keys()
    assert all(torch.equal(got.state_dict[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="holds a mobilenet_v2 checkpoint, not resnet18"):
        weights.resolve("resnet18", str(tmp_path / "best.pt"))
