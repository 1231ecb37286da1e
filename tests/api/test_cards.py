"""Typed model cards: one schema per task, field-naming errors, the v1 migration, the published
JSON Schema."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from service.cards import (
    SCHEMA_VERSION,
    CardError,
    ClassifyCard,
    DetectCard,
    json_schema,
    parse_card,
)
from tests.support.app import ROOT, serve

CLASSIFY: dict[str, Any] = {
    "schema_version": 2,
    "name": "m",
    "task": "classify",
    "version": 3,
    "labels": ["a", "b"],
    "inputs": [{"name": "input", "shape": ["batch", 3, 32, 32]}],
    "outputs": [{"name": "logits", "shape": ["batch", 2]}],
    "preprocess": {"resize": "crop", "size": [32, 32], "resize_short": 36},
    "postprocess": {"activation": "softmax"},
}


def changed(path: str, value: Any) -> dict[str, Any]:
    card = copy.deepcopy(CLASSIFY)
    *parents, last = path.split(".")
    target = card
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return card


@pytest.mark.parametrize(
    ("card", "field", "reason"),
    [
        (changed("postprocess.activation", "softmx"), "postprocess.activation",
         "'softmx' is not one of 'softmax', 'sigmoid' or 'none'"),
        (changed("postprocess.activaton", "softmax"), "postprocess.activaton",
         "is not a setting this card's schema knows (misspelt?)"),
        (changed("task", "clasify"), "task",
         "'clasify' is not one of classify, detect, segment, face-detect, face-embed"),
        (changed("task", KeyError), "task", "is missing"),
        (changed("preprocess.resize_short", KeyError), "preprocess", "resize='crop' needs "
         "resize_short"),
        (changed("preprocess.std", [0.2, 0, 0.2]), "preprocess", "std must be finite and not 0"),
        (changed("preprocess.size", [0, 32]), "preprocess.size.0",
         "Input should be greater than or equal to 1"),
        (changed("labels", []), "card", "classify cards need labels (one per output class)"),
        (changed("name", "../etc"), "name", "String should match pattern"),
        (changed("inputs", []), "inputs", "List should have at least 1 item"),
        (changed("version", "v2"), "version", "Input should be a valid integer"),
        (changed("schema_version", 3), "schema_version",
         "3 is newer than this server understands (2); upgrade it"),
        (changed("schema_version", "2"), "schema_version", "must be an integer, got '2'"),
        (changed("golden", {"file": "../x.npz"}), "golden.file", "'../x.npz' is not one of"),
    ],
)  # fmt: skip
def test_a_bad_card_names_the_field_and_the_reason(card, field, reason):
    with pytest.raises(CardError) as caught:
        parse_card(card)
    assert caught.value.field == field
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert str(caught.value) == f"{field}: {caught.value.reason}"


def test_not_an_object():
    with pytest.raises(CardError, match="card: must be a JSON object, got list"):
        parse_card([CLASSIFY])


def test_the_task_picks_the_schema():
    assert isinstance(parse_card(CLASSIFY), ClassifyCard)
    detect = changed("task", "detect") | {
        "postprocess": {"layout": "yolov8"},
        "preprocess": {"resize": "letterbox", "size": [32, 32]},
    }
    card = parse_card(detect)
    assert isinstance(card, DetectCard) and card.postprocess.layout == "yolov8"
    with pytest.raises(CardError, match="postprocess.activation: is not a setting"):
        parse_card(detect | {"postprocess": {"activation": "softmax"}})  # a classify setting


def test_version_1_cards_are_migrated():
    old = changed("schema_version", 1) | {"version": "7"}
    card = parse_card(old)
    assert card.schema_version == SCHEMA_VERSION and card.version == 7
    with pytest.raises(CardError, match="version: 'v7' is not a version number"):
        parse_card(old | {"version": "v7"})
    no_version = copy.deepcopy(old)
    del no_version["schema_version"]  # the oldest cards did not say
    assert parse_card(no_version).version == 7


def test_the_published_schema_is_current_and_served(tiny_classifier_dir: Path):
    published = json.loads((ROOT / "docs" / "card.schema.json").read_text())
    assert published == json_schema(), "regenerate: python -m service.cards > docs/card.schema.json"
    assert set(published["discriminator"]["mapping"]) == {
        "classify", "detect", "segment", "face-detect", "face-embed"}  # fmt: skip
    with serve(tiny_classifier_dir) as client:
        assert client.get("/v1/models/card-schema").json() == published


def test_exported_cards_are_current_and_carry_a_golden_example(tiny_classifier_dir: Path):
    raw = json.loads((tiny_classifier_dir / "tiny-cls" / "model.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION
    assert raw["golden"] == {"file": "golden.npz", "rtol": 1e-3, "atol": 1e-3}
    assert (tiny_classifier_dir / "tiny-cls" / "golden.npz").is_file()


def test_a_golden_file_that_unpacks_too_large_is_refused_before_inflating(
    tiny_classifier_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    from service import checks
    from service.cards import read_card

    loaded = read_card(tiny_classifier_dir / "tiny-cls")
    golden = tiny_classifier_dir / "tiny-cls" / "golden.npz"
    x, expected = checks.load_golden(golden, loaded.card)
    assert x.shape == (1, 3, 32, 32) and set(expected) == {"logits"}
    monkeypatch.setattr(checks, "MAX_GOLDEN_UNPACKED", x.nbytes)  # input + outputs exceed it
    with pytest.raises(
        CardError,
        match=r"golden: golden.npz is not a readable .npz: its arrays "
        r"unpack to \d+ bytes",
    ):
        checks.load_golden(golden, loaded.card)
