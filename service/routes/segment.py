from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.images import EncodedImage
from service.routes.common import (
    ClassFilter,
    ImageUpload,
    IouThreshold,
    MaxTiles,
    ModelName,
    TileOverlap,
    TileSize,
    TilingParam,
    app_settings,
    decode_upload,
    get_registry,
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
from service.tasks.segment import (
    GraphResize,
    MaskFormat,
    SegmentOptions,
    SegmentResult,
    segment,
)
from service.tasks.tiled import TilingReport, segment_tiled
from service.tiling import TilingOptions
from service.timing import Timing

router = APIRouter(tags=["segment"])


@router.post(
    "/segment",
    response_model=SegmentResponse,
    response_model_exclude_none=True,
    responses=ERROR_RESPONSES,
)
async def segment_instances(
    request: Request,
    image: ImageUpload,
    score_threshold: Annotated[
        float, Query(ge=0.0, le=1.0, description="Drop instances scoring below this.")
    ] = 0.25,
    iou_threshold: IouThreshold = 0.45,
    max_detections: Annotated[
        int, Query(ge=1, le=1000, description="Most instances returned, best first.")
    ] = 100,
    classes: ClassFilter = None,
    mask_threshold: Annotated[
        float,
        Query(gt=0.0, lt=1.0, description="A pixel is in the mask when its probability is above."),
    ] = 0.5,
    mask_format: Annotated[
        MaskFormat,
        Query(description="rle: COCO compressed RLE; polygon: COCO polygons; png: 1-bit PNG."),
    ] = "rle",
    tiling: TilingParam = "off",
    tile_size: TileSize = None,
    tile_overlap: TileOverlap = 0.25,
    max_tiles: MaxTiles = 16,
    model: ModelName = None,
) -> SegmentResponse:
    """Object instances in one image: labelled boxes and masks in original pixels, best first."""
    timing = Timing()
    runtime = get_registry(request).get("segment", model)
    labels = runtime.card.labels
    options = SegmentOptions(
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        classes=resolve_classes(classes, labels) if classes else None,
        mask_threshold=mask_threshold,
    )
    report: TilingReport | None = None
    if tiling == "off":
        decoded = await decode_upload(
            image,
            app_settings(request),
            timing,
            min_side=GraphResize.of(runtime.card).min_size,
        )
        result = await segment(runtime, decoded, options, mask_format, timing)
    else:
        upload = EncodedImage(await image.read(), app_settings(request).max_pixels, None)
        tiles = TilingOptions(tiling, tile_size, tile_overlap, max_tiles)
        tiled = await segment_tiled(runtime, upload, options, mask_format, tiles, timing)
        decoded, report = tiled.image, tiled.tiling
        result = SegmentResult(tiled.instances, tiled.encoded)
    found = result.instances
    instances = [
        SegmentInstance(
            label=labels[c] if c < len(labels) else str(c),
            class_id=int(c),
            score=round(float(s), 5),
            box=[round(float(v), 2) for v in box],
            area=mask.area,
            mask=SegmentMask.model_validate(encoded),
        )
        for box, c, s, mask, encoded in zip(
            found.xyxy, found.class_id, found.score, found.masks, result.encoded, strict=True
        )
    ]
    return SegmentResponse(
        model=runtime.name,
        model_version=runtime.version,
        instances=instances,
        image=ImageInfo(width=decoded.width, height=decoded.height),
        timing_ms=timing.report(),
        tiling=TilingInfo(**vars(report)) if report else None,
    )
