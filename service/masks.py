"""Binary instance masks and their wire formats: COCO compressed RLE, polygons, PNG.

Pure numpy (+ Pillow for PNG). The RLE is byte-for-byte what pycocotools' `mask.encode`
produces (tests decode it with pycocotools): runs over the image in column-major order
(down each column, then the next column), starting with a run of zeros, and the counts packed
into pycocotools' 6-bit ASCII string. A mask is kept only inside its window (`BoxMask`), so
encoding costs O(box area), not O(image area), however large the photo is.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Decoding is the reader's side of the wire format: it lives with the client (`iis --draw`).
from iis_client.masks import decode_rle as decode_rle
from iis_client.masks import decompress_counts as decompress_counts


@dataclass(frozen=True)
class BoxMask:
    """A binary mask of an image of `size` (height, width) that is zero outside a window.

    bits: (h, w) bool, the window's pixels; the window's top-left pixel is (top, left) and the
        window lies inside the image.
    """

    bits: np.ndarray
    top: int
    left: int
    size: tuple[int, int]

    def __post_init__(self) -> None:
        h, w = self.bits.shape
        height, width = self.size
        if self.bits.dtype != np.bool_:
            raise ValueError(f"bits must be bool, got {self.bits.dtype}")
        if self.top < 0 or self.left < 0 or self.top + h > height or self.left + w > width:
            raise ValueError(
                f"window {w}x{h} at ({self.left}, {self.top}) exceeds the image {width}x{height}"
            )

    @classmethod
    def from_full(cls, mask: np.ndarray) -> BoxMask:
        """mask: (H, W) array, nonzero = foreground."""
        bits = np.asarray(mask) != 0
        return cls(bits, 0, 0, (bits.shape[0], bits.shape[1]))

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.bits))

    def full(self) -> np.ndarray:
        """(H, W) bool over the whole image."""
        out = np.zeros(self.size, dtype=bool)
        h, w = self.bits.shape
        out[self.top : self.top + h, self.left : self.left + w] = self.bits
        return out


def rle_counts(mask: BoxMask) -> np.ndarray:
    """Uncompressed COCO RLE counts: (K,) int64 run lengths, zeros first, column-major."""
    height, width = mask.size
    total = height * width
    h = mask.bits.shape[0]
    # Zero rows above and below every window column: each column then starts and ends outside
    # the mask, so its value changes come in (rise, fall) pairs.
    padded = np.zeros((h + 2, mask.bits.shape[1]), dtype=np.int8)
    padded[1:-1] = mask.bits
    cols, rows = np.nonzero(np.diff(padded, axis=0).T)  # sorted by column, then row
    changes = (cols.astype(np.int64) + mask.left) * height + mask.top + rows
    # A run that reaches the bottom of one column and one that starts at the top of the next
    # are one run in column-major order: their fall and rise land on the same index.
    if changes.size > 1:
        same = np.flatnonzero(changes[1:] == changes[:-1])
        if same.size:
            changes = np.delete(changes, np.concatenate([same, same + 1]))
    bounds = np.concatenate([[0], changes, [total]])
    counts = np.diff(bounds)
    if counts.size > 1 and counts[-1] == 0:  # the mask reaches the last pixel
        counts = counts[:-1]
    return counts


def compress_counts(counts: Sequence[int] | np.ndarray) -> str:
    """pycocotools' rleToString: each count (minus the one two places back, from the fourth
    on) as little-endian 5-bit groups with a continuation bit, offset into printable ASCII."""
    out: list[str] = []
    values = [int(c) for c in counts]
    for i, count in enumerate(values):
        x = count - values[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negatives stay negative, as in C
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def encode_rle(mask: BoxMask) -> dict[str, object]:
    """-> {"size": [h, w], "counts": str}, as pycocotools.mask.encode returns (decoded)."""
    return {"size": list(mask.size), "counts": compress_counts(rle_counts(mask))}


# Unit pixel edges, clockwise on screen (y down), for the four neighbour directions:
# (row step, col step of the neighbour), (start corner, end corner) as (dx, dy) from (col, row).
_EDGES = (
    ((-1, 0), ((0, 0), (1, 0))),  # background above: top edge, walking east
    ((0, 1), ((1, 0), (1, 1))),  # background right: right edge, walking south
    ((1, 0), ((1, 1), (0, 1))),  # background below: bottom edge, walking west
    ((0, -1), ((0, 1), (0, 0))),  # background left: left edge, walking north
)


def _trace_loops(bits: np.ndarray) -> list[np.ndarray]:
    """Closed pixel-boundary loops of a (h, w) bool array, as (K, 2) int (x, y) corner
    vertices with collinear points removed. Outer boundaries run clockwise on screen, holes
    anticlockwise. Where two pixels touch only at a corner, the walk turns so that the
    pixels belong to separate loops (4-connectivity)."""
    padded = np.pad(bits, 1)
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    for (dr, dc), ((sx, sy), (ex, ey)) in _EDGES:
        neighbour = padded[1 + dr : padded.shape[0] - 1 + dr, 1 + dc : padded.shape[1] - 1 + dc]
        rows, cols = np.nonzero(bits & ~neighbour)
        starts.append(np.stack([cols + sx, rows + sy], axis=1))
        ends.append(np.stack([cols + ex, rows + ey], axis=1))
    start = np.concatenate(starts)
    end = np.concatenate(ends)
    if start.size == 0:
        return []
    stride = bits.shape[1] + 2
    start_key = start[:, 1] * stride + start[:, 0]
    end_key = end[:, 1] * stride + end[:, 0]
    outgoing: dict[int, list[int]] = {}
    for index, key in enumerate(start_key.tolist()):
        outgoing.setdefault(key, []).append(index)
    direction = end - start
    used = np.zeros(len(start), dtype=bool)
    loops: list[np.ndarray] = []
    for first in range(len(start)):
        if used[first]:
            continue
        chain = [first]
        used[first] = True
        current = first
        while True:
            options = outgoing[int(end_key[current])]
            if len(options) > 1:
                # Two pixels meet at this corner only: turn right (clockwise on screen, the
                # cross product of the two directions > 0) so each stays in its own loop.
                dx, dy = direction[current]
                options = sorted(
                    options, key=lambda e: -(dx * direction[e][1] - dy * direction[e][0])
                )
            current = options[0]
            if current == first or used[current]:
                break
            used[current] = True
            chain.append(current)
        points = start[chain]
        turn = np.any(direction[chain] != np.roll(direction[chain], 1, axis=0), axis=1)
        loops.append(points[turn])
    return loops


def polygons(mask: BoxMask) -> list[list[float]]:
    """Outer boundaries of the mask's 4-connected parts, as COCO polygons [x1, y1, x2, y2, ...]
    through pixel corners in image coordinates. Holes are left out: COCO reads several
    polygons as a union, so a hole cannot be expressed (RLE is exact)."""
    out: list[list[float]] = []
    for loop in _trace_loops(mask.bits):
        x = loop[:, 0].astype(np.float64)
        y = loop[:, 1].astype(np.float64)
        signed_area = 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
        if signed_area <= 0:  # anticlockwise on screen: a hole
            continue
        xy = np.stack([x + mask.left, y + mask.top], axis=1)
        out.append(xy.ravel().tolist())
    return out


def polygon_area(polygon: Sequence[float]) -> float:
    """Shoelace area of a flat [x1, y1, x2, y2, ...] polygon."""
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def to_png(mask: BoxMask) -> bytes:
    """The whole-image mask as a 1-bit PNG (white = object)."""
    buffer = io.BytesIO()
    Image.fromarray(mask.full()).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_base64(mask: BoxMask) -> str:
    return base64.b64encode(to_png(mask)).decode("ascii")
