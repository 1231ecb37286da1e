"""Encoded images over the Open Inference Protocol: a `BYTES` input named "image" (JPEG, PNG,
...; one element per image, shape [N] or [N, 1]) runs this service's own decode, the task's
preprocess, the model's micro-batcher and the task's postprocess, and answers as tensors.
Sent as JSON `data` (no binary extension), each element is the image base64-encoded.

Outputs for N images (request parameters in brackets):
  classify [top_k=5]: labels BYTES [N, k], scores FP32 [N, k], class_ids INT64 [N, k];
      best first, k = min(top_k, classes).
  detect, segment [score_threshold=0.25, iou_threshold=0.45, max_detections=100]:
      boxes FP32 [N, K, 4] (x1, y1, x2, y2 in the image's own pixels), scores FP32 [N, K],
      class_ids INT64 [N, K], labels BYTES [N, K], counts INT64 [N].
  face-detect [score_threshold=card's]: boxes [N, K, 4], scores [N, K],
      landmarks FP32 [N, K, 5, 2], counts [N].
  face-embed [detector=default face-detect model, score_threshold]: embeddings FP32 [N, D]
      (the largest face of each image, L2-normalised), boxes FP32 [N, 4], scores FP32 [N],
      counts INT64 [N] = faces found; a row with counts 0 is all zeros.
Per-image lists are padded to the batch's largest count K: image i's rows are 0..counts[i]-1,
best first; padding is 0 (class_ids -1, labels "").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from service.detections import Detections, label_of
from service.errors import InvalidParameter, InvalidRequest, PayloadTooLarge, ServiceError
from service.images import DecodedImage, EncodedImage, decode
from service.oip import InputTensor, OutputTensor
from service.preprocess import needed_side
from service.repository import ModelRegistry
from service.runtime import ModelRuntime
from service.tasks import segment as seg
from service.tasks.classify import Predictions, classify
from service.tasks.detect import DetectOptions, detect
from service.tasks.faces import detect_faces, embed_faces, landmarks_of, largest
from service.timing import Timing, in_thread

IMAGE_INPUT = "image"
MAX_IMAGES = 64
T = TypeVar("T")

_DETECTIONS = [
    ("boxes", "FP32", [-1, -1, 4]),
    ("scores", "FP32", [-1, -1]),
    ("class_ids", "INT64", [-1, -1]),
    ("labels", "BYTES", [-1, -1]),
    ("counts", "INT64", [-1]),
]
OUTPUTS: dict[str, list[tuple[str, str, list[int]]]] = {
    "classify": [
        ("labels", "BYTES", [-1, -1]),
        ("scores", "FP32", [-1, -1]),
        ("class_ids", "INT64", [-1, -1]),
    ],
    "detect": _DETECTIONS,
    "segment": _DETECTIONS,
    "face-detect": [
        ("boxes", "FP32", [-1, -1, 4]),
        ("scores", "FP32", [-1, -1]),
        ("landmarks", "FP32", [-1, -1, 5, 2]),
        ("counts", "INT64", [-1]),
    ],
    "face-embed": [
        ("embeddings", "FP32", [-1, -1]),
        ("boxes", "FP32", [-1, 4]),
        ("scores", "FP32", [-1]),
        ("counts", "INT64", [-1]),
    ],
}
PARAMETERS: dict[str, str] = {
    "classify": "top_k (1..100, default 5)",
    "detect": "score_threshold (0.25), iou_threshold (0.45), max_detections (1..1000, 100)",
    "segment": "score_threshold (0.25), iou_threshold (0.45), max_detections (1..1000, 100)",
    "face-detect": "score_threshold (0..1, default from the card)",
    "face-embed": "detector (a face-detect model, default the server's), score_threshold",
}


@dataclass(frozen=True)
class ImageRequest:
    """What the image style needs besides the images: the request's parameters, the registry
    (face-embed borrows a detector), the pixel budget and the request's timing."""

    parameters: Mapping[str, Any]
    registry: ModelRegistry
    max_pixels: int
    timing: Timing


def images_of(tensor: InputTensor) -> list[bytes]:
    """The BYTES input -> one encoded image per element (base64-decoded when sent as JSON)."""
    shape = tensor.shape
    if tensor.datatype != "BYTES":
        raise InvalidRequest(
            f"input {IMAGE_INPUT!r} takes encoded images as BYTES, got {tensor.datatype}"
        )
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise InvalidRequest(
            f"input {IMAGE_INPUT!r} has shape {list(shape)}; send [N] or [N, 1], one encoded "
            "image per element"
        )
    if shape[0] > MAX_IMAGES:
        raise PayloadTooLarge(f"{shape[0]} images in one request; the limit is {MAX_IMAGES}")
    items = [bytes(x) for x in tensor.data.reshape(-1)]
    if tensor.binary:
        return items
    try:
        return [base64.b64decode(x, validate=True) for x in items]
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            f"input {IMAGE_INPUT!r}: as JSON data each image must be base64-encoded; or send "
            "the raw bytes with the binary tensor data extension"
        ) from None


def _number(params: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidParameter(f"parameter {key} must be a number in [{low:g}, {high:g}]")
    return float(value)


def _integer(params: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParameter(f"parameter {key} must be an integer in [{low}, {high}]")
    return value


async def gather_all(coros: Sequence[Awaitable[T]]) -> list[T]:
    """Await every coroutine; on the first failure cancel the rest (no orphaned work) and raise."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def _each(
    images: Sequence[bytes], limit: int, fn: Callable[[bytes], Awaitable[T]]
) -> list[T]:
    """fn(image) for every image, at most `limit` at once (each holds its decoded pixels), so
    the model's batcher sees up to `limit` of them together. A failure names the image."""
    gate = asyncio.Semaphore(max(limit, 1))

    async def one(i: int, data: bytes) -> T:
        async with gate:
            try:
                return await fn(data)
            except ServiceError as exc:
                raise type(exc)(f"image {i}: {exc.message}", headers=exc.headers) from None

    if len(images) == 1:  # the common case: no task, gather or gate to pay for
        return [await one(0, images[0])]
    return await gather_all([one(i, d) for i, d in enumerate(images)])


def _decoder(ctx: ImageRequest, min_side: int | None) -> Callable[[bytes], Awaitable[DecodedImage]]:
    async def run(data: bytes) -> DecodedImage:
        return await in_thread(
            ctx.timing, "decode", lambda: decode(data, max_pixels=ctx.max_pixels, min_side=min_side)
        )

    return run


def _pad(rows: Sequence[np.ndarray], tail: tuple[int, ...], dtype: Any, fill: Any) -> np.ndarray:
    """Per-image (k_i, *tail) arrays -> (N, max k_i, *tail), padded with `fill`."""
    k = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), k, *tail), fill, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _tensors(*items: tuple[str, str, np.ndarray]) -> dict[str, OutputTensor]:
    return {name: OutputTensor(name, datatype, data) for name, datatype, data in items}


def _labels(ids: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    out = np.empty(ids.shape, dtype=object)
    out.reshape(-1)[:] = [label_of(labels, int(i)) for i in ids.reshape(-1)]
    return out


def _detections(found: Sequence[Detections], labels: Sequence[str]) -> dict[str, OutputTensor]:
    class_ids = _pad([f.class_id for f in found], (), np.int64, -1)
    names = _labels(class_ids, labels)
    names[class_ids < 0] = ""
    return _tensors(
        ("boxes", "FP32", _pad([f.xyxy for f in found], (4,), np.float32, 0.0)),
        ("scores", "FP32", _pad([f.score for f in found], (), np.float32, 0.0)),
        ("class_ids", "INT64", class_ids),
        ("labels", "BYTES", names),
        ("counts", "INT64", np.array([len(f) for f in found], dtype=np.int64)),
    )


async def run_images(
    runtime: ModelRuntime, images: Sequence[bytes], ctx: ImageRequest
) -> dict[str, OutputTensor]:
    """Encoded images -> the task's result tensors (see the module doc)."""
    task = runtime.card.task
    if task == "classify":
        return await _classify(runtime, images, ctx)
    if task in ("detect", "segment"):
        return await _detect(runtime, images, ctx)
    threshold = ctx.parameters.get("score_threshold")
    if threshold is not None:
        threshold = _number(ctx.parameters, "score_threshold", 0.0, 0.0, 1.0)
    if task == "face-detect":
        return await _faces(runtime, images, threshold, ctx)
    return await _embed(runtime, images, threshold, ctx)


async def _classify(
    runtime: ModelRuntime, images: Sequence[bytes], ctx: ImageRequest
) -> dict[str, OutputTensor]:
    top_k = _integer(ctx.parameters, "top_k", 5, 1, 100)
    side = needed_side(runtime.card)

    async def one(data: bytes) -> Predictions:
        # decoded in the thread that preprocesses it (one hop; see service.tasks.pipeline)
        image = EncodedImage(data, ctx.max_pixels, side)
        return (await classify(runtime, image, top_k, ctx.timing)).answer

    found = await _each(images, runtime.max_batch, one)
    ids = np.stack([p.class_id for p in found]).astype(np.int64)
    return _tensors(
        ("labels", "BYTES", _labels(ids, runtime.card.labels)),
        ("scores", "FP32", np.stack([p.score for p in found]).astype(np.float32)),
        ("class_ids", "INT64", ids),
    )


async def _detect(
    runtime: ModelRuntime, images: Sequence[bytes], ctx: ImageRequest
) -> dict[str, OutputTensor]:
    params = ctx.parameters
    options = DetectOptions(
        score_threshold=_number(params, "score_threshold", 0.25, 0.0, 1.0),
        iou_threshold=_number(params, "iou_threshold", 0.45, 0.0, 1.0),
        max_detections=_integer(params, "max_detections", 100, 1, 1000),
    )
    side = needed_side(runtime.card)

    async def one(data: bytes) -> Detections:
        if runtime.card.task == "segment":
            return await _segment(runtime, data, options, ctx)
        image = EncodedImage(data, ctx.max_pixels, side)
        return (await detect(runtime, image, options, ctx.timing)).answer

    results = await _each(images, runtime.max_batch, one)
    return _detections(results, runtime.card.labels)


async def _faces(
    runtime: ModelRuntime, images: Sequence[bytes], threshold: float | None, ctx: ImageRequest
) -> dict[str, OutputTensor]:
    read = _decoder(ctx, needed_side(runtime.card))

    async def one(data: bytes) -> Detections:
        return await detect_faces(runtime, await read(data), ctx.timing, threshold)

    faces = await _each(images, runtime.max_batch, one)
    return _tensors(
        ("boxes", "FP32", _pad([f.xyxy for f in faces], (4,), np.float32, 0.0)),
        ("scores", "FP32", _pad([f.score for f in faces], (), np.float32, 0.0)),
        ("landmarks", "FP32", _pad([landmarks_of(f) for f in faces], (5, 2), np.float32, 0.0)),
        ("counts", "INT64", np.array([len(f) for f in faces], dtype=np.int64)),
    )


async def _segment(
    runtime: ModelRuntime, data: bytes, options: DetectOptions, ctx: ImageRequest
) -> Detections:
    image = await _decoder(ctx, seg.GraphResize.of(runtime.card).min_size)(data)
    seg_options = seg.SegmentOptions(
        score_threshold=options.score_threshold,
        iou_threshold=options.iou_threshold,
        max_detections=options.max_detections,
    )
    return await seg.find_instances(runtime, image, seg_options, ctx.timing)


async def _embed(
    runtime: ModelRuntime, images: Sequence[bytes], threshold: float | None, ctx: ImageRequest
) -> dict[str, OutputTensor]:
    name = ctx.parameters.get("detector")
    if name is not None and (not isinstance(name, str) or len(name) > 80):
        raise InvalidParameter("parameter detector must be a model name (a string)")
    detector = ctx.registry.get("face-detect", name)
    read = _decoder(ctx, needed_side(detector.card))

    async def one(data: bytes) -> tuple[Detections, int]:
        """-> the largest face with its embedding (none: no face), and the faces found."""
        image = await read(data)
        faces = await detect_faces(detector, image, ctx.timing, threshold)
        if not len(faces):
            return Detections.empty(), 0
        chosen = faces.take([largest(faces)])
        vectors = await embed_faces(runtime, [image], [chosen], ctx.timing)
        return replace(chosen, embeddings=vectors), len(faces)

    found = await _each(images, max(detector.max_batch, runtime.max_batch), one)
    dims = [f.embeddings.shape[1] for f, _ in found if f.embeddings is not None]
    last = runtime.card.outputs[0].shape[-1]
    dim = dims[0] if dims else (last if isinstance(last, int) and last > 0 else 0)
    embeddings = np.zeros((len(found), dim), dtype=np.float32)
    boxes = np.zeros((len(found), 4), dtype=np.float32)
    scores = np.zeros(len(found), dtype=np.float32)
    for i, (face, _) in enumerate(found):
        if face.embeddings is not None:
            embeddings[i], boxes[i], scores[i] = face.embeddings[0], face.xyxy[0], face.score[0]
    return _tensors(
        ("embeddings", "FP32", embeddings),
        ("boxes", "FP32", boxes),
        ("scores", "FP32", scores),
        ("counts", "INT64", np.array([n for _, n in found], dtype=np.int64)),
    )


def describe(task: str, card_outputs: Sequence[Any]) -> dict[str, Any]:
    """The image style of a model, for its metadata: input, outputs, parameters."""
    outputs = [{"name": n, "datatype": d, "shape": list(s)} for n, d, s in OUTPUTS[task]]
    if task == "face-embed" and card_outputs:
        last = card_outputs[0].shape[-1]
        outputs[0]["shape"] = [-1, last if isinstance(last, int) and last > 0 else -1]
    return {
        "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
        "parameters": PARAMETERS[task],
    }
