"""Generate a small COCO-format instance-segmentation dataset: flat objects (circle, square,
triangle, star) with exact masks, composited onto real photos shipped inside scikit-image.

    python -m scripts make-shapes --out data/shapes            # train 800, val 100
    python -m scripts make-shapes --out data/shapes --train 50 --val 10 --seed 3

Writes OUT/<split>/images/*.jpg and OUT/<split>/annotations.json (masks as COCO compressed
RLE, iscrowd 0). The validation split uses photos the training split never sees, so its
figures measure objects on new backgrounds, not memorised ones. Every pixel of an object is
in its mask and no other pixel is: shapes are drawn without anti-aliasing, and an object
hidden more than half by a later one is not placed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from service.masks import BoxMask, encode_rle

CLASSES = ("circle", "square", "triangle", "star")
# scikit-image's bundled photos (no download); the two lists share no photo.
TRAIN_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
    "coins.png",
    "grass.png",
    "gravel.png",
    "brick.png",
    "moon.png",
    "clock_motion.png",
)
VAL_PHOTOS = ("coffee.png", "rocket.jpg", "camera.png")
SIZES = ((427, 320), (320, 427), (400, 300), (480, 360), (360, 360))
MIN_VISIBLE = 0.5  # an earlier object must keep this fraction of its pixels
MIN_AREA = 150


@dataclass(frozen=True)
class SplitSpec:
    name: str
    count: int
    seed: int
    photos: tuple[str, ...]


def load_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from scikit-image's data folder (grey photos are replicated)."""
    path = resources.files("skimage.data") / name
    with resources.as_file(path) as file, Image.open(file) as img:
        return np.asarray(img.convert("RGB"))


def _crop(photo: np.ndarray, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of the photo with the aspect of (w, h), resized to it, maybe mirrored."""
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.45, 1.0) * min(pw / w, ph / h)
    cw, ch = max(8, int(w * scale)), max(8, int(h * scale))
    x, y = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
    out = Image.fromarray(photo[y : y + ch, x : x + cw]).resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(out)
    return arr[:, ::-1] if rng.random() < 0.5 else arr


def _outline(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        radii, n = [r], 4
    elif kind == "triangle":
        radii, n = [r], 3
    else:  # star
        radii, n = [r, r * 0.45], 10
    return [
        (
            cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / n),
            cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / n),
        )
        for i in range(n)
    ]


def _shape_mask(kind: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    r = rng.uniform(16, 0.3 * min(w, h))
    cx, cy = rng.uniform(0.3 * r, w - 0.3 * r), rng.uniform(0.3 * r, h - 0.3 * r)
    canvas = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
    else:
        draw.polygon(_outline(kind, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=1)
    return np.asarray(canvas, dtype=bool)


def _texture(w: int, h: int, photos: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float32 fill: a flat colour, a gradient, stripes, or another photo's patch,
    with a little noise and shading so no two objects look alike."""
    kind = rng.integers(0, 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if kind == 0:
        tex = np.broadcast_to(c1, (h, w, 3)).astype(np.float32)
    elif kind == 1 or kind == 2:
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a)) / max(w, h)
        if kind == 2:
            t = (np.sin(t * rng.uniform(20, 60)) > 0).astype(np.float32)
        else:
            t = t - t.min()
        tex = c1 + np.clip(t, 0, 1)[..., None] * (c2 - c1)
    else:
        photo = photos[int(rng.integers(len(photos)))]
        tex = _crop(photo, w, h, rng).astype(np.float32)
        tex = tex * rng.uniform(0.6, 1.2) + rng.uniform(-40, 40, 3)
    light = 1.0 + 0.25 * np.sin(xx / w * rng.uniform(1, 4) + yy / h * rng.uniform(1, 4))
    noise = rng.normal(0, rng.uniform(0, 12), (h, w, 1))
    return np.asarray(np.clip(tex * light[..., None] + noise, 0, 255), dtype=np.float32)


def make_image(
    photos: list[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """-> (H, W, 3) uint8 image, [(class index, (H, W) bool visible mask)]."""
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    image = _crop(photos[int(rng.integers(len(photos)))], w, h, rng).astype(np.float32)
    image = np.clip(image * rng.uniform(0.7, 1.2), 0, 255)
    objects: list[tuple[int, np.ndarray]] = []
    wanted = int(rng.choice([1, 2, 3, 4, 5], p=[0.15, 0.3, 0.3, 0.15, 0.1]))
    for _ in range(wanted * 10):
        if len(objects) == wanted:
            break
        cls = int(rng.integers(len(CLASSES)))
        mask = _shape_mask(CLASSES[cls], w, h, rng)
        if mask.sum() < MIN_AREA:
            continue
        if any((m & ~mask).sum() < max(MIN_VISIBLE * m.sum(), MIN_AREA) for _, m in objects):
            continue  # it would hide too much of an earlier object: place another
        objects = [(c, m & ~mask) for c, m in objects]
        image[mask] = _texture(w, h, photos, rng)[mask]
        objects.append((cls, mask))
    return image.astype(np.uint8), objects


def make_split(out: Path, spec: SplitSpec, quality: int = 92) -> Path:
    """Write out/<spec.name>/{images/, annotations.json}; returns the annotations path."""
    rng = np.random.default_rng(spec.seed)
    photos = [load_photo(p) for p in spec.photos]
    folder = out / spec.name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(spec.count), desc=f"shapes {spec.name}", unit="img", leave=False):
        pixels, objects = make_image(photos, rng)
        h, w = pixels.shape[:2]
        file_name = f"{spec.name}_{i:05d}.jpg"
        Image.fromarray(pixels).save(folder / "images" / file_name, quality=quality)
        images.append({"id": i + 1, "file_name": file_name, "width": w, "height": h})
        for cls, mask in objects:
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cls + 1,
                    "segmentation": encode_rle(BoxMask.from_full(mask)),
                    "area": int(mask.sum()),
                    "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {
            "description": f"synthetic shapes on scikit-image photos ({spec.name})",
            "generator": "scripts/recipes/shapes.py",
            "seed": spec.seed,
            "backgrounds": list(spec.photos),
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)
        ],
    }
    path = folder / "annotations.json"
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(coco), encoding="utf-8")
    tmp.replace(path)  # the annotations file appears last: its presence means the split is whole
    return path


def splits(train: int, val: int, seed: int) -> list[SplitSpec]:
    return [
        SplitSpec("train", train, seed, TRAIN_PHOTOS),
        SplitSpec("val", val, seed + 1_000_003, VAL_PHOTOS),
    ]


def describe(train: int, val: int, seed: int) -> dict[str, object]:
    """What a model card says about this dataset."""
    import skimage

    return {
        "generator": "scripts/recipes/shapes.py",
        "classes": list(CLASSES),
        "seed": seed,
        "train": {"images": train, "backgrounds": list(TRAIN_PHOTOS)},
        "val": {"images": val, "backgrounds": list(VAL_PHOTOS)},
        "backgrounds_from": f"scikit-image {skimage.__version__} skimage/data (BSD-3-Clause "
        "package; photo credits in skimage/data/README.txt)",
    }
