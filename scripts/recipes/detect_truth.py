"""Hand-drawn boxes on Darknet's sample photos (Debian's darknet data, fetched by
scripts/recipes/build_models.py into the test data), and how detections are matched to them.

Every object a person sees whose box covers at least 32x32 px (COCO medium, large),
[x1, y1, x2, y2] in original pixels, drawn on a pixel grid and checked by eye. An object counts
as found when a detection with an accepted label overlaps it with IoU >= 0.5 (one detection per
object). `must` marks the objects the detector has to find; the others (occluded, or where
YOLOv3-tiny is known to be weak) count towards the recall figure only. Used by
tests/real/test_detect.py and scripts/quantize/evaluate.py.
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
    # 1352x900: two walkers on a beach, kites. Found since the detector decodes its 26x26 head
    # with the anchors it was trained with (boxed far too small before: IoU 0.2 to 0.4)
    "kite.jpg": [
        Truth(("person",), (114, 612, 164, 762)),
        Truth(("person",), (217, 699, 270, 853)),
        Truth(("kite",), (592, 80, 670, 151)),
    ],
}


def _pairs(truths: list[Truth], detections: list[dict[str, Any]]) -> list[tuple[int, int, float]]:
    """(truth, detection, IoU) pairs at IoU >= 0.5 with an accepted label: greedy by IoU, each
    detection and each truth used once."""
    if not truths or not detections:
        return []
    boxes = np.array([d["box"] for d in detections], np.float32)
    overlap = iou(np.array([t.box for t in truths], np.float32), boxes)
    for i, t in enumerate(truths):
        overlap[i, [d["label"] not in t.labels for d in detections]] = 0.0
    return greedy_pairs(overlap)


def match(truths: list[Truth], detections: list[dict[str, Any]]) -> list[float]:
    """Per truth, the IoU of the detection that found it (0.0 if none)."""
    best = [0.0] * len(truths)
    for i, _, value in _pairs(truths, detections):
        best[i] = value
    return best


# --- small objects, for the tiling measurements (scripts/bench/tiling.py) -------------------
# Drawn the same way on 2.5-4x crops with a 10-20 px grid, down to about 12 px on the longer
# side. Smaller things a person can still make out (far cars, far kite surfers) are `IGNORE`
# regions: a detection centred in one is neither found nor false.
VEHICLE = ("car", "truck", "bus")
PERSON = ("person",)
GLASS = ("cup", "wine glass")  # a tumbler is either to many annotators

SMALL: dict[str, list[Truth]] = {
    "kite.jpg": [  # the kites and people under 32 px that TRUTH leaves out
        Truth(("kite",), (281, 238, 305, 281)),
        Truth(("kite",), (467, 340, 485, 359)),
        Truth(("kite",), (577, 345, 600, 370)),
        Truth(("kite",), (302, 375, 326, 407)),
        Truth(("kite",), (1083, 394, 1101, 422)),
        Truth(("person",), (23, 531, 39, 558)),  # child in a red cap
        Truth(("person",), (41, 511, 53, 562)),
        Truth(("person",), (82, 508, 101, 566)),
        Truth(("person",), (95, 538, 109, 566), must=False),  # crouching behind the man
        Truth(("person",), (177, 541, 191, 574)),  # girl in the surf
        Truth(("person",), (347, 487, 356, 504)),  # kite surfers
        Truth(("person",), (521, 505, 532, 530)),
        Truth(("person",), (535, 515, 554, 534)),
    ],
}

IGNORE: dict[str, list[tuple[int, int, int, int]]] = {
    "kite.jpg": [
        (755, 372, 775, 396),
        (440, 455, 475, 490),
        (770, 445, 830, 470),
        (1195, 440, 1225, 470),
    ],
    "small-vehicles1.jpeg": [(620, 140, 780, 192)],  # far traffic, under 12 px
    # a bicycle behind a balcony's railing, barely visible; a round no-parking sign
    "bus.jpg": [(650, 10, 770, 100), (0, 250, 35, 330)],
    # a glass ashtray and a silver sugar bowl (bowl or not), the mirror on the back wall
    "t1.jpg": [(310, 700, 447, 770), (1065, 597, 1170, 717), (1085, 105, 1245, 210)],
    **{  # a car behind the light-blue one: only its roof shows
        f"vtest-{i}.png": [(752, 28, 768, 48)] for i in (300, 600, 750)
    },
}

# The camera of vtest.avi does not move: the parked van and car are in every frame.
VTEST_PARKED = [
    Truth(VEHICLE, (651, 46, 722, 99)),  # a white van
    Truth(VEHICLE, (734, 50, 768, 92)),  # cut by the right edge
]

# Never tuned on: the tiling defaults were chosen on TRUTH + SMALL alone.
HELD_OUT: dict[str, list[Truth]] = {
    "small-vehicles1.jpeg": [  # 1068x580, SAHI's demo: a motorway from a bridge
        Truth(VEHICLE, (322, 323, 382, 362)),
        Truth(VEHICLE, (383, 279, 418, 304)),
        Truth(VEHICLE, (448, 310, 495, 339)),
        Truth(VEHICLE, (524, 225, 544, 241)),
        Truth(VEHICLE, (544, 235, 565, 251)),
        Truth(VEHICLE, (564, 242, 589, 261)),
        Truth(VEHICLE, (605, 241, 629, 259)),
        Truth(VEHICLE, (701, 233, 721, 251)),
        Truth(VEHICLE, (719, 242, 748, 273)),
        Truth(VEHICLE, (760, 229, 781, 248)),
        Truth(VEHICLE, (766, 260, 794, 284)),
        Truth(VEHICLE, (833, 309, 874, 344)),
        Truth(VEHICLE, (643, 191, 658, 208)),
        Truth(VEHICLE, (622, 206, 639, 219)),
        Truth(VEHICLE, (618, 202, 629, 211), must=False),  # half behind the white car
        Truth(VEHICLE, (627, 195, 639, 204)),
        Truth(VEHICLE, (657, 203, 671, 215)),
        Truth(VEHICLE, (785, 204, 800, 220)),
        Truth(VEHICLE, (750, 191, 761, 201)),
    ],
    "terrain2.png": [  # 1024x682, SAHI's demo: five jeeps in a desert
        Truth(VEHICLE, (221, 443, 443, 603)),
        Truth(VEHICLE, (500, 453, 619, 547)),
        Truth(VEHICLE, (639, 430, 716, 491)),
        Truth(VEHICLE, (727, 423, 791, 474)),
        Truth(VEHICLE, (790, 403, 835, 451)),
    ],
    # Added in the third round (BENCH_DATA in scripts/recipes/defaults.py), drawn before the
    # detector ever ran on these photos: large photos of ordinary scenes, where tiles cut big
    # objects (the false boxes tiling risks), and pedestrians 15-45 px wide in a video frame.
    "bus.jpg": [  # 810x1080, Ultralytics: people walking past a minibus
        Truth(VEHICLE, (10, 230, 805, 722)),
        Truth(PERSON, (52, 398, 243, 902)),
        Truth(PERSON, (222, 407, 345, 858)),
        Truth(PERSON, (668, 395, 810, 880)),  # cut by the right edge
        Truth(PERSON, (0, 550, 78, 875), must=False),  # only an arm and a coat at the left edge
    ],
    "zidane.jpg": [  # 1280x720, Ultralytics: two men in suits, one pointing across the other
        Truth(PERSON, (123, 202, 1152, 720)),
        Truth(PERSON, (750, 42, 1135, 720)),
        Truth(("tie",), (440, 437, 500, 720)),
        Truth(("tie",), (985, 300, 1020, 415), must=False),  # above the pointing arm only
    ],
    "t1.jpg": [  # 1280x886, InsightFace: six people around a card table
        Truth(PERSON, (0, 233, 262, 886)),
        Truth(PERSON, (262, 100, 460, 670), must=False),  # mostly behind the man in grey
        Truth(PERSON, (338, 218, 700, 640)),
        Truth(PERSON, (640, 290, 915, 625)),
        Truth(PERSON, (875, 2, 1280, 660)),
        Truth(PERSON, (985, 233, 1280, 690)),
        Truth(("dining table",), (95, 625, 1280, 886)),
        Truth(GLASS, (174, 625, 252, 718)),
        Truth(GLASS, (574, 562, 660, 655)),  # a brandy glass
        Truth(GLASS, (767, 619, 806, 662)),
        Truth(GLASS, (844, 557, 896, 660)),
        Truth(GLASS, (959, 600, 1020, 720)),
        Truth(("bowl",), (390, 642, 520, 710)),  # peanuts
        Truth(("book",), (1117, 695, 1277, 760), must=False),
    ],
    "vtest-300.png": [  # 768x576, OpenCV's vtest.avi frame 300: a car park from a first floor
        Truth(PERSON, (187, 159, 219, 234)),
        Truth(PERSON, (244, 159, 270, 221)),
        Truth(PERSON, (298, 159, 322, 231)),
        Truth(PERSON, (312, 210, 344, 296)),
        Truth(PERSON, (582, 160, 610, 234)),
        Truth(PERSON, (621, 161, 643, 232)),
        *VTEST_PARKED,
    ],
    "vtest-600.png": [
        Truth(PERSON, (190, 144, 215, 214)),
        Truth(PERSON, (570, 200, 596, 287)),
        Truth(PERSON, (670, 209, 701, 296)),
        Truth(PERSON, (456, 302, 505, 418)),
        Truth(PERSON, (641, 305, 670, 411)),
        Truth(PERSON, (285, 430, 331, 576)),  # cut by the bottom edge
        *VTEST_PARKED,
    ],
    "vtest-750.png": [
        Truth(PERSON, (183, 202, 221, 282)),
        Truth(PERSON, (237, 215, 274, 304)),
        Truth(PERSON, (370, 182, 401, 260)),
        Truth(PERSON, (399, 212, 428, 300)),  # half behind a sign
        Truth(PERSON, (509, 178, 536, 249)),
        Truth(PERSON, (663, 117, 689, 174)),
        Truth(PERSON, (635, 216, 678, 319)),
        Truth(PERSON, (744, 62, 758, 98), must=False),  # in front of the light-blue car
        *VTEST_PARKED,
    ],
}


def tuning_set() -> dict[str, list[Truth]]:
    """TRUTH with the small objects of SMALL added: what the tiling defaults were tuned on."""
    return {name: truths + SMALL.get(name, []) for name, truths in TRUTH.items()}


def false_detections(
    name: str, truths: list[Truth], detections: list[dict[str, Any]], min_score: float = 0.5
) -> list[dict[str, Any]]:
    """Detections scoring >= min_score that found no hand-drawn object (a second box on one
    object counts) and are not centred in an IGNORE region of `name`."""
    confident = [d for d in detections if d["score"] >= min_score]
    used = {j for _, j, _ in _pairs(truths, confident)}
    regions = IGNORE.get(name, [])
    out = []
    for j, d in enumerate(confident):
        if j in used:
            continue
        x1, y1, x2, y2 = d["box"]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        if not any(a <= cx <= c and b <= cy <= e for a, b, c, e in regions):
            out.append(d)
    return out
