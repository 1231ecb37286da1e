from __future__ import annotations

from fastapi import APIRouter

from service.preprocess import needed_side
from service.routes.common import (
    DetectQueryDep,
    ImageUpload,
    ModelName,
    RegistryDep,
    SettingsDep,
    detection_fields,
    read_upload,
)
from service.schemas import ERROR_RESPONSES, Detection, DetectResponse, ImageInfo, TilingInfo
from service.tasks.detect import detect
from service.tasks.tiled import detect_tiled
from service.timing import Timing

router = APIRouter(tags=["detect"])


@router.post("/detect", response_model=DetectResponse, responses=ERROR_RESPONSES)
async def detect_objects(
    registry: RegistryDep,
    settings: SettingsDep,
    image: ImageUpload,
    query: DetectQueryDep,
    model: ModelName = None,
) -> DetectResponse:
    """Objects in one image: labelled boxes in original pixels, best first."""
    timing = Timing()
    runtime = registry.get("detect", model)
    options = query.options(runtime.card.labels)
    tiling_info = None
    if query.tiling.mode != "off":
        upload = await read_upload(image, settings, min_side=None)  # tiles need every pixel
        tiled = await detect_tiled(runtime, upload, options, query.tiling, timing)
        found, image_info = tiled.found, tiled.image
        tiling_info = TilingInfo(**vars(tiled.tiling))
    else:
        upload = await read_upload(image, settings, min_side=needed_side(runtime.card))
        result = await detect(runtime, upload, options, timing)
        found, image_info = result.answer, result.image
    return DetectResponse(
        model=runtime.name,
        model_version=runtime.version,
        detections=[Detection(**detection_fields(found, i)) for i in range(len(found))],
        image=ImageInfo(width=image_info.width, height=image_info.height),
        timing_ms=timing.report(),
        tiling=tiling_info,
    )
