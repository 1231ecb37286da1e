"""Reading the masks of a /segment answer: COCO compressed RLE -> a boolean array.

The reader's side of `service.masks` (which encodes them): pycocotools' string format, runs
over the image in column-major order starting with a run of zeros. Needs numpy (the `cli`
extra).
"""

from __future__ import annotations

import numpy as np


def decompress_counts(text: str) -> list[int]:
    """Inverse of `service.masks.compress_counts` (pycocotools' rleFrString)."""
    counts: list[int] = []
    p = 0
    data = text.encode("ascii")
    while p < len(data):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("RLE string ends inside a count")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_rle(rle: dict[str, object]) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list counts) -> (H, W) bool."""
    size = rle.get("size")
    counts = rle.get("counts")
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"RLE size must be [height, width], got {size!r}")
    height, width = int(size[0]), int(size[1])
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        runs = np.asarray(decompress_counts(counts), dtype=np.int64)
    elif isinstance(counts, (list, tuple)):
        runs = np.asarray(counts, dtype=np.int64)
    else:
        raise ValueError("RLE counts must be a string or a list of integers")
    if np.any(runs < 0) or int(runs.sum()) != height * width:
        raise ValueError(f"RLE runs sum to {int(runs.sum())}, not {height}x{width}")
    values = np.zeros(runs.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((width, height)).T
