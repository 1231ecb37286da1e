"""The card every detector gets, whichever way it came in (Darknet or ultralytics): raw
candidates out of the graph, in one of two layouts (`postprocess.layout`); the service does
thresholds, class-wise NMS and the letterbox undo (service/tasks/detect.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

# ultralytics' own preprocessing: letterbox on grey 114, RGB, 0..1, no mean/std.
LETTERBOX_PREPROCESS: dict[str, Any] = {
    "resize": "letterbox",
    "interpolation": "bilinear",
    "scale": 1 / 255,
    "mean": [0.0, 0.0, 0.0],
    "std": [1.0, 1.0, 1.0],
    "channel_order": "RGB",
    "layout": "NCHW",
    "pad_value": 114,
}

LAYOUT_DOC = {
    "yolov5": "(batch, anchors, 5 + classes): cx, cy, w, h in input pixels, objectness, "
    "class probabilities; score = objectness * class probability",
    "yolov8": "(batch, 4 + classes, anchors): cx, cy, w, h in input pixels, class "
    "probabilities (no objectness)",
}


def read_labels(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def detector_card(
    *,
    name: str,
    labels: Sequence[str],
    input_name: str,
    input_shape: list[int | str],
    output_name: str,
    output_shape: list[int | str],
    layout: str,
    preprocess: dict[str, Any],
    source: dict[str, Any],
    export: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": name,
        "task": "detect",
        "version": "1",
        "labels": list(labels),
        "inputs": [
            {
                "name": input_name,
                "shape": input_shape,
                "dtype": "float32",
                "description": "letterboxed RGB image / 255, NCHW",
            }
        ],
        "outputs": [
            {
                "name": output_name,
                "shape": output_shape,
                "dtype": "float32",
                "description": LAYOUT_DOC[layout],
            }
        ],
        "preprocess": preprocess,
        "postprocess": {
            "layout": layout,
            "box_format": "cxcywh",
            "in_graph": "YOLO head decode (grid, anchors, sigmoid, stride)"
            if layout == "yolov5" and source.get("format") == "darknet"
            else "as exported by ultralytics",
            "in_service": "score threshold, class filter, class-wise NMS, letterbox undo, clip",
        },
        "source": source,
        "export": export,
    }
