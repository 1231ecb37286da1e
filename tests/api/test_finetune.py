"""train-classifier end to end on a tiny generated ImageFolder (random-weight MobileNetV2 at
32x32): one epoch runs and exports a card with the labels, the service serves the export,
--seed is deterministic, and a run resumed after an interruption ends exactly where the
uninterrupted run does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import scripts.train.classification.loop as loop
from scripts.export.classifier import build_classifier, load_checkpoint
from scripts.train.classification.cli import main
from service.cards import read_card
from tests.support.app import serve
from tests.support.images import encode

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models, shared CPU

CLASSES = ["apple", "banana", "cherry"]


COLOURS = {"apple": (200, 40, 40), "banana": (230, 210, 60), "cherry": (120, 0, 60)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 noisy 40x30 images per class, each class its own colour; JPEG and PNG mixed."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir()
        for i in range(8):
            noise = rng.integers(-40, 40, size=(30, 40, 3))
            pixels = np.clip(np.array(COLOURS[c]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def run(photos: Path, out: Path, *extra: str, epochs: int = 1, export: bool = False) -> int:
    args = [
        str(photos), "--name", "fruit", "--weights", "none", "--size", "32", "--hidden", "8",
        "--batch-size", "8", "--val-split", "0.25", "--epochs", str(epochs), "--quiet",
        "--run-dir", str(out / "run"), "--models-dir", str(out / "models"),
    ]  # fmt: skip
    return main(args + ([] if export else ["--no-export"]) + list(extra))


def test_one_epoch_trains_reports_and_exports_a_servable_model(photos: Path, tmp_path: Path):
    assert run(photos, tmp_path, "--strategy", "partial", "--unfreeze", "2", export=True) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and len(summary["history"]) == 1
    assert summary["strategy"] == "partial" and summary["cached_activations"] is True
    assert summary["dataset"]["train_per_class"] == {c: 6 for c in CLASSES}
    assert sum(map(sum, summary["val"]["confusion_matrix"])) == 6
    # the exported graph, fed the service's preprocessing, agrees with torch on the val set
    assert summary["val_accuracy_onnx"] == pytest.approx(summary["val"]["accuracy"])
    wrong = summary["val"]["misclassified"]
    assert len(wrong) == round((1 - summary["val"]["accuracy"]) * 6)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert sorted(split["val"]) == CLASSES and sum(map(len, split["val"].values())) == 6
    assert all(w["path"] in split["val"][w["true"]] for w in wrong)
    for png in ("confusion.png", "curves.png"):
        assert (tmp_path / "run" / png).read_bytes()[:4] == b"\x89PNG"

    # best.pt keeps the exporter's checkpoint contract
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["arch"] == "mobilenet_v2" and ckpt["labels"] == CLASSES
    assert ckpt["head"] == {"type": "gap", "hidden": 8, "dropout": 0.2}
    model = build_classifier("mobilenet_v2", 3, head="gap", hidden=8)
    model.load_state_dict(ckpt["state_dict"], strict=True)

    loaded = read_card(tmp_path / "models" / "fruit")  # what the service validates
    card = loaded.card
    assert card.labels == CLASSES and card.task == "classify"
    assert card.preprocess.size == (32, 32) and card.preprocess.resize_short == 37
    assert card.source["training_data"]["train_per_class"] == {c: 6 for c in CLASSES}
    assert card.source["fine_tuning"]["strategy"] == "partial"
    assert card.export["parity_vs_torch"]["max_abs_diff"] < 1e-4

    # served under ?model=fruit, answering with the folder names; same class as torch
    img = Image.open(photos / "banana" / "1.jpg")
    with serve(tmp_path / "models") as client:
        r = client.post(
            "/classify?model=fruit&top_k=3",
            files={"image": ("b.jpg", encode(img, "JPEG", quality=95), "image/jpeg")},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "fruit"
    assert sorted(p["label"] for p in body["predictions"]) == CLASSES
    from scripts.train.classification.data import Transforms, load

    x = Transforms(ckpt["preprocess"], augment=False).eval(load(photos / "banana" / "1.jpg", 37))
    with torch.no_grad():
        probs = torch.softmax(model.eval()(x[None]), 1)[0]
    assert body["predictions"][0]["label"] == CLASSES[int(probs.argmax())]
    assert body["predictions"][0]["score"] == pytest.approx(float(probs.max()), abs=0.02)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    saved: dict[str, torch.Tensor] = torch.load(folder / "run" / "last.pt", weights_only=True)[
        "model"
    ]
    return saved


@pytest.mark.parametrize(
    "strategy",
    [
        "full",  # images every epoch: augmentation, dropout and BatchNorm all draw randomness
        "feature-extraction",  # cached activations, one of 4 augmented views per epoch
    ],
)
def test_resume_after_interrupt_matches_an_uninterrupted_run(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    args = ("--strategy", strategy, "--seed", "7")
    assert run(photos, tmp_path / "straight", *args, epochs=2) == 0
    straight = _weights(tmp_path / "straight")

    real_evaluate, calls = loop.evaluate, []

    def interrupted(*a: object, **k: object) -> object:
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C during epoch 2, after epoch 1 was saved
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(photos, tmp_path / "cut", *args, epochs=2)
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
    assert torch.load(tmp_path / "cut/run/last.pt", weights_only=True)["state"]["epoch"] == 1
    assert run(photos, tmp_path / "cut", *args, "--resume", epochs=2) == 0
    resumed = _weights(tmp_path / "cut")
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key
    summary = json.loads((tmp_path / "cut" / "run" / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2]


def test_seed_decides_the_result(photos: Path, tmp_path: Path) -> None:
    runs = {}
    for label, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert run(photos, tmp_path / label, "--strategy", "full", "--seed", seed) == 0
        runs[label] = _weights(tmp_path / label)
    key = "head.6.weight"  # the output layer
    assert torch.equal(runs["a"][key], runs["b"][key])
    assert not torch.equal(runs["a"][key], runs["c"][key])


def test_resume_refuses_changed_settings(photos: Path, tmp_path: Path, capsys) -> None:
    assert run(photos, tmp_path, "--strategy", "feature-extraction") == 0
    code = run(photos, tmp_path, "--strategy", "feature-extraction", "--lr", "0.01", "--resume")
    assert code == 2
    assert "different settings: ['lr']" in capsys.readouterr().err


def test_bad_folder_is_a_sentence_not_a_traceback(tmp_path: Path, capsys) -> None:
    (tmp_path / "data" / "only_one_class").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "only_one_class" / "x.png")
    assert run(tmp_path / "data", tmp_path / "out") == 2
    assert "need at least 2" in capsys.readouterr().err


def test_weights_for_another_arch_are_refused_in_a_sentence(
    photos: Path, tmp_path: Path, capsys
) -> None:
    torch.save(build_classifier("resnet18", 3, head="torchvision").state_dict(), tmp_path / "r.pth")
    assert run(photos, tmp_path, "--weights", str(tmp_path / "r.pth")) == 2
    assert "checkpoint r.pth does not fit mobilenet_v2" in capsys.readouterr().err


def test_early_stopping_keeps_the_best_epoch(photos: Path, tmp_path: Path) -> None:
    # lr 0: validation never improves after epoch 1, so patience 1 stops after epoch 2
    args = ("--strategy", "feature-extraction", "--lr", "0", "--patience", "1")
    assert run(photos, tmp_path, *args, "--balance", "on", "--schedule", "step", epochs=6) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["stopped_early"] is True
    assert summary["best_epoch"] == 1 and summary["class_balanced"] is True
    h = summary["history"]
    assert h[0]["val_loss"] == h[1]["val_loss"] and h[0]["val_acc"] == h[1]["val_acc"]


def test_bf16_autocast_trains_differently_and_exports_an_fp32_graph(
    photos: Path, tmp_path: Path
) -> None:
    import onnx

    args = ("--strategy", "partial", "--unfreeze", "2", "--seed", "3")
    assert run(photos, tmp_path / "fp32", *args) == 0
    assert run(photos, tmp_path / "bf16", *args, "--precision", "bf16", export=True) == 0
    fp32, bf16 = _weights(tmp_path / "fp32"), _weights(tmp_path / "bf16")
    floats = [v for v in bf16.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 for v in floats)  # autocast keeps fp32 weights
    assert not torch.equal(fp32["head.6.weight"], bf16["head.6.weight"])  # autocast was on
    # the frozen activations are cached per precision: the bf16 run computed its own
    names = {p.name.split("-", 2)[2] for p in (tmp_path / "fp32/run/cache").glob("*.pt")}
    assert names and names.isdisjoint(
        p.name.split("-", 2)[2] for p in (tmp_path / "bf16/run/cache").glob("*.pt")
    )

    card = read_card(tmp_path / "bf16" / "models" / "fruit").card
    assert card.source["fine_tuning"]["precision"] == "bf16"
    assert card.export["parity_vs_torch"]["max_abs_diff"] < 1e-4
    graph = onnx.load(str(tmp_path / "bf16" / "models" / "fruit" / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    kinds = {i.data_type for i in graph.initializer}
    assert onnx.TensorProto.FLOAT in kinds
    assert not kinds & {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16}
    summary = json.loads((tmp_path / "bf16" / "run" / "summary.json").read_text())
    # validation ran under bf16 in torch; the fp32 ONNX graph lands within one of 6 images
    assert abs(summary["val_accuracy_onnx"] - summary["val"]["accuracy"]) <= 1 / 6 + 1e-9
