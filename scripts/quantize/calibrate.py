"""Calibration and evaluation images: files -> the service's decode -> the task's preprocess ->
(1, C, H, W) tensors; the bundled photo sets; and the check that the two sets never overlap."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scripts.constants import IMAGE_SUFFIXES, service_max_pixels
from service.cards import ModelCard
from service.images import DecodedImage, decode
from service.preprocess import to_batch

# scikit-image's bundled photographs (BSD licence, installed with the package: no download).
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "microaneurysms.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png",
    "retina.jpg", "rocket.jpg", "text.png",
)  # fmt: skip
# scripts/recipes/defaults.py TEST_DATA photos: Darknet's samples and face_recognition's portraits.
EVAL_PHOTOS = (
    "dog.jpg", "person.jpg", "horses.jpg", "giraffe.jpg", "eagle.jpg", "kite.jpg",
    "obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg",
)  # fmt: skip


def load_image(path: Path, card: ModelCard) -> DecodedImage:
    """The service's decode, at the reduced JPEG scale the service would use for this card."""
    from service.preprocess import needed_side

    return decode(path.read_bytes(), max_pixels=service_max_pixels(), min_side=needed_side(card))


def mirrored(image: DecodedImage) -> DecodedImage:
    return DecodedImage(image.pixels[:, ::-1].copy(), image.width, image.height, image.format)


def tensors_of(paths: Sequence[Path], card: ModelCard, *, mirror: bool) -> list[np.ndarray]:
    out = []
    for path in tqdm(paths, desc="calibration images", unit="img", leave=False):
        image = load_image(path, card)
        for view in [image, mirrored(image)] if mirror else [image]:
            out.append(to_batch([view], card.preprocess)[0])
    return out


def images_in(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise SystemExit(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def skimage_photos() -> list[Path]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    return [folder / name for name in SKIMAGE_PHOTOS]


def eval_photos() -> list[Path]:
    from scripts.recipes.defaults import testdata_path

    paths = [testdata_path(name) for name in EVAL_PHOTOS]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"test photos missing: {missing}; run python -m scripts build-models")
    return paths


def photo_calibration(
    card: ModelCard, calibration: str, limit: int
) -> tuple[list[np.ndarray], dict[str, Any]]:
    if calibration == "builtin":
        paths, source = skimage_photos(), "scikit-image bundled photos (skimage/data)"
    else:
        paths, source = images_in(Path(calibration))[:limit], str(calibration)
    info = {
        "images": len(paths),
        "tensors": 2 * len(paths),
        "source": source,
        "files": [p.name for p in paths],
        "views": "each image and its mirror image",
    }
    return tensors_of(paths, card, mirror=True), info


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_disjoint(calibration: Sequence[str], evaluation: Sequence[Path]) -> None:
    """Refuse an evaluation image that is also a calibration image (same bytes)."""
    calib = {_digest(Path(p)) for p in calibration}
    shared = [p.name for p in evaluation if _digest(p) in calib]
    if shared:
        raise SystemExit(f"calibration and evaluation share images: {shared}")
