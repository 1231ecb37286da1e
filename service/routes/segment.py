from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.images import EncodedImage
from service.routes.common import (
    ClassFilter,
    DetectOptionsDep,
    ImageUpload,
    ModelName,
    RegistryDep,
    SettingsDep,
    TilingDep,
    decode_upload,
)
from service.schemas import (
    ERROR_RESPONSES,
    ImageInfo,
    SegmentInstance,
    SegmentMask,
    SegmentResponse,
    TilingInfo,
)
from service.tasks.detect import resolve_classes
from service.tasks.segment import GraphResize, MaskFormat, SegmentOptions, segment
from service.tasks.tiled import segment_tiled
from service.timing import Timing

router = APIRouter(tags=["segment"])


@router.post(
    "/segment",
    response_model=SegmentResponse,
    response_model_exclude_none=True,
    responses=ERROR_RESPONSES,
)
async def segment_instances(
    registry: RegistryDep,
    settings: SettingsDep,
    image: ImageUpload,
    detect_options: DetectOptionsDep,
    tiles: TilingDep,
    classes: ClassFilter = None,
    mask_threshold: Annotated[
        float,
        Query(gt=0.0, lt=1.0, description="A pixel is in the mask when its probability is above."),
    ] = 0.5,
    mask_format: Annotated[
        MaskFormat,
        Query(description="rle: COCO compressed RLE; polygon: COCO polygons; png: 1-bit PNG."),
    ] = "rle",
    model: ModelName = None,
) -> SegmentResponse:
    """Object instances in one image: labelled boxes and masks in original pixels, best first."""
    timing = Timing()
    runtime = registry.get("segment", model)
    options = SegmentOptions(
        score_threshold=detect_options.score_threshold,
        iou_threshold=detect_options.iou_threshold,
        max_detections=detect_options.max_detections,
        classes=resolve_classes(classes, runtime.card.labels) if classes else None,
        mask_threshold=mask_threshold,
    )
    tiling_info = None
    if tiles.mode == "off":
        min_side = GraphResize.of(runtime.card).min_size
        decoded = await decode_upload(image, settings, timing, min_side=min_side)
        result = await segment(runtime, decoded, options, mask_format, timing)
        found, encoded = result.instances, result.encoded
    else:
        upload = EncodedImage(await image.read(), settings.max_pixels, None)
        tiled = await segment_tiled(runtime, upload, options, mask_format, tiles, timing)
        decoded, found, encoded = tiled.image, tiled.found, tiled.encoded or []
        tiling_info = TilingInfo(**vars(tiled.tiling))
    masks = found.masks or []
    return SegmentResponse(
        model=runtime.name,
        model_version=runtime.version,
        instances=[
            SegmentInstance(
                label=found.label(i),
                class_id=int(found.class_id[i]),
                score=round(float(found.score[i]), 5),
                box=[round(float(v), 2) for v in found.xyxy[i]],
                area=masks[i].area,
                mask=SegmentMask.model_validate(encoded[i]),
            )
            for i in range(len(found))
        ],
        image=ImageInfo(width=decoded.width, height=decoded.height),
        timing_ms=timing.report(),
        tiling=tiling_info,
    )
