"""The HTTP contract: response models named by role (see DESIGN.md's table).

Defined once, here: the server builds its answers from these models (`service.schemas`
re-exports them) and the client parses answers into them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from iis_client.params import MaskFormat, TilingMode


class ImageInfo(BaseModel):
    width: int = Field(description="Width of the image as displayed (EXIF orientation applied).")
    height: int


class ClassPrediction(BaseModel):
    label: str
    class_id: int
    score: float = Field(description="Probability after the card's activation (softmax).")


class ClassifyResponse(BaseModel):
    model: str
    model_version: int = Field(1, description="The version of `model` that answered.")
    predictions: list[ClassPrediction]
    image: ImageInfo
    timing_ms: dict[str, float] = Field(
        description="decode, preprocess, queue, inference, postprocess and total milliseconds."
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": "mobilenet_v2-imagenet",
                    "predictions": [
                        {"label": "Egyptian cat", "class_id": 285, "score": 0.71},
                        {"label": "tiger cat", "class_id": 282, "score": 0.15},
                    ],
                    "image": {"width": 451, "height": 300},
                    "timing_ms": {"decode": 1.1, "inference": 5.2, "total": 8.0},
                }
            ]
        }
    }


class DetectedFace(BaseModel):
    box: list[float] = Field(description="[x1, y1, x2, y2] in original pixels.")
    score: float = Field(description="Detector confidence, 0..1.")
    landmarks: list[list[float]] = Field(
        description="5 [x, y] points in original pixels: right eye, left eye, nose tip, right "
        "mouth corner, left mouth corner (the subject's right is the image's left)."
    )


class FacePair(BaseModel):
    a: DetectedFace
    b: DetectedFace


class VerifyFacesResponse(BaseModel):
    verified: bool = Field(description="Same person: the metric's value passes the threshold.")
    distance: float = Field(description="Euclidean distance of the unit embeddings, 0..2.")
    similarity: float = Field(description="Cosine similarity of the embeddings, -1..1.")
    threshold: float = Field(description="In the units of `metric`.")
    metric: str = Field(description="cosine (same if >= threshold) | euclidean (if <=).")
    model: str = Field(description="The embedding model.")
    detector: str
    faces: FacePair = Field(description="The largest face of each image, the one compared.")
    faces_found: dict[str, int] = Field(description="Faces detected in image a and image b.")
    images: dict[str, ImageInfo]
    timing_ms: dict[str, float]

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "verified": True,
                    "distance": 0.716036,
                    "similarity": 0.743646,
                    "threshold": 0.363,
                    "metric": "cosine",
                    "model": "sface-2021dec",
                    "detector": "yunet-2023mar",
                    "faces": {
                        "a": {
                            "box": [371.08, 90.13, 609.99, 419.1],
                            "score": 0.9465,
                            "landmarks": [
                                [439.1, 214.77],
                                [553.98, 214.07],
                                [494.98, 268.12],
                                [440.57, 318.46],
                                [546.67, 320.31],
                            ],
                        },
                        "b": {
                            "box": [201.11, 229.54, 476.32, 632.88],
                            "score": 0.9515,
                            "landmarks": [
                                [245.7, 375.46],
                                [369.13, 385.24],
                                [277.34, 456.34],
                                [244.28, 522.54],
                                [349.77, 532.04],
                            ],
                        },
                    },
                    "faces_found": {"a": 1, "b": 1},
                    "images": {
                        "a": {"width": 910, "height": 1137},
                        "b": {"width": 626, "height": 1200},
                    },
                    "timing_ms": {
                        "decode": 35.7,
                        "preprocess": 22.9,
                        "queue": 17.2,
                        "detect": 29.1,
                        "postprocess": 1.6,
                        "align": 6.0,
                        "embed": 44.7,
                        "total": 108.9,
                    },
                }
            ]
        }
    }


class EmbeddedFace(DetectedFace):
    embedding: list[float] = Field(description="L2-normalised embedding.")


class FaceEmbedResponse(BaseModel):
    model: str
    model_version: int = Field(1, description="The version of `model` that answered.")
    detector: str
    faces: list[EmbeddedFace] = Field(description="Every face found, best score first.")
    image: ImageInfo
    timing_ms: dict[str, float]


class Detection(BaseModel):
    label: str
    class_id: int
    score: float = Field(
        description="Objectness x class probability (YOLOv5 layout) or the class probability "
        "(YOLOv8 layout), 0..1."
    )
    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="[x1, y1, x2, y2] in pixels of the image as displayed (EXIF applied).",
    )


class TilingInfo(BaseModel):
    """How the photo was tiled (`tiling` on /detect and /segment)."""

    mode: TilingMode
    tiles: int = Field(description="Tiles run besides the whole photo; 0: the whole photo alone.")
    tile_size: int | None = Field(None, description="Tile side in photo pixels, as run.")
    overlap: float = Field(description="Fraction of a tile shared with its neighbour.")


class DetectResponse(BaseModel):
    model: str
    model_version: int = Field(1, description="The version of `model` that answered.")
    detections: list[Detection] = Field(description="Best score first, after class-wise NMS.")
    image: ImageInfo
    timing_ms: dict[str, float] = Field(
        description="decode, preprocess, queue, inference, postprocess and total milliseconds; "
        "with tiles also tile_preprocess and merge."
    )
    tiling: TilingInfo | None = Field(None, description="Present when `tiling` was asked for.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": "yolov3-tiny-coco",
                    "detections": [
                        {
                            "label": "car",
                            "class_id": 2,
                            "score": 0.70,
                            "box": [466.4, 71.2, 680.1, 170.3],
                        },
                        {
                            "label": "dog",
                            "class_id": 16,
                            "score": 0.60,
                            "box": [133.0, 188.1, 370.2, 513.4],
                        },
                    ],
                    "image": {"width": 768, "height": 576},
                    "timing_ms": {"decode": 3.1, "inference": 31.0, "total": 40.2},
                }
            ]
        }
    }


class SegmentMask(BaseModel):
    """One instance's mask over the whole image; exactly one of counts, polygons, png_base64."""

    format: MaskFormat
    size: list[int] = Field(description="[height, width] of the image.")
    counts: str | None = Field(
        None,
        description="COCO compressed RLE (column-major), as pycocotools.mask.encode gives: "
        "decode with pycocotools.mask.decode({'size': size, 'counts': counts}).",
    )
    polygons: list[list[float]] | None = Field(
        None,
        description="COCO polygons [x1, y1, x2, y2, ...] through pixel corners: the outer "
        "boundary of each connected part (holes are not represented).",
    )
    png_base64: str | None = Field(
        None, description="1-bit PNG of the whole image, white = object, base64."
    )


class SegmentInstance(BaseModel):
    label: str
    class_id: int
    score: float
    box: list[float] = Field(description="[x1, y1, x2, y2] in original pixels.")
    area: int = Field(description="Mask pixels.")
    mask: SegmentMask


class SegmentResponse(BaseModel):
    model: str
    model_version: int = Field(1, description="The version of `model` that answered.")
    instances: list[SegmentInstance] = Field(description="Best first.")
    image: ImageInfo
    timing_ms: dict[str, float]
    tiling: TilingInfo | None = Field(None, description="Present when `tiling` was asked for.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": "shapes-maskrcnn-mobilenet_v2",
                    "instances": [
                        {
                            "label": "circle",
                            "class_id": 1,
                            "score": 0.998,
                            "box": [40.2, 30.8, 121.5, 112.0],
                            "area": 5180,
                            "mask": {"format": "rle", "size": [300, 400], "counts": "Sa11..."},
                        }
                    ],
                    "image": {"width": 400, "height": 300},
                    "timing_ms": {"decode": 1.2, "inference": 61.0, "total": 70.3},
                }
            ]
        }
    }


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_image"])
    message: str = Field(examples=["the upload is not a decodable image"])
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    status: str = Field(description="ready | loading | degraded")
    models: dict[str, bool] = Field(description="model name -> loaded and warmed up")
    failed: dict[str, str] = Field(
        default_factory=dict, description="name@version -> why it is not served"
    )
    pending: list[str] = Field(
        default_factory=list,
        description="models still being built (IIS_EXPECTED_MODELS) that are not ready yet",
    )


class ModelVersionState(BaseModel):
    name: str
    version: int
    state: str = Field(description="loading | ready | unloading | failed | unloaded")
    reason: str = Field(description="why it failed, or why a reload was refused")
    task: str | None
    since: float = Field(description="Unix time of the last state change")


class ModelsResponse(BaseModel):
    defaults: dict[str, str] = Field(description="task -> default model name")
    models: list[dict[str, Any]] = Field(description="every ready version: card, providers, ...")
    versions: list[ModelVersionState] = Field(description="every version the server knows")
    failed: dict[str, str]
    pending: list[str] = Field(default_factory=list)
    runtime: dict[str, Any]


class RepositoryIndexEntry(BaseModel):
    """One row of the Open Inference Protocol's repository index."""

    name: str
    version: str
    state: str = Field(description="READY | LOADING | UNLOADING | UNAVAILABLE")
    reason: str = ""


class RepositoryLoadResponse(BaseModel):
    name: str
    versions: list[ModelVersionState]
