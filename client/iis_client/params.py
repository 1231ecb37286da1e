"""The query parameters of each endpoint, as the client sends them.

The enums (`TilingMode`, `MaskFormat`, `FaceMetric`) are defined here once and used by the
server too. Every parameter is optional on the client: one left out (or None) is not sent, so
the server's default applies and the client never carries a copy of it. The names and types
below are checked against the server's /openapi.json by a test, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypedDict

TilingMode = Literal["off", "on", "auto"]
MaskFormat = Literal["rle", "polygon", "png"]
FaceMetric = Literal["cosine", "euclidean"]


class ModelParams(TypedDict, total=False):
    model: str | None  # `name` or `name@version`; default per /v1/models


class ClassifyParams(ModelParams, total=False):
    top_k: int | None


class DetectParams(ModelParams, total=False):
    score_threshold: float | None
    iou_threshold: float | None
    max_detections: int | None
    classes: Sequence[str] | None  # label names or class ids, sent as repeated parameters
    tiling: TilingMode | None
    tile_size: int | None
    tile_overlap: float | None
    max_tiles: int | None


class SegmentParams(DetectParams, total=False):
    mask_threshold: float | None
    mask_format: MaskFormat | None


class FaceModelParams(ModelParams, total=False):
    detector: str | None  # the face detector; default per /v1/models


class VerifyFacesParams(FaceModelParams, total=False):
    threshold: float | None  # in the units of `metric`; default from the model's card
    metric: FaceMetric | None


class EmbedFacesParams(FaceModelParams, total=False):
    score_threshold: float | None
    max_faces: int | None
