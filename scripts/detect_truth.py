"""Hand-drawn boxes on Darknet's sample photos (Debian's darknet data, fetched by
scripts/build_models.py into the test data), and how detections are matched to them.

Every object a person sees whose box covers at least 32x32 px (COCO medium, large),
[x1, y1, x2, y2] in original pixels, drawn on a pixel grid and checked by eye. An object counts
as found when a detection with an accepted label overlaps it with IoU >= 0.5 (one detection per
object). `must` marks the objects the detector has to find; the others (occluded, or where
YOLOv3-tiny is known to be weak) count towards the recall figure only. Used by
tests/test_detect_real.py and scripts/quantize.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.boxes import greedy_pairs, iou


@dataclass(frozen=True)
class Truth:
    labels: tuple[str, ...]  # accepted labels (a pickup truck is a car to many annotators)
    box: tuple[int, int, int, int]
    must: bool = True


TRUTH: dict[str, list[Truth]] = {
    "dog.jpg": [  # 768x576: a dog and a bicycle on a porch, a pickup in the street
        Truth(("dog",), (133, 222, 310, 540)),
        Truth(("bicycle",), (127, 140, 566, 420)),
        Truth(("truck", "car"), (466, 73, 690, 170)),
        Truth(("motorcycle",), (55, 71, 110, 122), must=False),  # half behind a post
    ],
    "person.jpg": [  # 640x424
        Truth(("person",), (190, 100, 275, 375)),
        Truth(("dog",), (63, 263, 205, 345)),
        Truth(("horse",), (405, 138, 600, 347)),
    ],
    "horses.jpg": [  # 773x512: five horses overlapping each other
        Truth(("horse",), (0, 195, 315, 410)),
        Truth(("horse",), (172, 196, 418, 362), must=False),
        Truth(("horse",), (280, 210, 456, 322), must=False),
        Truth(("horse",), (440, 213, 595, 347), must=False),
        Truth(("horse",), (0, 187, 153, 262), must=False),
    ],
    "giraffe.jpg": [  # 500x500
        Truth(("giraffe",), (168, 28, 448, 442)),
        Truth(("zebra",), (250, 203, 422, 428)),
    ],
    "eagle.jpg": [Truth(("bird",), (133, 87, 600, 447))],  # 773x512
    "kite.jpg": [  # 1352x900: two walkers on a beach, kites (YOLOv3-tiny boxes them too small)
        Truth(("person",), (114, 612, 164, 762), must=False),
        Truth(("person",), (217, 699, 270, 853), must=False),
        Truth(("kite",), (592, 80, 670, 151), must=False),
    ],
}


def match(truths: list[Truth], detections: list[dict[str, Any]]) -> list[float]:
    """Per truth, the IoU of the detection that found it (0.0 if none). Greedy by IoU, each
    detection used once."""
    best = [0.0] * len(truths)
    if not detections:
        return best
    boxes = np.array([d["box"] for d in detections], np.float32)
    gt = np.array([t.box for t in truths], np.float32)
    overlap = iou(gt, boxes)
    for i, t in enumerate(truths):
        overlap[i, [d["label"] not in t.labels for d in detections]] = 0.0
    for i, _, value in greedy_pairs(overlap):
        best[i] = value
    return best
