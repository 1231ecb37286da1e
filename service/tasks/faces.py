"""Face verification: detect (YuNet-style, 5 landmarks) -> align (5-point similarity to the
ArcFace template) -> embed -> L2 normalise -> cosine / euclidean -> verdict.

In the graphs: the detector is the bare network (resize/pad happens here, per its card); the
SFace embedder normalises its 0..255 RGB input inside the graph, a trained tower states its
mean/std in its card. Decoding, NMS, alignment and distances are pure functions below.

Card settings (`postprocess`):
  face-detect: {"decoder": "yunet", "strides": [8, 16, 32], "score_threshold": 0.6,
                "nms_iou_threshold": 0.3, "max_faces": 100}
  face-embed:  {"metric": "cosine", "thresholds": {"cosine": 0.363, "euclidean": 1.128},
                "threshold_source": "...", "template": [[x, y] * 5], "template_size": [112, 112]}
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from iis_client.params import FaceMetric as Metric  # /verify-faces `metric`, as the client sends it
from service.boxes import nms
from service.cards import ARCFACE_TEMPLATE as CARD_ARCFACE_TEMPLATE
from service.cards import FaceDetectPostprocess, FaceEmbedPostprocess, ModelCard, Preprocess
from service.detections import Detections
from service.errors import InvalidParameter, NoFaceFound
from service.images import DecodedImage
from service.preprocess import Geometry, normalize_into, to_batch
from service.runtime import ModelRuntime
from service.timing import Timing, in_thread

# ArcFace / InsightFace 112x112 template; the order matches YuNet's landmarks: right eye, left
# eye, nose tip, right mouth corner, left mouth corner (the subject's right is the image's left).
ARCFACE_TEMPLATE = np.array(CARD_ARCFACE_TEMPLATE, dtype=np.float64)
LANDMARK_NAMES = ("right_eye", "left_eye", "nose", "right_mouth", "left_mouth")
FACE_CLASSES = ("face",)


def face_detections(xyxy: np.ndarray, score: np.ndarray, landmarks: np.ndarray) -> Detections:
    """Faces in one image as Detections, best score first: class 0 ("face"),
    xyxy (N, 4) float32 boxes, score (N,) float32 in 0..1,
    landmarks (N, 5, 2) float32 (x, y) in LANDMARK_NAMES order."""
    n = score.shape[0]
    if landmarks.shape != (n, 5, 2):
        raise ValueError(f"landmarks must be ({n}, 5, 2), got {landmarks.shape}")
    return Detections(
        xyxy, np.zeros(n, np.int64), score, landmarks=landmarks, class_names=FACE_CLASSES
    )


def landmarks_of(faces: Detections) -> np.ndarray:
    """(N, 5, 2) float32: the landmarks face detections carry."""
    if faces.landmarks is None:
        raise ValueError("these detections carry no landmarks (not from a face detector)")
    return faces.landmarks


# --- settings from the cards ------------------------------------------------------------


@dataclass(frozen=True)
class DetectorSettings:
    strides: tuple[int, ...]
    score_threshold: float
    nms_iou_threshold: float
    max_faces: int

    @staticmethod
    def from_card(card: ModelCard) -> DetectorSettings:
        post = card.postprocess
        if not isinstance(post, FaceDetectPostprocess):
            raise ValueError(f"model {card.name} is a {card.task} model, not face-detect")
        return DetectorSettings(
            strides=tuple(post.strides),
            score_threshold=post.score_threshold,
            nms_iou_threshold=post.nms_iou_threshold,
            max_faces=post.max_faces,
        )


@dataclass(frozen=True)
class EmbedderSettings:
    """thresholds: metric -> the decision threshold (cosine: same if >=; euclidean: if <=)."""

    metric: Metric
    thresholds: Mapping[str, float]
    template: np.ndarray  # (5, 2) in input pixels of the embedder
    size: tuple[int, int]  # (height, width) of the aligned crop

    @staticmethod
    def from_card(card: ModelCard) -> EmbedderSettings:
        post = card.postprocess
        if not isinstance(post, FaceEmbedPostprocess):
            raise ValueError(f"model {card.name} is a {card.task} model, not face-embed")
        metric = post.metric
        thresholds = {str(k): float(v) for k, v in post.thresholds.items()}
        if "cosine" in thresholds and "euclidean" not in thresholds:
            thresholds["euclidean"] = cosine_to_euclidean(thresholds["cosine"])
        if "euclidean" in thresholds and "cosine" not in thresholds:
            thresholds["cosine"] = euclidean_to_cosine(thresholds["euclidean"])
        if set(thresholds) != {"cosine", "euclidean"}:
            raise ValueError(f"model {card.name}: card has no postprocess.thresholds")
        if card.preprocess.size is None:
            raise ValueError(f"model {card.name}: face-embed cards need preprocess.size")
        h, w = card.preprocess.size
        template = np.asarray(post.template, dtype=np.float64)
        th, tw = post.template_size
        if template.shape != (5, 2):
            raise ValueError(f"model {card.name}: template must be 5 (x, y) points")
        # The template is defined for its own crop size; a tower trained at another size gets
        # the same face geometry, scaled.
        template = template * np.array([w / tw, h / th])
        return EmbedderSettings(metric, thresholds, template, (h, w))


# --- detection --------------------------------------------------------------------------


def detect_preprocess(image: DecodedImage, spec: Preprocess) -> tuple[np.ndarray, Geometry]:
    """-> (1, 3, H, W) float32 detector input and how it maps back to the original image."""
    batch, (geometry,) = to_batch([image], spec)
    return batch, geometry


def decode_yunet(
    outputs: Mapping[str, np.ndarray],
    input_hw: tuple[int, int],
    strides: Sequence[int],
    score_threshold: float,
) -> Detections:
    """YuNet head maps for one image -> candidate faces in input pixels (before NMS).

    outputs: per stride s, `cls_s`, `obj_s` (N, 1), `bbox_s` (N, 4), `kps_s` (N, 10) with
    N = (H/s)*(W/s), row-major over the grid; a leading batch axis of 1 is accepted.
    """
    h, w = input_hw
    boxes, scores, marks = [], [], []
    for s in strides:
        cols, rows = w // s, h // s
        cls, obj, bbox, kps = (
            np.asarray(outputs[f"{k}_{s}"], dtype=np.float32).reshape(rows * cols, -1)
            for k in ("cls", "obj", "bbox", "kps")
        )
        score = np.sqrt(np.clip(cls[:, 0], 0, 1) * np.clip(obj[:, 0], 0, 1))
        keep = np.flatnonzero(score >= score_threshold)
        col = (keep % cols).astype(np.float32)[:, None]
        row = (keep // cols).astype(np.float32)[:, None]
        b = bbox[keep]
        cx, cy = (col[:, 0] + b[:, 0]) * s, (row[:, 0] + b[:, 1]) * s
        bw, bh = np.exp(b[:, 2]) * s, np.exp(b[:, 3]) * s
        boxes.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1))
        k = kps[keep].reshape(-1, 5, 2)
        marks.append(np.stack([(col + k[..., 0]) * s, (row + k[..., 1]) * s], axis=-1))
        scores.append(score[keep])
    return face_detections(
        np.concatenate(boxes).astype(np.float32).reshape(-1, 4),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(marks).astype(np.float32).reshape(-1, 5, 2),
    )


def suppress(faces: Detections, iou_threshold: float, max_faces: int) -> Detections:
    """NMS, best score first, at most max_faces."""
    return faces.take(nms(faces.xyxy, faces.score, iou_threshold)[:max_faces])


def to_original(faces: Detections, geometry: Geometry) -> Detections:
    """Input-pixel boxes and landmarks -> pixels of the original image (boxes clipped to it;
    landmarks are not, a half-visible face may have a point just outside)."""
    sx, sy = geometry.scale
    px, py = geometry.pad
    marks = (landmarks_of(faces) - np.array([px, py], np.float32)) / np.array([sx, sy], np.float32)
    xyxy = geometry.to_original(faces.xyxy)
    return replace(faces, xyxy=xyxy, landmarks=marks.astype(np.float32))


def detect_postprocess(
    outputs: Mapping[str, np.ndarray],
    input_hw: tuple[int, int],
    geometry: Geometry,
    settings: DetectorSettings,
    score_threshold: float | None = None,
) -> Detections:
    """Head maps of one image -> its faces in original pixels, best first."""
    threshold = settings.score_threshold if score_threshold is None else score_threshold
    faces = decode_yunet(outputs, input_hw, settings.strides, threshold)
    faces = suppress(faces, settings.nms_iou_threshold, settings.max_faces)
    return to_original(faces, geometry)


def largest(faces: Detections) -> int:
    """Index of the face with the largest box (ties: the better score, which comes first)."""
    if not len(faces):
        raise ValueError("no faces")
    wh = np.clip(faces.xyxy[:, 2:] - faces.xyxy[:, :2], 0, None)
    return int(np.argmax(wh[:, 0] * wh[:, 1]))


# --- alignment --------------------------------------------------------------------------


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) taking
    src (K, 2) onto dst (K, 2): Umeyama (1991). -> (2, 3) float64 M with dst ~ M @ [x, y, 1]."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need matching (K>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    sc, dc = src - mu_s, dst - mu_d
    var_s = float((sc**2).sum()) / len(src)
    if var_s < 1e-12:
        raise ValueError("the source points coincide; no similarity transform exists")
    u, sigma, vt = np.linalg.svd(dc.T @ sc / len(src))
    d = np.array([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
    rotation = u @ np.diag(d) @ vt
    scale = float((sigma * d).sum()) / var_s
    translation = mu_d - scale * rotation @ mu_s
    return np.hstack([scale * rotation, translation[:, None]])


def align(
    pixels: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: tuple[int, int]
) -> np.ndarray:
    """Warp the face whose 5 landmarks (pixel coordinates of `pixels`) are given onto
    `template`. pixels: (H, W, 3) uint8 -> (size[0], size[1], 3) uint8; outside is black.

    Coordinates follow OpenCV (pixel centres at integers), so the crop equals
    cv2.warpAffine(pixels, M, size) up to interpolation rounding.
    """
    m = similarity_transform(landmarks, template)
    a_inv = np.linalg.inv(m[:, :2])
    t_inv = -a_inv @ m[:, 2]
    # Pillow asks for the inverse map and puts pixel centres at +0.5: shift both frames.
    t_pil = t_inv + 0.5 - a_inv @ np.array([0.5, 0.5])
    coeffs = (a_inv[0, 0], a_inv[0, 1], t_pil[0], a_inv[1, 0], a_inv[1, 1], t_pil[1])
    h, w = size
    out = Image.fromarray(pixels).transform(
        (w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(out)


def embed_preprocess(crops: Sequence[np.ndarray], spec: Preprocess) -> np.ndarray:
    """Aligned crops (h, w, 3) uint8 RGB -> (N, 3, h, w) float32 (or NHWC) per the card."""
    if not crops:
        raise ValueError("no crops to embed")
    h, w = crops[0].shape[:2]
    shape = (len(crops), 3, h, w) if spec.layout == "NCHW" else (len(crops), h, w, 3)
    batch = np.empty(shape, dtype=np.float32)
    for i, crop in enumerate(crops):
        normalize_into(batch[i], crop, spec)
    return batch


# --- distances and verdict --------------------------------------------------------------


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """(N, D) -> rows of unit length (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out: np.ndarray = x / np.maximum(norm, eps)
    return out


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of the angle between two embeddings (D,), in -1..1."""
    a, b = l2_normalize(a[None])[0], l2_normalize(b[None])[0]
    return float(np.clip(np.dot(a.astype(np.float64), b.astype(np.float64)), -1.0, 1.0))


def euclidean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between the L2-normalised embeddings, in 0..2."""
    a, b = l2_normalize(a[None])[0], l2_normalize(b[None])[0]
    return float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)))


def cosine_to_euclidean(cos: float) -> float:
    """On unit vectors d^2 = 2 - 2 cos."""
    return math.sqrt(max(0.0, 2.0 - 2.0 * cos))


def euclidean_to_cosine(distance: float) -> float:
    return 1.0 - distance * distance / 2.0


def check_threshold(metric: Metric, threshold: float) -> None:
    low, high = (-1.0, 1.0) if metric == "cosine" else (0.0, 2.0)
    if not low <= threshold <= high:
        raise InvalidParameter(
            f"a {metric} threshold must lie in [{low:g}, {high:g}]; got {threshold:g}"
        )


def verdict(similarity: float, distance: float, metric: Metric, threshold: float) -> bool:
    """Same person? cosine: similarity >= threshold; euclidean: distance <= threshold."""
    if metric == "cosine":
        return similarity >= threshold
    return distance <= threshold


# --- the async entry points -------------------------------------------------------------


async def detect_faces(
    runtime: ModelRuntime, image: DecodedImage, timing: Timing, score_threshold: float | None = None
) -> Detections:
    """All faces in one image, original pixels, best score first."""
    settings = DetectorSettings.from_card(runtime.card)
    spec = runtime.card.preprocess
    tensor, geometry = await in_thread(timing, "preprocess", detect_preprocess, image, spec)
    result = await runtime.infer(tensor, timing, "detect")
    started = time.perf_counter()
    outputs = {n: o[0] for n, o in zip(runtime.output_names, result.outputs, strict=True)}
    h, w = tensor.shape[2:] if spec.layout == "NCHW" else tensor.shape[1:3]
    faces = detect_postprocess(outputs, (h, w), geometry, settings, score_threshold)
    timing.add("postprocess", (time.perf_counter() - started) * 1000)
    return faces


def _crops(image: DecodedImage, faces: Detections, settings: EmbedderSettings) -> list[np.ndarray]:
    sx, sy = image.scale  # landmarks are in original pixels; the pixels may be a JPEG draft
    marks = landmarks_of(faces) / np.array([sx, sy], np.float32)
    return [align(image.pixels, m, settings.template, settings.size) for m in marks]


async def embed_faces(
    runtime: ModelRuntime,
    images: Sequence[DecodedImage],
    faces: Sequence[Detections],
    timing: Timing,
) -> np.ndarray:
    """Align every face of every image and embed them in as few runs as the model's batch
    limit allows. -> (total faces, D) float32, L2-normalised, in input order."""
    settings = EmbedderSettings.from_card(runtime.card)

    def prepare() -> np.ndarray:
        crops = [c for img, f in zip(images, faces, strict=True) for c in _crops(img, f, settings)]
        return embed_preprocess(crops, runtime.card.preprocess)

    batch = await in_thread(timing, "align", prepare)
    step = runtime.max_batch
    results = await asyncio.gather(
        *(runtime.infer(batch[i : i + step], timing, "embed") for i in range(0, len(batch), step))
    )
    return l2_normalize(np.concatenate([r.outputs[0] for r in results]).reshape(len(batch), -1))


@dataclass(frozen=True)
class Verification:
    """faces: the face used from each image (one row each); found: faces detected per image."""

    verified: bool
    similarity: float
    distance: float
    threshold: float
    metric: Metric
    faces: tuple[Detections, Detections]
    found: tuple[int, int]


async def verify(
    detector: ModelRuntime,
    embedder: ModelRuntime,
    images: tuple[DecodedImage, DecodedImage],
    timing: Timing,
    metric: Metric | None = None,
    threshold: float | None = None,
) -> Verification:
    """Largest face of image a vs largest face of image b, both embedded in one batched run."""
    settings = EmbedderSettings.from_card(embedder.card)
    metric = metric or settings.metric
    threshold = settings.thresholds[metric] if threshold is None else threshold
    check_threshold(metric, threshold)
    found = await asyncio.gather(*(detect_faces(detector, img, timing) for img in images))
    missing = [name for name, f in zip(("image_a", "image_b"), found, strict=True) if not len(f)]
    if missing:
        which = " and ".join(missing)
        raise NoFaceFound(
            f"no face found in {which} (detector {detector.name}, score threshold "
            f"{DetectorSettings.from_card(detector.card).score_threshold:g}); send a photo "
            "with a clearly visible, roughly frontal face"
        )
    chosen = (found[0].take([largest(found[0])]), found[1].take([largest(found[1])]))
    emb = await embed_faces(embedder, images, chosen, timing)
    started = time.perf_counter()
    similarity = cosine_similarity(emb[0], emb[1])
    distance = euclidean_distance(emb[0], emb[1])
    timing.add("postprocess", (time.perf_counter() - started) * 1000)
    return Verification(
        verified=verdict(similarity, distance, metric, threshold),
        similarity=similarity,
        distance=distance,
        threshold=threshold,
        metric=metric,
        faces=chosen,
        found=(len(found[0]), len(found[1])),
    )
