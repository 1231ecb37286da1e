"""An ultralytics ONNX file (YOLOv5 `(N, A, 5+C)` or YOLOv8/11 `(N, 4+C, A)`), served as it is:
`inspect_ultralytics` checks its output layout, `import_ultralytics` installs it with its card.
No torch needed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from scripts.export.common import write_model_dir
from scripts.export.detect_card import LETTERBOX_PREPROCESS, detector_card


@dataclass(frozen=True)
class UltralyticsLayout:
    layout: str  # "yolov5" | "yolov8"
    input_name: str
    input_shape: list[int | str]
    output_name: str
    output_shape: list[int | str]
    size: tuple[int, int]
    anchors: int


def _dims(value_info: Any) -> list[int | str]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def inspect_ultralytics(
    onnx_path: Path, num_classes: int, size: tuple[int, int] | None = None
) -> UltralyticsLayout:
    """Run the file once on a blank image and tell its layout from the output shape; raise
    ValueError saying what was expected if it is neither YOLOv5 nor YOLOv8/11 raw output."""
    model = onnx.load(str(onnx_path))
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path}: expected one image input, found {len(inputs)}")
    in_shape = _dims(inputs[0])
    if len(in_shape) != 4 or (isinstance(in_shape[1], int) and in_shape[1] != 3):
        raise ValueError(f"{onnx_path}: input shape {in_shape} is not (N, 3, H, W)")
    if size is None:
        if not all(isinstance(d, int) and d > 0 for d in in_shape[2:]):
            raise ValueError(f"{onnx_path}: input H, W are dynamic ({in_shape}); pass --size")
        size = (int(in_shape[2]), int(in_shape[3]))
    if len(model.graph.output) < 1:
        raise ValueError(f"{onnx_path}: the graph has no outputs")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    blank = np.full((1, 3, *size), 114 / 255, np.float32)
    out = session.run(None, {inputs[0].name: blank})[0]
    c = num_classes
    grid = sum((size[0] // s) * (size[1] // s) for s in (8, 16, 32))
    if out.ndim == 3 and out.shape[2] == 5 + c and out.shape[1] != 4 + c:
        layout, anchors = "yolov5", int(out.shape[1])
    elif out.ndim == 3 and out.shape[1] == 4 + c:
        layout, anchors = "yolov8", int(out.shape[2])
    else:
        raise ValueError(
            f"{onnx_path}: first output has shape {tuple(out.shape)}; with {c} labels expected "
            f"YOLOv5 (1, {3 * grid}, {5 + c}) or YOLOv8/11 (1, {4 + c}, {grid}) raw predictions "
            "(export without nms=True, and give the labels the model was trained on)"
        )
    return UltralyticsLayout(
        layout=layout,
        input_name=inputs[0].name,
        input_shape=in_shape,
        output_name=model.graph.output[0].name,
        output_shape=_dims(model.graph.output[0]) or list(out.shape),
        size=size,
        anchors=anchors,
    )


def import_ultralytics(
    onnx_path: Path,
    *,
    name: str,
    labels: Sequence[str],
    out_dir: Path,
    size: tuple[int, int] | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Check an ultralytics ONNX file's layout and install it unchanged with its card."""
    info = inspect_ultralytics(onnx_path, len(labels), size)
    card = detector_card(
        name=name,
        labels=labels,
        input_name=info.input_name,
        input_shape=info.input_shape,
        output_name=info.output_name,
        output_shape=info.output_shape,
        layout=info.layout,
        preprocess={**LETTERBOX_PREPROCESS, "size": list(info.size)},
        source={"format": "ultralytics-onnx", "file": onnx_path.name, **(source or {})},
        export={
            "tool": "python -m scripts export detect --onnx",
            "onnxruntime": ort.__version__,
            "parity_vs_torch": None,
            "checked": f"{info.layout} layout, {info.anchors} anchors, {len(labels)} classes "
            f"at {info.size[0]}x{info.size[1]} (one onnxruntime run)",
        },
    )
    folder = write_model_dir(out_dir, name, onnx_path.read_bytes(), card)
    print(f"{name}: {info.layout} layout, {info.anchors} anchors -> {folder}")
    return folder
