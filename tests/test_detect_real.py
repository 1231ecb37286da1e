"""The default COCO YOLOv3-tiny on real photos (Debian's darknet sample data, fetched by
scripts/build_models.py), against boxes drawn by hand.

Hand boxes: every object a person sees whose box covers at least 32x32 px (COCO medium, large),
[x1, y1, x2, y2] in original pixels, drawn on a pixel grid and checked by eye. An object counts
as found when a detection with an accepted label overlaps it with IoU >= 0.5 (one detection per
object). `must` marks the objects the detector has to find; the others (occluded, or where
YOLOv3-tiny is known to be weak) count towards the recall figure only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from service.boxes import iou
from tests.helpers import serve

pytestmark = pytest.mark.real_weights


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


def match(truths: list[Truth], detections: list[dict]) -> list[float]:
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
    used: set[int] = set()
    for flat in np.argsort(-overlap, axis=None):
        i, j = np.unravel_index(flat, overlap.shape)
        if overlap[i, j] < 0.5:
            break
        if best[i] == 0.0 and j not in used:
            best[i] = float(overlap[i, j])
            used.add(int(j))
    return best


@pytest.fixture(scope="module")
def results(default_models: Path, testdata: Path) -> dict[str, dict]:
    with serve(default_models) as client:
        out = {}
        for name in TRUTH:
            r = client.post(
                "/detect?model=yolov3-tiny-coco",
                files={"image": (name, (testdata / name).read_bytes(), "image/jpeg")},
            )
            assert r.status_code == 200, r.text
            out[name] = r.json()
        return out


@pytest.mark.parametrize("name", list(TRUTH))
def test_finds_what_a_person_sees(results, name):
    body = results[name]
    found = match(TRUTH[name], body["detections"])
    missed = [t for t, f in zip(TRUTH[name], found, strict=True) if t.must and f < 0.5]
    assert not missed, f"{name}: missed {missed}; detections {body['detections']}"


def test_recall_over_all_hand_boxes(results):
    found = [f for name in TRUTH for f in match(TRUTH[name], results[name]["detections"])]
    recall = sum(f >= 0.5 for f in found) / len(found)
    print(
        f"recall@IoU0.5 at score 0.25: {recall:.3f} ({sum(f >= 0.5 for f in found)}/{len(found)})"
    )
    assert recall >= 0.6


def test_dog_photo_in_detail(results):
    body = results["dog.jpg"]
    assert body["model"] == "yolov3-tiny-coco"
    assert body["image"] == {"width": 768, "height": 576}
    labels = [d["label"] for d in body["detections"]]
    assert {"dog", "bicycle"} <= set(labels) and {"car", "truck"} & set(labels)
    # nothing absurd on a porch photo
    assert not {"person", "airplane", "giraffe", "zebra"} & set(labels)
    for d in body["detections"]:
        assert 0.25 <= d["score"] <= 1.0
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= 768 and 0 <= y1 < y2 <= 576
