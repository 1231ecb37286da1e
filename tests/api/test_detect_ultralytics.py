"""Ultralytics-layout ONNX files (YOLOv5 (N, A, 5+C), YOLOv8/11 (N, 4+C, A)): the layout check,
the card, and exact boxes through /detect from a synthetic model with a known output."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from scripts.export.cli import main as export_main
from scripts.export.common import to_onnx_bytes
from scripts.export.ultralytics import import_ultralytics, inspect_ultralytics
from tests.support.app import serve
from tests.support.images import encode

LABELS = ["apple", "banana", "cherry"]
SIZE = 64
ANCHORS_V8 = (SIZE // 8) ** 2 + (SIZE // 16) ** 2 + (SIZE // 32) ** 2  # 84

# (cx, cy, w, h) in input pixels, class id, score. For a 128x64 image letterboxed into 64x64
# (scale 0.5, 16 px of padding on top) the original box is ((x - 0) / 0.5, (y - 16) / 0.5).
BOXES = [
    ((20, 30, 16, 20), 1, 0.9),  # A -> [24, 8, 56, 48]
    ((21, 31, 16, 20), 1, 0.8),  # B: IoU 0.80 with A, same class -> [26, 10, 58, 50]
    ((44, 32, 20, 12), 2, 0.6),  # C -> [68, 20, 108, 44]
    ((10, 40, 8, 8), 0, 0.1),  # D: under the default threshold -> [12, 40, 28, 56]
]
ORIGINAL = {
    "A": ("banana", [24, 8, 56, 48], 0.9),
    "B": ("banana", [26, 10, 58, 50], 0.8),
    "C": ("cherry", [68, 20, 108, 44], 0.6),
    "D": ("apple", [12, 40, 28, 56], 0.1),
}


def raw_output(layout: str) -> torch.Tensor:
    c = len(LABELS)
    if layout == "yolov8":
        out = torch.zeros(1, 4 + c, ANCHORS_V8)
        for i, (box, cls, score) in enumerate(BOXES):
            out[0, :4, 10 * i] = torch.tensor(box, dtype=torch.float32)
            out[0, 4 + cls, 10 * i] = score
        return out
    out = torch.zeros(1, 3 * ANCHORS_V8, 5 + c)
    for i, (box, cls, score) in enumerate(BOXES):
        out[0, 10 * i, :4] = torch.tensor(box, dtype=torch.float32)
        out[0, 10 * i, 4] = score  # objectness
        out[0, 10 * i, 5 + cls] = 1.0
    return out


class Constant(nn.Module):
    """Stands in for a trained YOLO: ignores the picture, returns a fixed prediction."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("out", out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out.expand(x.shape[0], -1, -1) + 0 * x.mean()


def write_onnx(path: Path, out: torch.Tensor, output_name: str = "output0") -> Path:
    example = torch.zeros(1, 3, SIZE, SIZE)
    path.write_bytes(
        to_onnx_bytes(Constant(out), example, input_name="images", output_names=[output_name])
    )
    return path


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ultralytics")
    return {
        layout: write_onnx(root / f"{layout}.onnx", raw_output(layout))
        for layout in ("yolov5", "yolov8")
    }


@pytest.mark.parametrize(
    ("layout", "anchors"), [("yolov5", 3 * ANCHORS_V8), ("yolov8", ANCHORS_V8)]
)
def test_inspect_tells_the_layout(onnx_files, layout, anchors):
    info = inspect_ultralytics(onnx_files[layout], len(LABELS))
    assert (info.layout, info.anchors, info.size) == (layout, anchors, (SIZE, SIZE))
    assert info.input_name == "images" and info.output_name == "output0"


def test_wrong_label_count_and_nms_exports_are_refused(onnx_files, tmp_path):
    with pytest.raises(
        ValueError, match=r"expected YOLOv5 \(1, 252, 9\) or YOLOv8/11 \(1, 8, 84\)"
    ):
        inspect_ultralytics(onnx_files["yolov8"], 4)
    nms_export = write_onnx(tmp_path / "nms.onnx", torch.zeros(1, 300, 6))
    with pytest.raises(ValueError, match="export without nms=True"):
        inspect_ultralytics(nms_export, len(LABELS))


def test_cli_installs_the_file_unchanged_with_its_card(onnx_files, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    export_main(
        ["detect", "--onnx", str(onnx_files["yolov8"]), "--labels", str(labels), "--name", "v8",
         "--out", str(tmp_path / "models")]
    )  # fmt: skip
    folder = tmp_path / "models" / "v8"
    assert (folder / "model.onnx").read_bytes() == onnx_files["yolov8"].read_bytes()
    card = json.loads((folder / "model.json").read_text())
    assert card["task"] == "detect" and card["labels"] == LABELS
    assert card["postprocess"]["layout"] == "yolov8"
    assert card["preprocess"]["resize"] == "letterbox"
    assert card["preprocess"]["size"] == [SIZE, SIZE] and card["preprocess"]["pad_value"] == 114
    assert card["outputs"][0]["name"] == "output0"


@pytest.fixture(scope="module", params=["yolov5", "yolov8"])
def client(request, onnx_files, tmp_path_factory) -> Iterator[TestClient]:
    models = tmp_path_factory.mktemp(f"models-{request.param}")
    import_ultralytics(onnx_files[request.param], name="synthetic", labels=LABELS, out_dir=models)
    with serve(models) as c:
        yield c


def found(client: TestClient, image: bytes, query: str = "") -> list[tuple[str, list, float]]:
    r = client.post(f"/detect{query}", files={"image": ("x.png", image, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "synthetic"
    return [(d["label"], d["box"], d["score"]) for d in body["detections"]]


def expect(*names: str) -> list[tuple[str, list, float]]:
    return [ORIGINAL[n] for n in names]


WIDE = encode(Image.new("RGB", (128, 64), (90, 90, 90)), "PNG")


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("", "AC"),  # B suppressed by A (same class, IoU 0.8), D under 0.25
        ("?iou_threshold=0.9", "ABC"),
        ("?score_threshold=0.05", "ACD"),
        ("?score_threshold=0.7", "A"),
        ("?max_detections=1", "A"),
        ("?classes=cherry", "C"),
        ("?classes=0,2&score_threshold=0.05", "CD"),
        ("?classes=APPLE&classes=banana&score_threshold=0.05", "AD"),
    ],
)
def test_known_boxes_come_back_in_original_pixels(client, query, names):
    got = found(client, WIDE, query)
    assert [g[0] for g in got] == [ORIGINAL[n][0] for n in names]
    np.testing.assert_allclose([g[1] for g in got], [ORIGINAL[n][1] for n in names], atol=0.01)
    np.testing.assert_allclose([g[2] for g in got], [ORIGINAL[n][2] for n in names], atol=1e-5)


def test_exif_rotated_photo_answers_in_displayed_pixels(client):
    """Stored 64x128 with EXIF orientation 6 (rotate 90 clockwise) = displayed 128x64."""
    stored = Image.new("RGB", (64, 128), (90, 90, 90))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif.tobytes())
    r = client.post("/detect", files={"image": ("r.jpg", buf.getvalue(), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {"width": 128, "height": 64}
    boxes = [d["box"] for d in r.json()["detections"]]
    np.testing.assert_allclose(boxes, [ORIGINAL["A"][1], ORIGINAL["C"][1]], atol=0.01)
