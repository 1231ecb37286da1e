"""Test helpers: images made in memory, settings and apps over a models folder."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ROOT / "models"


def encode(img: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def noise_image(w: int = 64, h: int = 48, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode=mode)


def settings_for(models_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: load models before serving, one warm-up run, no .env file."""
    values: dict[str, object] = {
        "models_dir": models_dir,
        "background_load": False,
        "warmup_runs": 1,
        "intra_op_threads": 1,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@contextmanager
def serve(models_dir: Path, **overrides: object) -> Iterator[TestClient]:
    """A TestClient over create_app(); startup and shutdown (the lifespan) really run."""
    with TestClient(create_app(settings_for(models_dir, **overrides))) as client:
        yield client
