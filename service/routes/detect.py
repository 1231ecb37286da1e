from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from service.images import EncodedImage
from service.preprocess import needed_side
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
    get_registry,
    read_upload,
)
from service.schemas import ERROR_RESPONSES, Detection, DetectResponse, ImageInfo, TilingInfo
from service.tasks.detect import DetectOptions, detect, resolve_classes
from service.tasks.tiled import detect_tiled
from service.tiling import TilingOptions
from service.timing import Timing

router = APIRouter(tags=["detect"])


@router.post("/detect", response_model=DetectResponse, responses=ERROR_RESPONSES)
async def detect_objects(
    request: Request,
    image: ImageUpload,
    score_threshold: Annotated[
        float, Query(ge=0.0, le=1.0, description="Drop detections scoring below this.")
    ] = 0.25,
    iou_threshold: IouThreshold = 0.45,
    max_detections: Annotated[
        int, Query(ge=1, le=1000, description="Most detections returned, best first.")
    ] = 100,
    classes: ClassFilter = None,
    tiling: TilingParam = "off",
    tile_size: TileSize = None,
    tile_overlap: TileOverlap = 0.25,
    max_tiles: MaxTiles = 16,
    model: ModelName = None,
) -> DetectResponse:
    """Objects in one image: labelled boxes in original pixels, best first."""
    timing = Timing()
    runtime = get_registry(request).get("detect", model)
    labels = runtime.card.labels
    options = DetectOptions(
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_detections=max_detections,
        classes=resolve_classes(classes, labels) if classes else None,
    )
    tiling_info = None
    if tiling != "off":
        upload = EncodedImage(await image.read(), app_settings(request).max_pixels, None)
        tiles = TilingOptions(tiling, tile_size, tile_overlap, max_tiles)
        tiled = await detect_tiled(runtime, upload, options, tiles, timing)
        found, image_info = tiled.detections, tiled.image
        tiling_info = TilingInfo(**vars(tiled.tiling))
    else:
        upload = await read_upload(image, app_settings(request), min_side=needed_side(runtime.card))
        result = await detect(runtime, upload, options, timing)
        found, image_info = result.detections, result.image
    return DetectResponse(
        model=runtime.name,
        model_version=runtime.version,
        detections=[
            Detection(
                label=labels[c] if c < len(labels) else str(c),
                class_id=int(c),
                score=round(float(s), 5),
                box=[round(float(v), 2) for v in box],
            )
            for box, c, s in zip(found.xyxy, found.class_id, found.score, strict=True)
        ],
        image=ImageInfo(width=image_info.width, height=image_info.height),
        timing_ms=timing.report(),
        tiling=tiling_info,
    )
