"""The work a peer server does per image, shared by plain_app.py, litserve_app.py and
kserve_app.py so that the benchmark compares serving architectures, not pre/post-processing
code.

Decode is what a hand-written server does: Pillow at full resolution, then RGB. (This service
decodes large JPEGs at reduced scale; set BENCH_PEER_DECODE=service to give the peers that
decoder too.) Preprocessing and postprocessing are the service's own functions, driven by the
same model card.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

from scripts.constants import service_max_pixels
from service.cards import ModelCard, read_card
from service.images import DecodedImage, decode
from service.preprocess import Geometry, needed_side, to_batch
from service.tasks import classify as classify_task
from service.tasks import detect as detect_task

MAX_PIXELS = service_max_pixels()  # decode exactly as the service does


def pil_decode(data: bytes) -> DecodedImage:
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return DecodedImage(np.asarray(img), img.width, img.height, "JPEG")


@dataclass
class Pipeline:
    card: ModelCard
    session: ort.InferenceSession
    input_name: str

    @classmethod
    def load(
        cls, folder: Path, threads: int | None = None, spinning: bool | None = None
    ) -> Pipeline:
        """`spinning`: ORT's `session.intra_op.allow_spinning`; None leaves ORT's default (on)."""
        loaded = read_card(folder)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if spinning is not None:
            options.add_session_config_entry(
                "session.intra_op.allow_spinning", "1" if spinning else "0"
            )
        session = ort.InferenceSession(
            str(loaded.onnx_path), options, providers=["CPUExecutionProvider"]
        )
        return cls(loaded.card, session, session.get_inputs()[0].name)

    @classmethod
    def from_env(cls) -> Pipeline:
        """The peer servers' model: BENCH_MODEL_DIR, with BENCH_THREADS intra-op threads (unset
        or 0: onnxruntime's default) and BENCH_ORT_SPINNING=0/1 (unset: ORT's default, on)."""
        threads = int(os.environ.get("BENCH_THREADS", "0")) or None
        spin = os.environ.get("BENCH_ORT_SPINNING")
        spinning = None if spin in (None, "") else spin == "1"
        return cls.load(Path(os.environ["BENCH_MODEL_DIR"]), threads, spinning)

    def decode(self, data: bytes) -> DecodedImage:
        if os.environ.get("BENCH_PEER_DECODE") == "service":
            return decode(data, max_pixels=MAX_PIXELS, min_side=needed_side(self.card))
        return pil_decode(data)

    def prepare(self, images: list[DecodedImage]) -> tuple[np.ndarray, list[Geometry]]:
        return to_batch(images, self.card.preprocess)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(None, {self.input_name: batch}))

    def answer(self, outputs: list[np.ndarray], geometries: list[Geometry]) -> list[Any]:
        """One JSON-able answer per image: top-5 labels or the detections."""
        labels = self.card.labels
        if self.card.task == "classify":
            preds = classify_task.postprocess(outputs[0], 5, classify_task.activation_of(self.card))
            return [
                {
                    "predictions": [
                        {"label": labels[int(i)], "score": float(s)}
                        for i, s in zip(p.class_id, p.score, strict=True)
                    ]
                }
                for p in preds
            ]
        if self.card.task == "detect":
            dets = detect_task.postprocess(
                outputs[0],
                geometries,
                detect_task.DetectOptions(),
                detect_task.layout_of(self.card),
            )
            return [
                {
                    "detections": [
                        {"label": labels[int(c)], "score": float(s), "box": [float(v) for v in b]}
                        for b, c, s in zip(d.xyxy, d.class_id, d.score, strict=True)
                    ]
                }
                for d in dets
            ]
        raise SystemExit(f"bench peers serve classify and detect models, not {self.card.task}")

    def one(self, data: bytes) -> Any:
        batch, geometries = self.prepare([self.decode(data)])
        return self.answer(self.run(batch), geometries)[0]
