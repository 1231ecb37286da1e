"""Each trainer's command-line defaults are its Config's defaults: the parsers repeat them (the
classifier's so that `--help` needs no torch), and this is what keeps the two from drifting."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from scripts.constants import ROOT


def _differences(got: Any, want: Any) -> dict[str, tuple[Any, Any]]:
    return {
        f.name: (getattr(got, f.name), getattr(want, f.name))
        for f in fields(want)
        if getattr(got, f.name) != getattr(want, f.name)
    }


def test_train_classifier() -> None:
    from scripts.train.classification import cli
    from scripts.train.classification.train import Config

    got = cli.config_for(cli.parse(["photos", "--name", "mine"]))
    # the command finds this checkout's models/ from any folder; Config is relative to the cwd
    assert _differences(got, Config(Path("photos"), "mine")) == {
        "models_dir": (ROOT / "models", Path("models"))
    }


def test_train_segmenter() -> None:
    from scripts.train.segmentation import cli
    from scripts.train.segmentation.train import Config

    got = cli.config_for(cli.parser().parse_args(["--coco", "a.json", "--images", "imgs"]))
    assert _differences(got, Config(Path("a.json"), Path("imgs"))) == {}


def test_train_faces() -> None:
    from scripts.train.similarity import cli
    from scripts.train.similarity.train import Config

    got = cli.config_for(cli.parser().parse_args(["train", "crops", "--name", "mine"]))
    assert _differences(got, Config(Path("crops"), "mine")) == {}
