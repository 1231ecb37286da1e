"""The real ELPV set (the elpv-dataset wheel that build-models fetched) and a CI-sized
`vgg16-elpv` trained from the real VGG16 weights by build-elpv --quick, then served.

The full model (python -m scripts build-elpv, ~8 minutes on 2 CPU cores with bf16) is not built
here; its test figures are in its card and docs/fine-tuning/elpv.md."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from scripts.recipes import elpv_data as elpv
from tests.support.app import serve

pytestmark = pytest.mark.real_weights


@pytest.fixture(scope="module")
def elpv_cells(
    testdata: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[elpv.Cell], Path]:
    """The wheel's labels.csv and images, extracted into a temporary folder (no network)."""
    from scripts.constants import CACHE

    wheel = CACHE / "packages" / elpv.WHEEL
    if not wheel.is_file() or hashlib.sha256(wheel.read_bytes()).hexdigest() != elpv.WHEEL_SHA256:
        pytest.fail(f"{wheel} missing or changed; run python -m scripts build-models")
    return elpv.extract(wheel, tmp_path_factory.mktemp("elpv") / "extracted")


def test_the_fixed_split_of_the_real_labels(
    elpv_cells: tuple[list[elpv.Cell], Path], tmp_path: Path
) -> None:
    cells, data = elpv_cells
    assert len(cells) == 2624
    assert cells[0] == elpv.Cell(0, "images/cell0001.png", 1.0, "mono")
    binary = elpv.write_imagefolder(cells, data, tmp_path / "binary", "binary")
    assert binary == {
        "train": {"defective": 511, "functional": 935},
        "val": {"defective": 112, "functional": 187},
        "test": {"defective": 198, "functional": 386},
    }
    four = elpv.write_imagefolder(cells, data, tmp_path / "four", "4-level")
    assert four["test"] == {
        "0-functional": 386,
        "1-possibly-defective": 72,
        "2-likely-defective": 24,
        "3-defective": 174,
    }
    manifest = elpv.read_manifest(tmp_path / "binary")
    assert {int(r["row"]) % 4 for r in manifest.values() if r["split"] == "test"} == {0}
    assert (tmp_path / "binary" / "test" / "defective" / "cell0001.png").is_file()
    assert (tmp_path / "binary" / "test" / "functional" / "cell0009.png").is_file()


def test_quick_vgg16_elpv_is_served_and_reproduces_its_card(
    elpv_cells: tuple[list[elpv.Cell], Path],
    testdata: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """build_elpv --quick (real VGG16; 150 train, 60 val, 60 test cells per class; 160 px; head
    only), then every test cell it was measured on goes through POST /classify: the service
    must agree with the card's test accuracy, which must beat chance clearly."""
    from scripts.recipes import build_elpv

    cells, data = elpv_cells
    monkeypatch.setattr(elpv, "extract", lambda wheel, dest: (cells, data))
    monkeypatch.setattr(elpv, "fetch_wheel", lambda: Path("unused"))
    ev = build_elpv.build(
        "binary",
        build_elpv.QUICK,
        models_dir=tmp_path / "models",
        runs=tmp_path / "runs",
        data_root=tmp_path / "elpv",
        cache=None,
    )
    assert ev["distinct_cells"]["test"] == {"defective": 60, "functional": 60}
    assert ev["test"]["accuracy"] >= 0.7, ev["test"]

    test_dir = next((tmp_path / "elpv").glob("binary-*")) / "test"
    with serve(tmp_path / "models") as client:
        right = total = 0
        for path in sorted(test_dir.rglob("*.png")):
            r = client.post(
                "/classify?model=vgg16-elpv&top_k=2",
                files={"image": (path.name, path.read_bytes())},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == "vgg16-elpv" and body["image"] == {"width": 300, "height": 300}
            labels = [p["label"] for p in body["predictions"]]
            assert sorted(labels) == ["defective", "functional"]
            assert sum(p["score"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-4)
            right += labels[0] == path.parent.name
            total += 1
        models = client.get("/v1/models").json()
    assert total == 120
    assert abs(right / total - ev["test"]["accuracy"]) <= 1 / total  # batching may flip a tie
    assert "vgg16-elpv" in str(models)
