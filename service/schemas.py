"""The HTTP contract: response models named by role (see DESIGN.md's table)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ImageInfo(BaseModel):
    width: int = Field(description="Width of the image as displayed (EXIF orientation applied).")
    height: int


class ClassPrediction(BaseModel):
    label: str
    class_id: int
    score: float = Field(description="Probability after the card's activation (softmax).")


class ClassifyResponse(BaseModel):
    model: str
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
    failed: dict[str, str] = Field(default_factory=dict)


class ModelsResponse(BaseModel):
    defaults: dict[str, str] = Field(description="task -> default model name")
    models: list[dict[str, Any]]
    failed: dict[str, str]
    runtime: dict[str, Any]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Not a decodable image, or a missing field."},
    404: {"model": ErrorResponse, "description": "No model of that name for this task."},
    413: {"model": ErrorResponse, "description": "Upload bytes or pixels over the limit."},
    415: {"model": ErrorResponse, "description": "A format the service does not accept."},
    422: {"model": ErrorResponse, "description": "A query parameter out of range."},
    429: {"model": ErrorResponse, "description": "Queue full; retry after `Retry-After`."},
    503: {"model": ErrorResponse, "description": "Model still loading; retry after `Retry-After`."},
}
