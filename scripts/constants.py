"""Paths and constants every offline tool shares, defined once. Standard library only: the
build check (`python -m scripts build-models --check`) runs before any dependency is installed."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout
MODELS = ROOT / "models"

# Downloads, built models and test data, outside the checkout (shared by every checkout).
CACHE = Path(os.environ.get("IIS_CACHE_DIR", Path.home() / ".cache" / "image-inference-service"))

# What the tools read as an image from a folder: every format the service decodes.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


def service_max_pixels() -> int:
    """The service's default decode limit (Settings.max_pixels), so a tool decodes a photo
    exactly as the service would; read from the settings, never re-typed."""
    from service.settings import Settings

    default = Settings.model_fields["max_pixels"].default
    assert isinstance(default, int)
    return default
