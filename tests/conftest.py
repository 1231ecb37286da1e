"""Shared fixtures: tiny models built by the project's own exporters, and apps over them.

Tests are grouped by kind. A module lives in the folder of the heaviest thing any of its tests
needs (unit < api < e2e), or in real/ when every one of them needs the default models:
- unit/: no app and no service process: pure functions, exporters, offline tools, bare
  onnxruntime sessions over tiny models (a stand-in HTTP server or a test database is fine).
- api/: the app in-process, `with TestClient(app)` (tests.support.app.serve), tiny models.
- e2e/: the service over a real socket: `python -m service` (tests.support.app.start_server) or
  a peer stack in a subprocess, driven by HTTP clients or a browser.
- real/: every test needs the default models and real photos (python -m scripts build-models); the
  module is marked `real_weights`. A test elsewhere that needs them carries the marker itself.

A module is named `test_<area>[_<aspect>].py`, area first (the endpoint, service module or
offline tool under test); the kind is the folder, never part of the name. Shared fixtures live
here, shared code in the tests.support package; a test module never imports another.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.support.app import DEFAULT_MODELS, serve, start_server


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared CPU: one torch thread beats two that spin-wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def default_models() -> Path:
    """models/ as `python -m scripts build-models` leaves it. Missing models fail the test
    (they are never skipped silently): CI builds them before pytest runs."""
    from scripts.recipes.defaults import DEFAULTS

    missing = [m.name for m in DEFAULTS if not (DEFAULT_MODELS / m.name / "model.onnx").is_file()]
    if missing:
        pytest.fail(f"default models missing: {missing}; run python -m scripts build-models")
    return DEFAULT_MODELS


@pytest.fixture(scope="session")
def testdata() -> Path:
    """Folder of real photos fetched by scripts/recipes/build_models.py from registry packages."""
    from scripts.constants import CACHE
    from scripts.recipes.defaults import TEST_DATA, testdata_path

    missing = [t.member for t in TEST_DATA if not testdata_path(Path(t.member).name).exists()]
    if missing:
        pytest.fail(f"test photos missing: {missing}; run python -m scripts build-models")
    return CACHE / "testdata"


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ holding `tiny-cls`: a 3-class CNN with seeded random weights, exported by
    scripts/export/classifier.py (so the export path is under test too)."""
    import torch
    from torch import nn

    from scripts.export.classifier import export_classifier

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    out = tmp_path_factory.mktemp("models")
    export_classifier(
        model,
        name="tiny-cls",
        labels=["apple", "banana", "cherry"],
        out_dir=out,
        preprocess={
            "resize": "crop",
            "resize_short": 36,
            "size": [32, 32],
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
        source={"weights": "random (tests only)"},
    )
    return out


@pytest.fixture(scope="session")
def tiny_detector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ holding `tiny-yolo`: a tiny Darknet YOLO with seeded random weights, exported by
    scripts/export/darknet.py."""
    from scripts.export.darknet import export_darknet, save_darknet_weights
    from tests.support.darknet import LABELS, TINY_CFG, randomized

    root = tmp_path_factory.mktemp("tiny-det")
    cfg, weights = root / "tiny.cfg", root / "tiny.weights"
    cfg.write_text(TINY_CFG)
    save_darknet_weights(randomized(seed=1), weights)
    models = root / "models"
    export_darknet(cfg, weights, name="tiny-yolo", labels=LABELS, out_dir=models)
    return models


@pytest.fixture
def classify_client(tiny_classifier_dir: Path) -> Iterator[TestClient]:
    with serve(tiny_classifier_dir) as client:
        yield client


@pytest.fixture(scope="session")
def tiny_segmenter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ holding `tiny-seg`: see tests/support/segment.py."""
    from tests.support.segment import export_tiny_segmenter

    return export_tiny_segmenter(tmp_path_factory.mktemp("tiny-seg"))


@pytest.fixture(scope="session")
def tiny_faces_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ holding `tiny-facedet` and `tiny-faceemb`: see tests/support/faces.py."""
    from tests.support.faces import export_tiny_faces

    return export_tiny_faces(tmp_path_factory.mktemp("face-models"))


@pytest.fixture(scope="session")
def all_models(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_classifier_dir: Path,
    tiny_detector_dir: Path,
    tiny_faces_dir: Path,
    tiny_segmenter_dir: Path,
) -> Path:
    """One models/ folder holding every tiny model above: a model for every endpoint."""
    out = tmp_path_factory.mktemp("all-models")
    for source in (tiny_classifier_dir, tiny_detector_dir, tiny_faces_dir, tiny_segmenter_dir):
        for folder in source.iterdir():
            if (folder / "model.json").exists():
                shutil.copytree(folder, out / folder.name)
    return out


@pytest.fixture(scope="module")
def tiny_server(tiny_classifier_dir: Path) -> Iterator[str]:
    """`python -m service` over the tiny classifier on a loopback port: its URL."""
    yield from start_server(tiny_classifier_dir)
