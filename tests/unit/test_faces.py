"""Face pipeline, pure functions: YuNet decoding, alignment, distances, verdict, card settings,
and the repair of quantized ONNX graphs the default face models need."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from skimage.transform import SimilarityTransform, warp

from scripts.export.faces import (
    batch_consistency,
    fold_quantization,
    make_batch_dynamic,
    minimal_repair,
)
from service.cards import ModelCard, Preprocess, parse_card
from service.errors import InvalidParameter
from service.images import DecodedImage
from service.preprocess import Geometry
from service.tasks.faces import (
    ARCFACE_TEMPLATE,
    EmbedderSettings,
    align,
    check_threshold,
    cosine_similarity,
    cosine_to_euclidean,
    decode_yunet,
    detect_preprocess,
    euclidean_distance,
    euclidean_to_cosine,
    l2_normalize,
    largest,
    similarity_transform,
    suppress,
    to_original,
    verdict,
)
from service.tasks.faces import (
    face_detections as Faces,
)


def similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Low-frequency colour pattern: bilinear interpolation error stays small on it."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))


# --- alignment ---------------------------------------------------------------------------


def test_template_maps_onto_itself():
    m = similarity_transform(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    face = smooth_image(112, 112)
    out = align(face, ARCFACE_TEMPLATE, ARCFACE_TEMPLATE, (112, 112))
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - face).max() <= 1  # identity warp: rounding only


@pytest.mark.parametrize(
    ("angle", "scale", "tx", "ty"),
    [(0.0, 1.0, 30.0, 20.0), (0.4, 2.3, 150.0, 60.0), (-0.7, 0.8, 90.0, 140.0)],
)
def test_umeyama_recovers_a_known_similarity(angle, scale, tx, ty):
    known = similarity(angle, scale, tx, ty)
    landmarks = apply(known, ARCFACE_TEMPLATE)
    m = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    inverse = np.linalg.inv(np.vstack([known, [0, 0, 1]]))[:2]
    np.testing.assert_allclose(m, inverse, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_umeyama_matches_scikit_image_on_noisy_points(seed):
    rng = np.random.default_rng(seed)
    src = apply(similarity(rng.uniform(-1, 1), rng.uniform(0.5, 3), 50, 80), ARCFACE_TEMPLATE)
    src += rng.normal(0, 2.0, src.shape)
    reference = SimilarityTransform.from_estimate(src, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(similarity_transform(src, ARCFACE_TEMPLATE), reference.params[:2])


def test_mirrored_landmarks_give_a_rotation_not_a_reflection():
    mirrored = ARCFACE_TEMPLATE * [-1, 1] + [200, 0]
    m = similarity_transform(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(m[:, :2]) > 0


def test_coincident_landmarks_are_rejected():
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE)


def test_rotated_scaled_face_maps_back():
    """Paint a face into a bigger canvas rotated by 25 degrees and scaled 1.7x; aligning by
    the moved landmarks gives the original face back."""
    face = smooth_image(112, 112, seed=3)
    known = similarity(math.radians(25), 1.7, 120.0, 40.0)  # face -> canvas
    inv = np.linalg.inv(np.vstack([known, [0, 0, 1]]))
    canvas = warp(face.astype(float), inv, output_shape=(360, 400), order=1, preserve_range=True)
    landmarks = apply(known, ARCFACE_TEMPLATE)
    back = align(canvas.round().astype(np.uint8), landmarks, ARCFACE_TEMPLATE, (112, 112))
    inner = (slice(4, -4), slice(4, -4))  # the border samples the canvas edge of the face
    assert np.abs(back[inner].astype(int) - face[inner]).mean() < 2.0


def test_align_matches_scikit_image_warp():
    img = smooth_image(400, 380, seed=5)
    rng = np.random.default_rng(5)
    src = apply(similarity(-0.3, 0.6, 200, 200), ARCFACE_TEMPLATE) + rng.normal(0, 1, (5, 2))
    tform = SimilarityTransform.from_estimate(src, ARCFACE_TEMPLATE)
    reference = warp(img.astype(float), tform.inverse, output_shape=(112, 112), order=1)
    mine = align(img, src, ARCFACE_TEMPLATE, (112, 112)).astype(float)
    assert np.abs(reference - mine).max() <= 1.0 + 1e-6  # rounding to uint8 only


def test_align_scales_the_template_for_smaller_towers():
    card = embed_card(size=56, thresholds={"cosine": 0.4})
    settings = EmbedderSettings.from_card(card)
    np.testing.assert_allclose(settings.template, ARCFACE_TEMPLATE / 2)
    face = smooth_image(112, 112)
    half = align(face, ARCFACE_TEMPLATE, settings.template, settings.size)
    assert half.shape == (56, 56, 3)


# --- detection ---------------------------------------------------------------------------


def yunet_maps(hw: tuple[int, int]) -> dict[str, np.ndarray]:
    h, w = hw
    maps = {}
    for s in (8, 16, 32):
        n = (h // s) * (w // s)
        maps |= {
            f"cls_{s}": np.zeros((1, n, 1), np.float32),
            f"obj_{s}": np.zeros((1, n, 1), np.float32),
            f"bbox_{s}": np.zeros((1, n, 4), np.float32),
            f"kps_{s}": np.zeros((1, n, 10), np.float32),
        }
    return maps


KPS = np.array([0.25, 0.25, 0.75, 0.25, 0.5, 0.5, 0.3, 0.8, 0.7, 0.8], np.float32)


def test_decode_yunet_cell_to_box_and_landmarks():
    maps = yunet_maps((64, 96))  # stride 16: 4 rows x 6 cols
    idx = 1 * 6 + 2  # row 1, col 2
    maps["cls_16"][0, idx] = 0.81
    maps["obj_16"][0, idx] = 1.0
    maps["bbox_16"][0, idx] = [0.5, 0.5, math.log(2), math.log(2)]
    maps["kps_16"][0, idx] = KPS
    maps["cls_8"][0, 3] = 0.3  # score sqrt(0.3 * 0) = 0: below any threshold
    faces = decode_yunet(maps, (64, 96), (8, 16, 32), 0.5)
    assert len(faces) == 1
    np.testing.assert_allclose(faces.score, [0.9], rtol=1e-6)
    np.testing.assert_allclose(faces.xyxy[0], [24, 8, 56, 40], atol=1e-5)  # c=(40,24), 32x32
    expected = (np.array([2, 1]) + KPS.reshape(5, 2)) * 16
    np.testing.assert_allclose(faces.landmarks[0], expected, atol=1e-5)


def test_suppress_keeps_the_best_of_overlapping_faces():
    xyxy = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    faces = Faces(xyxy, np.array([0.7, 0.9, 0.8], np.float32), np.zeros((3, 5, 2), np.float32))
    kept = suppress(faces, 0.3, max_faces=10)
    np.testing.assert_allclose(kept.score, [0.9, 0.8])
    assert len(suppress(faces, 0.3, max_faces=1)) == 1


def test_to_original_undoes_scale_and_padding():
    faces = Faces(
        np.array([[10, 20, 30, 40]], np.float32),
        np.array([0.9], np.float32),
        np.array([[[10, 20]] * 5], np.float32),
    )
    geometry = Geometry(original=(200, 100), scale=(0.5, 0.5), pad=(4.0, 0.0))
    back = to_original(faces, geometry)
    np.testing.assert_allclose(back.xyxy, [[12, 40, 52, 80]])
    np.testing.assert_allclose(back.landmarks[0, 0], [12, 40])


def test_largest_picks_the_biggest_box():
    xyxy = np.array([[0, 0, 10, 10], [0, 0, 30, 20], [5, 5, 20, 20]], np.float32)
    faces = Faces(xyxy, np.array([0.9, 0.7, 0.8], np.float32), np.zeros((3, 5, 2), np.float32))
    assert largest(faces) == 1


def test_detector_input_is_bgr_padded_right_and_bottom():
    pixels = np.zeros((50, 100, 3), np.uint8)
    pixels[..., 0] = 200  # red
    spec = Preprocess(
        resize="letterbox",
        size=(64, 64),
        scale=1.0,
        channel_order="BGR",
        pad_value=0,
        pad_anchor="top-left",
    )
    tensor, geometry = detect_preprocess(DecodedImage(pixels, 100, 50, "PNG"), spec)
    assert tensor.shape == (1, 3, 64, 64)
    assert geometry.pad == (0.0, 0.0) and geometry.scale == pytest.approx((0.64, 0.64))
    np.testing.assert_allclose(tensor[0, 2, :32], 200)  # red is the last BGR channel
    np.testing.assert_allclose(tensor[0, :2, :32], 0)
    np.testing.assert_allclose(tensor[0, :, 32:], 0)  # padding only below


# --- distances and verdict ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "cos", "dist"),
    [
        ([1, 0, 0], [1, 0, 0], 1.0, 0.0),
        ([1, 0, 0], [-2, 0, 0], -1.0, 2.0),
        ([0, 3, 0], [0, 0, 5], 0.0, math.sqrt(2)),
        ([1, 0], [0.5, math.sqrt(3) / 2], 0.5, 1.0),
        ([2, 2], [3, 3], 1.0, 0.0),  # norms do not matter
    ],
)
def test_cosine_and_euclidean(a, b, cos, dist):
    a, b = np.array(a, np.float32), np.array(b, np.float32)
    assert cosine_similarity(a, b) == pytest.approx(cos, abs=1e-6)
    assert euclidean_distance(a, b) == pytest.approx(dist, abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_squared_distance_is_two_minus_two_cosine(seed):
    a, b = np.random.default_rng(seed).normal(size=(2, 128)).astype(np.float32)
    c, d = cosine_similarity(a, b), euclidean_distance(a, b)
    assert d * d == pytest.approx(2 - 2 * c, abs=1e-5)
    assert cosine_to_euclidean(c) == pytest.approx(d, abs=1e-5)
    assert euclidean_to_cosine(d) == pytest.approx(c, abs=1e-5)


@pytest.mark.parametrize(
    ("cos", "dist"), [(1.0, 0.0), (0.363, 1.1288), (0.0, math.sqrt(2)), (-1.0, 2.0)]
)
def test_threshold_conversion_table(cos, dist):
    assert cosine_to_euclidean(cos) == pytest.approx(dist, abs=1e-4)
    assert euclidean_to_cosine(dist) == pytest.approx(cos, abs=1e-4)


def test_l2_normalize_rows_and_zero_rows():
    out = l2_normalize(np.array([[3, 4], [0, 0]], np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0, 0]])


@pytest.mark.parametrize(
    ("sim", "dist", "metric", "threshold", "same"),
    [
        (0.75, 0.707, "cosine", 0.363, True),
        (0.363, 1.129, "cosine", 0.363, True),  # the boundary counts as the same person
        (0.2, 1.265, "cosine", 0.363, False),
        (0.75, 0.707, "euclidean", 1.128, True),
        (0.2, 1.265, "euclidean", 1.128, False),
        (0.75, 0.707, "euclidean", 0.5, False),
    ],
)
def test_verdict(sim, dist, metric, threshold, same):
    assert verdict(sim, dist, metric, threshold) is same


@pytest.mark.parametrize(
    ("metric", "threshold", "ok"),
    [
        ("cosine", 0.5, True),
        ("cosine", 1.5, False),
        ("euclidean", 2.0, True),
        ("euclidean", -0.1, False),
    ],
)
def test_threshold_range(metric, threshold, ok):
    if ok:
        check_threshold(metric, threshold)
    else:
        with pytest.raises(InvalidParameter, match=metric):
            check_threshold(metric, threshold)


def embed_card(size: int = 112, thresholds: dict[str, float] | None = None) -> ModelCard:
    return parse_card(
        {
            "name": "emb",
            "task": "face-embed",
            "inputs": [{"name": "input", "shape": ["batch", 3, size, size]}],
            "outputs": [{"name": "embedding", "shape": ["batch", 16]}],
            "preprocess": {"resize": "stretch", "size": [size, size]},
            "postprocess": {"thresholds": thresholds or {}},
        }
    )


def test_card_thresholds_fill_in_the_other_metric():
    s = EmbedderSettings.from_card(embed_card(thresholds={"cosine": 0.363}))
    assert s.metric == "cosine"
    assert s.thresholds["euclidean"] == pytest.approx(math.sqrt(2 - 2 * 0.363))
    s = EmbedderSettings.from_card(embed_card(thresholds={"euclidean": 1.0}))
    assert s.thresholds["cosine"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="thresholds"):
        EmbedderSettings.from_card(embed_card(thresholds={}))


# --- repairing quantized graphs -------------------------------------------------------------


def quantized_graph() -> onnx.ModelProto:
    """x (1, 4) @ W (4, 6) + b, with W block-quantized along axis 0 (blocks of 2) and b
    per-tensor but carrying a block_size, plus a stale graph input: the two defects of the
    shipped YuNet/SFace files."""
    rng = np.random.default_rng(0)
    init = [
        numpy_helper.from_array(rng.integers(-100, 100, (4, 6)).astype(np.int8), "wq"),
        numpy_helper.from_array(rng.uniform(0.01, 0.1, (2, 6)).astype(np.float32), "ws"),
        numpy_helper.from_array(rng.integers(-3, 3, (2, 6)).astype(np.int8), "wz"),
        numpy_helper.from_array(rng.integers(-100, 100, (6,)).astype(np.int8), "bq"),
        numpy_helper.from_array(np.array([0.05], np.float32), "bs"),
        numpy_helper.from_array(np.array([2], np.int8), "bz"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0, block_size=2),
        helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"], axis=0, block_size=64),
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "q",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("stale_weight", TensorProto.FLOAT, [4, 6]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_fold_quantization_matches_onnxruntime_dequantization():
    shipped = quantized_graph()
    x = np.random.default_rng(1).normal(size=(1, 4)).astype(np.float32)
    with pytest.raises(Exception, match="stale_weight|block_size|missing"):
        run(shipped, x)  # as shipped, onnxruntime refuses it
    reference = run(minimal_repair(shipped), x)
    folded = fold_quantization(shipped)
    assert [i.name for i in folded.graph.input] == ["x"]
    assert not any(n.op_type == "DequantizeLinear" for n in folded.graph.node)
    assert {i.name for i in folded.graph.initializer} == {"w", "b"}
    np.testing.assert_allclose(run(folded, x), reference, atol=1e-6)


def test_make_batch_dynamic_runs_several_rows():
    dynamic = make_batch_dynamic(fold_quantization(quantized_graph()))
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    y = run(dynamic, x)
    assert y.shape == (3, 6)
    np.testing.assert_allclose(y[1:2], run(dynamic, x[1:2]), atol=1e-6)
    assert batch_consistency(dynamic, [1, 4], batch=3) < 1e-6
