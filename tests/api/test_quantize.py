"""The quantize command on tiny models built by the project's exporters: the INT8 folder loads,
its card validates and records the method, the service serves it, the graph really holds
QuantizeLinear/DequantizeLinear, and outputs stay close to FP32 on smooth images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from scripts.quantize.evaluate import match_pairs
from scripts.quantize.plan import Config, Plan
from scripts.quantize.quantize import TensorReader, quantize_model, tail_nodes
from service.cards import ModelCard, read_card
from service.images import DecodedImage
from service.preprocess import to_batch
from tests.support.app import serve
from tests.support.darknet import LABELS
from tests.support.images import encode


def smooth_images(n: int, size: int = 96) -> list[DecodedImage]:
    """Colour gradients with a soft blob: photo-like statistics, no noise, seeded."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 1, 3), rng.uniform(-1, 1, 3), rng.uniform(-1, 1, 3)
        cx, cy = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05)
        img = a + b * xx[..., None] * 0.5 + c * blob[..., None] * 0.5
        pixels = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        out.append(DecodedImage(pixels, size, size, "PNG"))
    return out


def tensors(card: ModelCard, images: list[DecodedImage]) -> list[np.ndarray]:
    return [to_batch([image], card.preprocess)[0] for image in images]


def synthetic_plan(card: ModelCard) -> Plan:
    """Calibrate on 16 smooth images; 'measure' nothing (the tests measure)."""
    info = {"images": 16, "tensors": 16, "source": "synthetic gradients (tests)"}
    return Plan(tensors(card, smooth_images(16)), info, lambda fp32, int8: {"table": []})


def run(session: ort.InferenceSession, batch: np.ndarray) -> np.ndarray:
    return np.asarray(session.run(None, {session.get_inputs()[0].name: batch})[0])


def fp32_and_int8_outputs(
    models: Path, name: str, images: list[DecodedImage]
) -> tuple[np.ndarray, np.ndarray]:
    """models/name and models/name-int8 run on the same batch, preprocessed per name's card."""
    card = read_card(models / name).card
    batch = np.concatenate(tensors(card, images))
    fp32 = ort.InferenceSession(str(models / name / "model.onnx"))
    int8 = ort.InferenceSession(str(models / f"{name}-int8" / "model.onnx"))
    return run(fp32, batch), run(int8, batch)


def with_int8_copy(models: Path, name: str) -> Path:
    """Quantise models/name into models/name-int8 (synthetic calibration, 2 timing runs)."""
    card = read_card(models / name).card
    quantize_model(
        models / name,
        models / f"{name}-int8",
        config=Config(threads=1),
        runs=2,
        plan=synthetic_plan(card),
    )
    return models


@pytest.fixture(scope="module")
def int8_classifier(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ holding tiny-cls and its INT8 copy tiny-cls-int8."""
    models = tmp_path_factory.mktemp("int8-models")
    shutil.copytree(tiny_classifier_dir / "tiny-cls", models / "tiny-cls")
    return with_int8_copy(models, "tiny-cls")


@pytest.fixture(scope="module")
def int8_detector(tiny_detector_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ holding tiny-yolo and its INT8 copy tiny-yolo-int8."""
    models = tmp_path_factory.mktemp("int8-det")
    shutil.copytree(tiny_detector_dir / "tiny-yolo", models / "tiny-yolo")
    return with_int8_copy(models, "tiny-yolo")


def test_the_int8_folder_has_a_valid_card_that_records_the_quantisation(int8_classifier):
    loaded = read_card(int8_classifier / "tiny-cls-int8")
    source = json.loads((int8_classifier / "tiny-cls" / "model.json").read_text())
    raw = json.loads((int8_classifier / "tiny-cls-int8" / "model.json").read_text())
    assert loaded.card.name == raw["name"] == "tiny-cls-int8"
    # everything the service needs is the FP32 card's
    for key in ("task", "labels", "inputs", "outputs", "preprocess", "postprocess", "source"):
        assert raw[key] == source[key], key
    q = raw["quantization"]
    assert q["source_model"] == "tiny-cls"
    assert q["method"]["format"] == "QDQ"
    assert q["method"]["weights"] == "int8 per channel"
    assert q["method"]["calibrate_method"] == "MinMax"
    assert q["method"]["excluded_op_types"] == ["Gemm"]  # the head stays float
    assert q["calibration"] == {
        "images": 16,
        "tensors": 16,
        "source": "synthetic gradients (tests)",
    }
    assert q["session_run_ms"]["fp32"] > 0 and q["session_run_ms"]["int8"] > 0
    assert (
        q["onnx_bytes"]["int8"] == (int8_classifier / "tiny-cls-int8" / "model.onnx").stat().st_size
    )
    assert not list(int8_classifier.glob(".tiny-cls-int8*"))  # no temporary folder left behind


@pytest.mark.parametrize("folder", ["tiny-cls-int8", "tiny-yolo-int8"])
def test_the_graph_is_really_quantised(int8_classifier, int8_detector, folder):
    models = int8_classifier if folder.startswith("tiny-cls") else int8_detector
    graph = onnx.load(str(models / folder / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    convs = ops.count("Conv")
    assert convs >= 2 and len(int8_weights) >= convs  # every conv's weights stored as int8
    # per-channel: a weight's scale has one entry per output channel
    scales = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    dq_scales = [scales[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear"]
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in dq_scales if s.name in scales)


def test_classifier_outputs_stay_close_to_fp32(int8_classifier):
    # fresh images (seed 0 draws 16 for calibration; these are the next 16 of the same kind)
    want, got = fp32_and_int8_outputs(int8_classifier, "tiny-cls", smooth_images(32)[16:])
    spread = float(want.max() - want.min())
    assert spread > 0.05, "degenerate fixture: logits barely vary"
    per_image = np.abs(got - want).max(axis=1)
    print(f"logit spread {spread:.3f}; per-image max |int8 - fp32| {np.round(per_image, 4)}")
    # int8 activations carry ~1/255 of their calibrated range: typically 0.5% of the spread
    # here. An image brighter than any calibration image clips (up to ~25%). A broken scale,
    # zero point or layout is off by the order of the whole spread.
    assert np.median(per_image) <= 0.02 * spread
    assert per_image.max() <= 0.5 * spread
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75


def test_detector_outputs_stay_close_to_fp32_and_its_head_stays_float(int8_detector):
    want, got = fp32_and_int8_outputs(int8_detector, "tiny-yolo", smooth_images(20)[16:])
    assert want.shape == got.shape == (4, 960, 5 + len(LABELS))
    # boxes in input pixels (64x64 input), then probabilities: each on its own scale
    assert np.abs(got[..., :4] - want[..., :4]).max() <= 3.0
    assert np.abs(got[..., 4:] - want[..., 4:]).max() <= 0.1
    assert np.abs(got[..., 4:] - want[..., 4:]).mean() <= 0.02


def test_tail_nodes_are_the_detection_head_decode(int8_detector):
    model = onnx.load(str(int8_detector / "tiny-yolo" / "model.onnx"))
    by_name = {n.name: n for n in model.graph.node}
    tail = tail_nodes(model)
    ops = {by_name[name].op_type for name in tail}
    assert {"Sigmoid", "Exp", "Concat"} <= ops and "Conv" not in ops
    # the decode feeds the graph output; nothing in the tail feeds a Conv
    assert model.graph.output[0].name in {o for name in tail for o in by_name[name].output}


def test_tail_nodes_of_a_classifier_is_empty(tiny_classifier_dir):
    # Gemm is the last node: nothing to keep in float
    assert tail_nodes(onnx.load(str(tiny_classifier_dir / "tiny-cls" / "model.onnx"))) == []


def test_the_service_serves_the_int8_model(int8_classifier):
    img = Image.fromarray(smooth_images(1)[0].pixels)
    card = read_card(int8_classifier / "tiny-cls-int8").card
    session = ort.InferenceSession(str(int8_classifier / "tiny-cls-int8" / "model.onnx"))
    logits = run(session, tensors(card, [DecodedImage(np.asarray(img), 96, 96, "PNG")])[0])
    probs = np.exp(logits[0] - logits[0].max())
    probs /= probs.sum()
    with serve(int8_classifier) as client:
        r = client.post(
            "/classify?model=tiny-cls-int8&top_k=3",
            files={"image": ("g.png", encode(img, "PNG"), "image/png")},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "tiny-cls-int8"
        assert [p["class_id"] for p in body["predictions"]] == np.argsort(-probs).tolist()
        np.testing.assert_allclose(
            [p["score"] for p in body["predictions"]], np.sort(probs)[::-1], rtol=1e-5
        )
        models = client.get("/v1/models").json()["models"]
        (served,) = [m for m in models if m["card"]["name"] == "tiny-cls-int8"]
        assert served["card"]["quantization"]["source_model"] == "tiny-cls"


def test_calibration_reader_feeds_every_tensor_once():
    items = [np.full((1, 3, 2, 2), i, np.float32) for i in range(3)]
    reader = TensorReader("input", items)
    got = [reader.get_next() for _ in range(4)]
    assert [float(g["input"][0, 0, 0, 0]) for g in got[:3] if g] == [0.0, 1.0, 2.0]
    assert got[3] is None


def det(box: tuple[float, float, float, float], label: str = "a") -> dict[str, Any]:
    return {"box": list(box), "label": label, "score": 0.9}


@pytest.mark.parametrize(
    ("a", "b", "pairs"),
    [
        ([], [det((0, 0, 10, 10))], []),
        ([det((0, 0, 10, 10))], [det((0, 0, 10, 10))], [(0, 0, 1.0)]),
        ([det((0, 0, 10, 10))], [det((0, 0, 10, 10), "b")], []),  # label differs
        ([det((0, 0, 10, 10))], [det((5, 0, 15, 10))], []),  # IoU 1/3 < 0.5
        # one-to-one: the better pair wins, the other box of b is left over
        (
            [det((0, 0, 10, 10))],
            [det((1, 0, 11, 10)), det((0, 0, 10, 10))],
            [(0, 1, 1.0)],
        ),
    ],
)
def test_match_pairs(a, b, pairs):
    got = match_pairs(a, b)
    assert [(i, j) for i, j, _ in got] == [(i, j) for i, j, _ in pairs]
    np.testing.assert_allclose([v for *_, v in got], [v for *_, v in pairs], atol=1e-6)


@pytest.mark.real_weights
def test_mobilenet_int8_agrees_with_fp32_on_real_photos(default_models, testdata, tmp_path):
    """The default classifier, calibrated on scikit-image's photos, measured on the Darknet and
    face_recognition photos (never calibrated on): the card's figures, recomputed."""
    report = quantize_model(
        default_models / "mobilenet_v2-imagenet",
        tmp_path / "mobilenet_v2-imagenet-int8",
        config=Config(threads=2),
        runs=3,
    )
    figures = report["accuracy_vs_fp32"]
    assert figures["views"] == 20
    assert figures["top1_agreement"] >= 0.8
    assert figures["top5_overlap"] >= 0.8
    assert figures["mean_abs_prob_diff"] < 1e-3
    calibrated = set(report["calibration"]["files"])
    assert not calibrated & set(report["calibration"]["evaluation_images"]["files"])
    confident = figures["top1_agreement_fp32_confident"]
    assert confident["views"] >= 8 and confident["agree"] == confident["views"]
    assert read_card(tmp_path / "mobilenet_v2-imagenet-int8").card.name.endswith("-int8")
