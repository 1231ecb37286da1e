from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.detections import label_of
from service.preprocess import needed_side
from service.routes.common import (
    ImageUpload,
    ModelName,
    RegistryDep,
    SettingsDep,
    read_upload,
)
from service.schemas import ERROR_RESPONSES, ClassifyResponse, ClassPrediction, ImageInfo
from service.tasks.classify import classify
from service.timing import Timing

router = APIRouter(tags=["classify"])


@router.post("/classify", response_model=ClassifyResponse, responses=ERROR_RESPONSES)
async def classify_image(
    registry: RegistryDep,
    settings: SettingsDep,
    image: ImageUpload,
    top_k: Annotated[int, Query(ge=1, le=100, description="How many classes to return.")] = 5,
    model: ModelName = None,
) -> ClassifyResponse:
    """Top-k classes for one image."""
    timing = Timing()
    runtime = registry.get("classify", model)
    upload = await read_upload(image, settings, min_side=needed_side(runtime.card))
    result = await classify(runtime, upload, top_k, timing)
    found, labels = result.answer, runtime.card.labels
    return ClassifyResponse(
        model=runtime.name,
        model_version=runtime.version,
        predictions=[
            ClassPrediction(label=label_of(labels, int(i)), class_id=int(i), score=float(s))
            for i, s in zip(found.class_id, found.score, strict=True)
        ],
        image=ImageInfo(width=result.image.width, height=result.image.height),
        timing_ms=timing.report(),
    )
