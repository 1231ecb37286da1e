from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.preprocess import needed_side
from service.routes.common import (
    ImageUpload,
    ModelName,
    app_settings,
    get_registry,
    read_upload,
)
from service.schemas import ERROR_RESPONSES, ClassifyResponse, ClassPrediction, ImageInfo
from service.tasks.classify import classify
from service.timing import Timing

router = APIRouter(tags=["classify"])


@router.post("/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES)
async def classify_image(
    request: Request,
    image: ImageUpload,
    top_k: Annotated[int, Query(ge=1, le=100, description="How many classes to return.")] = 5,
    model: ModelName = None,
) -> ClassifyResponse:
    """Top-k classes for one image."""
    timing = Timing()
    runtime = get_registry(request).get("classify", model)
    upload = await read_upload(image, app_settings(request), min_side=needed_side(runtime.card))
    result = await classify(runtime, upload, top_k, timing)
    labels = runtime.card.labels
    predictions = [
        ClassPrediction(
            label=labels[i] if i < len(labels) else str(i), class_id=int(i), score=float(s)
        )
        for i, s in zip(result.predictions.class_id, result.predictions.score, strict=True)
    ]
    return ClassifyResponse(
        model=runtime.name,
        model_version=runtime.version,
        predictions=predictions,
        image=ImageInfo(width=result.image.width, height=result.image.height),
        timing_ms=timing.report(),
    )
