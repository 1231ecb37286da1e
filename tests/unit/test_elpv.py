"""ELPV as an ImageFolder (fixed split, variants, mirrored copies), the held-out test report and
scripts/recipes/build_elpv.py end to end, on synthetic cells and a random VGG16 (no real data here;
tests/real/test_elpv.py has the real set)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.recipes import elpv_data as elpv

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models, shared CPU


@pytest.mark.parametrize(
    ("row", "split"),
    [(0, "test"), (4, "test"), (2620, "test"), (2, "val"), (10, "val"), (6, "train")]
    + [(r, "train") for r in (1, 3, 5, 7, 9, 11, 14)],
)
def test_fixed_split_rule(row: int, split: str) -> None:
    assert elpv.split_of(row) == split


@pytest.mark.parametrize(
    ("variant", "probability", "label"),
    [
        ("binary", 0.0, "functional"),
        ("binary", 1 / 3, None),  # left out of training and test
        ("binary", 0.6666666666666666, "defective"),
        ("binary", 1.0, "defective"),
        ("4-level", 0.0, "0-functional"),
        ("4-level", 0.3333333333333333, "1-possibly-defective"),
        ("4-level", 2 / 3, "2-likely-defective"),
        ("4-level", 1.0, "3-defective"),
    ],
)
def test_labels_per_variant(variant: str, probability: float, label: str | None) -> None:
    assert elpv.label_of(variant, probability) == label


@pytest.mark.parametrize("probability", [0.5, -1 / 3, 4 / 3])
def test_an_unknown_defect_probability_is_refused(probability: float) -> None:
    with pytest.raises(ValueError, match="not one of 0, 1/3, 2/3, 1"):
        elpv.label_of("binary", probability)


def test_labels_csv_rows_are_numbered_from_zero() -> None:
    text = (
        "images/cell0001.png  1.0                 mono\n"
        "images/cell0002.png  0.3333333333333333  poly\n\n"
    )
    cells = elpv.read_labels(text)
    assert cells == [
        elpv.Cell(0, "images/cell0001.png", 1.0, "mono"),
        elpv.Cell(1, "images/cell0002.png", 1 / 3, "poly"),
    ]
    assert [c.split for c in cells] == ["test", "train"]


# labels.csv row % 8 -> defect probability: test rows (0, 4) hold one class each, validation
# rows (2) alternate, the training rows (1, 3, 5, 6, 7) hold all four levels.
ROW_PROBABILITY = {0: 0.0, 1: 0.0, 3: 1.0, 4: 1.0, 5: 1 / 3, 6: 0.0, 7: 2 / 3}


def probability(row: int) -> float:
    if row % 8 == 2:
        return 0.0 if row // 8 % 2 == 0 else 2 / 3
    return ROW_PROBABILITY[row % 8]


def fake_cells(folder: Path, n: int = 48, side: int = 40) -> list[elpv.Cell]:
    """folder/images/cellNNNN.png: grey cells; defective ones (p >= 2/3) carry a dark crack,
    functional ones do not, so a classifier can learn them."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    cells = []
    for i in range(n):
        p = probability(i)
        pixels = rng.integers(150, 200, (side, side), dtype=np.uint8)
        if p > 0.5:
            pixels[:, side // 2 - 2 : side // 2 + 2] = 10
        name = f"images/cell{i + 1:04d}.png"
        Image.fromarray(pixels, mode="L").save(folder / name)
        cells.append(elpv.Cell(i, name, p, "mono" if i % 3 else "poly"))
    lines = [f"{c.name}  {c.probability!r}  {c.kind}" for c in cells]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return cells


def test_imagefolder_keeps_the_test_rows_apart_and_mirrors_only_training_cells(
    tmp_path: Path,
) -> None:
    cells = fake_cells(tmp_path / "data")
    counts = elpv.write_imagefolder(
        cells, tmp_path / "data", tmp_path / "bin", "binary", train_flips=("h", "hv")
    )
    manifest = elpv.read_manifest(tmp_path / "bin")
    on_disk = {
        p.relative_to(tmp_path / "bin").as_posix() for p in (tmp_path / "bin").rglob("*.png")
    }
    assert on_disk == set(manifest)
    test_rows = {int(r["row"]) for r in manifest.values() if r["split"] == "test"}
    assert test_rows == {c.row for c in cells if c.row % 4 == 0 and c.probability != 1 / 3}
    assert all(r["flip"] == "" for r in manifest.values() if r["split"] != "train")
    train = [r for r in manifest.values() if r["split"] == "train"]
    assert sorted(r["flip"] for r in train).count("hv") == len(train) // 3
    one = next(r for r in train if r["flip"] == "h")
    mirrored = np.asarray(Image.open(tmp_path / "bin" / one["path"]))
    original = np.asarray(
        Image.open(tmp_path / "data" / f"images/cell{int(one['row']) + 1:04d}.png")
    )
    assert np.array_equal(mirrored, original[:, ::-1])
    assert 1 / 3 not in {float(r["probability"]) for r in manifest.values()}
    n_test = sum(1 for c in cells if c.row % 4 == 0 and c.probability != 1 / 3)
    assert sum(counts["test"].values()) == n_test  # distinct cells: copies are not counted
    assert set(counts["train"]) == {"defective", "functional"}


def test_quick_runs_cap_each_class(tmp_path: Path) -> None:
    cells = fake_cells(tmp_path / "data")
    counts = elpv.write_imagefolder(
        cells, tmp_path / "data", tmp_path / "q", "4-level", train_per_class=2, eval_per_class=1
    )
    assert counts["train"] == dict.fromkeys(elpv.FOUR_LEVELS, 2)
    assert all(n == 1 for split in ("val", "test") for n in counts[split].values())


def fake_wheel(folder: Path, cells_dir: Path) -> Path:
    wheel = folder / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path in sorted(cells_dir.rglob("*")):
            if path.is_file():
                zf.write(path, f"elpv_dataset/data/{path.relative_to(cells_dir).as_posix()}")
    return wheel


def test_build_elpv_end_to_end_on_synthetic_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data -> partial fine-tuning of a random VGG16 at 32 px -> ONNX + card -> test split
    report -> cache; the second build only copies the cached model."""
    from scripts.recipes import build_elpv
    from scripts.train.classification import vgg16_keras, weights

    cells = fake_cells(tmp_path / "src")
    wheel = fake_wheel(tmp_path, tmp_path / "src")
    monkeypatch.setattr(elpv, "fetch_wheel", lambda: wheel)
    monkeypatch.setattr(elpv, "WHEEL_SHA256", "fake")
    monkeypatch.setattr(elpv, "NUM_CELLS", len(cells))
    random = weights.Pretrained(None, "random (test)", preprocess=dict(vgg16_keras.PREPROCESS))
    monkeypatch.setitem(weights.REGISTRY, "vgg16", lambda: random)
    recipe = build_elpv.Recipe(size=32, epochs=2, batch_size=8, hidden=8, train_flips=("h",))
    dirs = {
        "models_dir": tmp_path / "models",
        "runs": tmp_path / "runs",
        "data_root": tmp_path / "elpv",
        "cache": tmp_path / "cache",
    }
    ev = build_elpv.build("binary", recipe, **dirs)

    card = json.loads((tmp_path / "models" / "vgg16-elpv" / "model.json").read_text())
    assert card["labels"] == ["defective", "functional"]
    assert card["preprocess"]["channel_order"] == "BGR"
    assert card["preprocess"]["mean"] == [103.939, 116.779, 123.68]
    assert card["preprocess"]["scale"] == 1.0 and card["preprocess"]["size"] == [32, 32]
    assert card["source"]["fine_tuning"]["strategy"] == "partial"
    assert card["source"]["training_data"]["licence"].startswith("CC BY-NC-SA 4.0")
    assert card["evaluation"] == ev
    test = ev["test"]
    n_test = sum(1 for c in cells if c.row % 4 == 0 and c.probability != 1 / 3)
    matrix = np.array(test["confusion_matrix"])
    assert matrix.sum() == n_test
    assert test["accuracy"] == pytest.approx(np.trace(matrix) / n_test)
    assert test["misclassified"] == n_test - np.trace(matrix) == len(test["misclassified_files"])
    assert ev["distinct_cells"]["test"] == {"defective": 6, "functional": 6}
    assert ev["onnx_bytes"] == (tmp_path / "models" / "vgg16-elpv" / "model.onnx").stat().st_size
    assert ev["classify_latency"]["p50_ms"] > 0
    for png in ("curves.png", "test_confusion.png", "misclassified.png"):
        assert (tmp_path / "runs" / "vgg16-elpv" / png).stat().st_size > 1000
    assert not (tmp_path / "runs" / "vgg16-elpv" / "cache").exists()

    (tmp_path / "models" / "vgg16-elpv" / "model.onnx").unlink()
    again = build_elpv.build("binary", recipe, **dirs)  # cached: copied, not trained
    assert again == ev
    assert (tmp_path / "models" / "vgg16-elpv" / "model.onnx").is_file()
