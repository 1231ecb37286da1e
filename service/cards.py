"""Model cards: `models/<name>/model.json`, written by the export scripts beside `model.onnx`.

The card is the only place the service learns a model's preprocessing, labels and outputs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger("service.cards")

CARD_FILE = "model.json"
ONNX_FILE = "model.onnx"
SCHEMA_VERSION = 1

Task = Literal["classify", "detect", "segment", "face-detect", "face-embed"]


class Preprocess(BaseModel):
    """How pixels become the input tensor.

    resize: crop = short side to `resize_short`, then centre crop to `size`;
        letterbox = fit inside `size` keeping aspect, pad with `pad_value` (around the image,
            or only right/bottom with pad_anchor="top-left", as YuNet was trained);
        stretch = resize to `size` ignoring aspect; none-in-graph = the graph does it.
    size: [height, width] of the model input.
    The tensor is (pixels * scale - mean) / std, channels in `channel_order`, laid out `layout`.
    """

    model_config = ConfigDict(extra="forbid")

    resize: Literal["crop", "letterbox", "stretch", "none-in-graph"]
    size: tuple[int, int] | None = None
    resize_short: int | None = None
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    pad_value: int = 114
    pad_anchor: Literal["center", "top-left"] = "center"

    @model_validator(mode="after")
    def _check(self) -> Preprocess:
        if self.resize != "none-in-graph" and self.size is None:
            raise ValueError(f"resize={self.resize!r} needs size [height, width]")
        if self.resize == "crop" and self.resize_short is None:
            raise ValueError("resize='crop' needs resize_short")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not contain 0")
        return self


class TensorSpec(BaseModel):
    name: str
    shape: list[int | str]
    dtype: str = "float32"
    description: str = ""


class ModelCard(BaseModel):
    """The contents of model.json. `postprocess` holds task-specific settings
    (e.g. classify: {"activation": "softmax"}); each task module validates its own part."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    task: Task
    version: str = "1"
    labels: list[str] = Field(default_factory=list)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    preprocess: Preprocess
    postprocess: dict[str, Any] = Field(default_factory=dict)
    source: dict[str, Any] = Field(default_factory=dict)
    export: dict[str, Any] = Field(default_factory=dict)


class LoadedCard(BaseModel):
    card: ModelCard
    onnx_path: Path


def read_card(folder: Path) -> LoadedCard:
    """Read and validate `folder/model.json`; raises ValueError with the file named."""
    path = folder / CARD_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        card = ModelCard.model_validate(raw)
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        raise ValueError(f"{path}: invalid model card: {exc}") from exc
    onnx_path = folder / ONNX_FILE
    if not onnx_path.is_file():
        raise ValueError(f"{path}: {ONNX_FILE} is missing beside the card")
    if card.name != folder.name:
        raise ValueError(f"{path}: card name {card.name!r} differs from folder {folder.name!r}")
    return LoadedCard(card=card, onnx_path=onnx_path)


def discover(models_dir: Path) -> list[LoadedCard]:
    """Every valid card under models_dir, sorted by name. Broken cards are logged and skipped so
    one bad folder does not take the other models down."""
    found: list[LoadedCard] = []
    if not models_dir.is_dir():
        log.warning("models directory %s does not exist", models_dir)
        return found
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        if not (folder / CARD_FILE).exists():
            continue
        try:
            found.append(read_card(folder))
        except ValueError as exc:
            log.error("skipping model: %s", exc)
    return found
