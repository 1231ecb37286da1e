"""Model cards: `models/<name>/model.json`, written by the export scripts beside `model.onnx`.

The card is the only place the service learns a model's preprocessing, labels and outputs. It is
one typed schema per task (`ClassifyCard`, `DetectCard`, ...), chosen by the card's `task`; the
exporters write cards through `parse_card` and the service reads them through it, so a card the
service would refuse is never written. A card is validated once, when its model loads; a bad one
raises `CardError` naming the field and the reason, and the model never becomes ready.

Versions: `schema_version` 1 (cards before the typed schema) is migrated on read; the JSON
Schema of the current version is `card.schema.json` (`python -m service.cards > ...`), also
served at `GET /v1/models/card-schema`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

log = logging.getLogger("service.cards")

CARD_FILE = "model.json"
ONNX_FILE = "model.onnx"
GOLDEN_FILE = "golden.npz"
SCHEMA_VERSION = 2
# A card is a few kilobytes (1000 ImageNet labels: ~25 kB); anything far larger is not a card.
MAX_CARD_BYTES = 4 * 1024 * 1024

Task = Literal["classify", "detect", "segment", "face-detect", "face-embed"]
TASKS: tuple[str, ...] = ("classify", "detect", "segment", "face-detect", "face-embed")


class CardError(ValueError):
    """A card (or model folder) the service refuses. field: dotted path ("postprocess.activation",
    "model.onnx"); reason: a sentence saying what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


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
    size: (
        tuple[Annotated[int, Field(ge=1, le=8192)], Annotated[int, Field(ge=1, le=8192)]] | None
    ) = None
    resize_short: int | None = Field(None, ge=1, le=8192)
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    scale: float = Field(1.0 / 255.0, allow_inf_nan=False)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    pad_value: int = Field(114, ge=0, le=255)
    pad_anchor: Literal["center", "top-left"] = "center"

    @model_validator(mode="after")
    def _check(self) -> Preprocess:
        if self.resize != "none-in-graph" and self.size is None:
            raise ValueError(f"resize={self.resize!r} needs size [height, width]")
        if self.resize == "crop" and self.resize_short is None:
            raise ValueError("resize='crop' needs resize_short")
        if any(s == 0 or not math.isfinite(s) for s in self.std):
            raise ValueError("std must be finite and not 0")
        if not all(math.isfinite(m) for m in self.mean):
            raise ValueError("mean must be finite")
        return self


Dim = int | str


class TensorSpec(BaseModel):
    name: str = Field(min_length=1, max_length=256)
    shape: list[Dim] = Field(max_length=8)
    dtype: str = "float32"
    description: str = ""


class Golden(BaseModel):
    """A seeded input and the outputs the exporter saw for it (`golden.npz`: `input`, and one
    `output:<name>` per output); a model that answers otherwise at load is refused."""

    model_config = ConfigDict(extra="forbid")

    file: Literal["golden.npz"] = "golden.npz"
    rtol: float = Field(1e-3, ge=0, le=1)
    atol: float = Field(1e-3, ge=0)


class _Postprocess(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")

    in_graph: Any = Field(None, description="What the graph does itself (documentation).")
    in_service: str | None = Field(None, description="What the service does (documentation).")


class ClassifyPostprocess(_Postprocess):
    """softmax: logits out; sigmoid: multi-label; none: the graph outputs probabilities."""

    activation: Literal["softmax", "sigmoid", "none"] = "softmax"


class DetectPostprocess(_Postprocess):
    """yolov5: output (N, A, 5 + C) = cx, cy, w, h, objectness, C class probabilities;
    yolov8: output (N, 4 + C, A) = cx, cy, w, h, C class probabilities."""

    layout: Literal["yolov5", "yolov8"] = "yolov5"
    box_format: Literal["cxcywh"] = "cxcywh"


class SegmentPostprocess(_Postprocess):
    """The graph's own resize rule: shorter side to min_size, longer at most max_size."""

    min_size: int = Field(ge=16, le=4096)
    max_size: int = Field(ge=16, le=8192)
    mask_size: int | None = Field(None, ge=1, le=1024)

    @model_validator(mode="after")
    def _check(self) -> SegmentPostprocess:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size {self.max_size} is below min_size {self.min_size}")
        return self


class FaceDetectPostprocess(_Postprocess):
    decoder: Literal["yunet"] = "yunet"
    strides: tuple[Annotated[int, Field(ge=1, le=512)], ...] = Field((8, 16, 32), min_length=1)
    score_threshold: float = Field(0.6, ge=0, le=1)
    nms_iou_threshold: float = Field(0.3, ge=0, le=1)
    max_faces: int = Field(100, ge=1, le=10_000)
    landmarks: list[str] | None = None


ARCFACE_TEMPLATE: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)


class FaceEmbedPostprocess(_Postprocess):
    """thresholds: metric -> decision threshold (cosine: same if >=; euclidean: same if <=);
    one of the two is enough, the other follows for L2-normalised embeddings."""

    metric: Literal["cosine", "euclidean"] = "cosine"
    thresholds: dict[Literal["cosine", "euclidean"], Annotated[float, Field(ge=-1, le=4)]] = Field(
        min_length=1
    )
    threshold_source: str = ""
    alignment: str | None = None
    template: tuple[tuple[float, float], ...] = Field(ARCFACE_TEMPLATE, min_length=5, max_length=5)
    template_size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = (112, 112)
    normalize: Literal["l2"] = "l2"
    calibration: dict[str, Any] | None = None


class ModelCard(BaseModel):
    """What every task's card has. `source`, `export` and any further top-level block
    (`fine_tuning`, `quantization`, ...) are free-form provenance the service only reports."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    schema_version: Literal[2] = 2  # SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    task: Task
    version: int = Field(1, ge=1, le=2**31 - 1)
    labels: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=100_000
    )
    inputs: list[TensorSpec] = Field(min_length=1, max_length=1)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=64)
    preprocess: Preprocess
    postprocess: _Postprocess = Field(default_factory=_Postprocess)
    golden: Golden | None = None
    source: dict[str, Any] = Field(default_factory=dict)
    export: dict[str, Any] = Field(default_factory=dict)


class _LabelledCard(ModelCard):
    """The card of a model whose outputs are classes: it names them."""

    labels_rule: ClassVar[str] = "one per class"

    @model_validator(mode="after")
    def _labels(self) -> _LabelledCard:
        if not self.labels:
            raise ValueError(f"{self.task} cards need labels ({self.labels_rule})")
        return self


class ClassifyCard(_LabelledCard):
    labels_rule: ClassVar[str] = "one per output class"
    task: Literal["classify"]
    postprocess: ClassifyPostprocess = Field(default_factory=ClassifyPostprocess)


class DetectCard(_LabelledCard):
    task: Literal["detect"]
    postprocess: DetectPostprocess = Field(default_factory=DetectPostprocess)

    @model_validator(mode="after")
    def _input(self) -> DetectCard:
        if self.preprocess.resize == "none-in-graph":
            raise ValueError("detect models are fed at preprocess.size; none-in-graph is not one")
        return self


class SegmentCard(_LabelledCard):
    task: Literal["segment"]
    postprocess: SegmentPostprocess

    @model_validator(mode="after")
    def _outputs(self) -> SegmentCard:
        if len(self.outputs) != 4:
            raise ValueError("segment cards need 4 outputs: boxes, labels, scores, mask_probs")
        return self


class FaceDetectCard(ModelCard):
    task: Literal["face-detect"]
    postprocess: FaceDetectPostprocess = Field(default_factory=FaceDetectPostprocess)

    @model_validator(mode="after")
    def _size(self) -> FaceDetectCard:
        if self.preprocess.size is None:
            raise ValueError("face-detect cards need preprocess.size")
        bad = [s for s in self.postprocess.strides if any(d % s for d in self.preprocess.size)]
        if bad:
            raise ValueError(f"preprocess.size {self.preprocess.size} is not divisible by {bad}")
        return self


class FaceEmbedCard(ModelCard):
    task: Literal["face-embed"]
    postprocess: FaceEmbedPostprocess

    @model_validator(mode="after")
    def _size(self) -> FaceEmbedCard:
        if self.preprocess.size is None:
            raise ValueError("face-embed cards need preprocess.size (the aligned crop)")
        return self


AnyCard = Annotated[
    ClassifyCard | DetectCard | SegmentCard | FaceDetectCard | FaceEmbedCard,
    Field(discriminator="task"),
]
_ADAPTER: TypeAdapter[ModelCard] = TypeAdapter(AnyCard)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a current card (all tasks, discriminated by `task`)."""
    schema = _ADAPTER.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"Model card (model.json), schema_version {SCHEMA_VERSION}"
    return schema


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """An older card's dict -> the current version's. v1 (no typed postprocess): `version` was
    a free string ("1"); versions are now integers, as the repository's version folders."""
    version = raw.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CardError("schema_version", f"must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise CardError(
            "schema_version",
            f"{version} is newer than this server understands ({SCHEMA_VERSION}); upgrade it",
        )
    out = dict(raw)
    if version < 1:
        raise CardError("schema_version", f"{version} is not a card version (1..{SCHEMA_VERSION})")
    if version == 1:
        v = out.get("version", "1")
        if isinstance(v, str):
            if not v.isdigit():
                raise CardError("version", f"{v!r} is not a version number (1, 2, ...)")
            out["version"] = int(v)
        out["schema_version"] = 2
    return out


def _describe(error: Any) -> CardError:
    loc = [str(p) for p in error["loc"]]
    # the discriminated union puts the task name first: "classify.postprocess.activation"
    if loc and loc[0] in TASKS:
        loc = loc[1:]
    field = ".".join(loc) or "card"
    msg = error["msg"]
    if error["type"] == "literal_error":
        msg = f"{error['input']!r} is not one of {error['ctx']['expected']}"
    elif error["type"] == "value_error":
        msg = str(error["ctx"]["error"])
    elif error["type"] == "extra_forbidden":
        msg = "is not a setting this card's schema knows (misspelt?)"
    elif error["type"] == "union_tag_invalid":
        field = "task"
        msg = f"{error['input'].get('task')!r} is not one of {', '.join(TASKS)}"
    elif error["type"] == "union_tag_not_found":
        field, msg = "task", "is missing"
    return CardError(field, msg)


def parse_card(raw: Any) -> ModelCard:
    """A card's JSON value (any version) -> the typed card of its task; raises CardError."""
    if not isinstance(raw, dict):
        raise CardError("card", f"must be a JSON object, got {type(raw).__name__}")
    try:
        return _ADAPTER.validate_python(migrate(raw))
    except ValidationError as exc:
        raise _describe(exc.errors()[0]) from None


class LoadedCard(BaseModel):
    card: ModelCard
    onnx_path: Path


def read_card(folder: Path, name: str | None = None) -> LoadedCard:
    """Read and validate `folder/model.json`; raises CardError. `name`: the model's name in the
    repository (the folder's, or its parent's for a numbered version folder)."""
    path = folder / CARD_FILE
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise CardError(CARD_FILE, f"is over {MAX_CARD_BYTES} bytes; a card is a few kB")
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CardError(CARD_FILE, "is missing") from None
    except OSError as exc:
        raise CardError(CARD_FILE, f"cannot be read: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CardError(CARD_FILE, f"is not valid JSON: {exc}") from None
    card = parse_card(raw)
    onnx_path = folder / ONNX_FILE
    if onnx_path.is_symlink() or not onnx_path.is_file():
        raise CardError(ONNX_FILE, "is missing beside the card (or is not a regular file)")
    expected = name or folder.name
    if card.name != expected:
        raise CardError("name", f"{card.name!r} differs from the model's folder {expected!r}")
    return LoadedCard(card=card, onnx_path=onnx_path)


def discover(models_dir: Path) -> list[LoadedCard]:
    """Every valid flat card under models_dir, sorted by name (broken ones logged, skipped)."""
    found: list[LoadedCard] = []
    if not models_dir.is_dir():
        log.warning("models directory %s does not exist", models_dir)
        return found
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        if not (folder / CARD_FILE).exists():
            continue
        try:
            found.append(read_card(folder))
        except CardError as exc:
            log.error("skipping model %s: %s", folder.name, exc)
    return found


if __name__ == "__main__":  # python -m service.cards > card.schema.json
    print(json.dumps(json_schema(), indent=2))
