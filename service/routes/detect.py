from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter

from service.images import EncodedImage
from service.routes.common import (
    ClassFilter,
    DetectOptionsDep,
    ImageUpload,
    ModelName,
    RegistryDep,
    SettingsDep,
    TilingDep,
    needed_side,
    read_upload,
)
from service.schemas import ERROR_RESPONSES, Detection, DetectResponse, ImageInfo, TilingInfo
from service.tasks.detect import detect, resolve_classes
from service.tasks.tiled import detect_tiled
from service.timing import Timing

router = APIRouter(tags=["detect"])


@router.post("/detect", response_model=DetectResponse, responses=ERROR_RESPONSES)
async def detect_objects(
    registry: RegistryDep,
    settings: SettingsDep,
    image: ImageUpload,
    options: DetectOptionsDep,
    tiles: TilingDep,
    classes: ClassFilter = None,
    model: ModelName = None,
) -> DetectResponse:
    """Objects in one image: labelled boxes in original pixels, best first."""
    timing = Timing()
    runtime = registry.get("detect", model)
    if classes:
        options = replace(options, classes=resolve_classes(classes, runtime.card.labels))
    tiling_info = None
    if tiles.mode != "off":
        upload = EncodedImage(await image.read(), settings.max_pixels, None)
        tiled = await detect_tiled(runtime, upload, options, tiles, timing)
        found, image_info = tiled.found, tiled.image
        tiling_info = TilingInfo(**vars(tiled.tiling))
    else:
        upload = await read_upload(image, settings, min_side=needed_side(runtime.card))
        result = await detect(runtime, upload, options, timing)
        found, image_info = result.answer, result.image
    return DetectResponse(
        model=runtime.name,
        model_version=runtime.version,
        detections=[
            Detection(
                label=found.label(i),
                class_id=int(found.class_id[i]),
                score=round(float(found.score[i]), 5),
                box=[round(float(v), 2) for v in found.xyxy[i]],
            )
            for i in range(len(found))
        ],
        image=ImageInfo(width=image_info.width, height=image_info.height),
        timing_ms=timing.report(),
        tiling=tiling_info,
    )
