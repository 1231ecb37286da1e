from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.routes.common import (
    DetectQueryDep,
    ImageUpload,
    ModelName,
    RegistryDep,
    SettingsDep,
    decode_upload,
    detection_fields,
    read_upload,
)
from service.schemas import (
    ERROR_RESPONSES,
    ImageInfo,
    SegmentInstance,
    SegmentMask,
    SegmentResponse,
    TilingInfo,
)
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
    query: DetectQueryDep,
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
    found_options = query.options(runtime.card.labels)
    options = SegmentOptions(**vars(found_options), mask_threshold=mask_threshold)
    tiling_info = None
    if query.tiling.mode == "off":
        min_side = GraphResize.of(runtime.card).min_size
        decoded = await decode_upload(image, settings, timing, min_side=min_side)
        result = await segment(runtime, decoded, options, mask_format, timing)
        found, encoded = result.instances, result.encoded
    else:
        upload = await read_upload(image, settings, min_side=None)  # tiles need every pixel
        tiled = await segment_tiled(runtime, upload, options, mask_format, query.tiling, timing)
        decoded, found, encoded = tiled.image, tiled.found, tiled.encoded or []
        tiling_info = TilingInfo(**vars(tiled.tiling))
    masks = found.masks or []
    return SegmentResponse(
        model=runtime.name,
        model_version=runtime.version,
        instances=[
            SegmentInstance(
                **detection_fields(found, i),
                area=masks[i].area,
                mask=SegmentMask.model_validate(encoded[i]),
            )
            for i in range(len(found))
        ],
        image=ImageInfo(width=decoded.width, height=decoded.height),
        timing_ms=timing.report(),
        tiling=tiling_info,
    )
