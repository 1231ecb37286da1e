"""What every task route shares: the registry, the settings, reading and decoding an upload."""

from __future__ import annotations

from fastapi import Request, UploadFile

from service.cards import ModelCard
from service.images import DecodedImage, decode
from service.runtime import ModelRegistry
from service.settings import Settings
from service.timing import Timing, in_thread


def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def needed_side(card: ModelCard) -> int | None:
    """The smallest source side that still feeds the model at full resolution (JPEG draft)."""
    spec = card.preprocess
    if spec.resize == "crop":
        return spec.resize_short
    if spec.size is not None:
        return max(spec.size)
    return None


async def decode_upload(
    upload: UploadFile, settings: Settings, timing: Timing, *, min_side: int | None
) -> DecodedImage:
    """Read one form file (already bounded by the body limit) and decode it off the loop."""
    data = await upload.read()
    return await in_thread(
        timing, "decode", lambda: decode(data, max_pixels=settings.max_pixels, min_side=min_side)
    )
