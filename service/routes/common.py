"""What every task route shares: the registry, the settings, reading and decoding an upload."""

from __future__ import annotations

from typing import Annotated

from fastapi import File, Query, Request, UploadFile

from service.images import DecodedImage, EncodedImage, decode
from service.repository import ModelRegistry
from service.settings import Settings
from service.tiling import MAX_TILE, MAX_TILES, MIN_TILE, TilingMode
from service.timing import Timing, in_thread

# Parameters several routes share, declared once so their limits and docs cannot drift apart.
ImageUpload = Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP, TIFF or GIF.")]
ModelName = Annotated[
    str | None,
    Query(
        max_length=80,
        description="Model name, optionally pinned to a version (`name@3`); default per "
        "/v1/models, and the newest ready version.",
    ),
]
IouThreshold = Annotated[
    float,
    Query(
        ge=0.0,
        le=1.0,
        description="NMS drops a box overlapping a better one of its class by more than this IoU.",
    ),
]
ClassFilter = Annotated[
    list[str] | None,
    Query(
        max_length=1000,
        description="Only these classes: label names or ids, repeated or comma-separated "
        "(`classes=dog,cat` or `classes=16&classes=15`).",
    ),
]
TilingParam = Annotated[
    TilingMode,
    Query(
        description="Small objects: also run overlapping tiles of the photo at the model's "
        "input size and merge them with the whole view. auto: only when the photo's longer "
        "side is at least twice the model's input side.",
    ),
]
TileSize = Annotated[
    int | None,
    Query(
        ge=MIN_TILE,
        le=MAX_TILE,
        description="Tile side in photo pixels (default: the model's input side).",
    ),
]
TileOverlap = Annotated[
    float, Query(ge=0.0, le=0.75, description="Fraction of a tile shared with its neighbour.")
]
MaxTiles = Annotated[
    int,
    Query(ge=1, le=MAX_TILES, description="Most tiles per photo; tiles grow to keep within."),
]


def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def read_upload(
    upload: UploadFile, settings: Settings, *, min_side: int | None
) -> EncodedImage:
    """Read one form file (already bounded by the body limit); the task decodes it in the
    worker thread that preprocesses it."""
    return EncodedImage(await upload.read(), settings.max_pixels, min_side)


async def decode_upload(
    upload: UploadFile, settings: Settings, timing: Timing, *, min_side: int | None
) -> DecodedImage:
    """Read one form file (already bounded by the body limit) and decode it off the loop."""
    data = await upload.read()
    return await in_thread(
        timing, "decode", lambda: decode(data, max_pixels=settings.max_pixels, min_side=min_side)
    )
