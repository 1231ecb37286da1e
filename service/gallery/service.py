"""What the gallery routes call: open the database, enrol, identify, calibrate.

Detection, alignment and embedding are service.tasks.faces' (the same as /faces/embed); this
module adds the gallery: which faces to keep, where they go, and who they match.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.detections import Detections
from service.errors import NoFaceFound
from service.gallery import calibrate as cal
from service.gallery.db import database_url, make_engine, migrate
from service.gallery.errors import SeveralFaces
from service.gallery.index import GalleryIndex, Indexes, Match
from service.gallery.store import Gallery, NewFace, Store
from service.images import DecodedImage
from service.runtime import ModelRuntime
from service.settings import Settings
from service.tasks.faces import (
    DetectorSettings,
    EmbedderSettings,
    detect_faces,
    embed_faces,
    largest,
)
from service.timing import Timing, in_thread, off_loop

log = logging.getLogger("service.gallery")


class Galleries:
    """The database and this process's search indexes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.indexes = Indexes(store)

    @staticmethod
    async def open(settings: Settings) -> Galleries:
        """Connect, migrate to head, and load every gallery's index."""
        url = database_url(settings.database_url, settings.data_dir)
        engine = make_engine(url)
        await off_loop(migrate, engine)
        galleries = Galleries(Store(engine))
        return galleries

    async def warm(self) -> None:
        """Build every gallery's index (start-up), so the first identify does not wait."""
        for tenant_gallery in await off_loop(self.store.all_galleries):
            await self.indexes.current(tenant_gallery)

    def close(self) -> None:
        self.store.engine.dispose()


def quality(faces: Detections, i: int, embed_size: tuple[int, int]) -> float:
    """A 0..1 face-quality figure: the detector's score, discounted when the face's short side
    is smaller than the embedder's input (the crop was upsampled, detail is missing)."""
    w, h = faces.xyxy[i, 2:] - faces.xyxy[i, :2]
    return round(float(faces.score[i]) * min(1.0, float(min(w, h)) / min(embed_size)), 4)


@dataclass(frozen=True)
class Enrolled:
    ids: list[int]
    faces: Detections
    qualities: list[float]
    found: int


async def enrol(
    galleries: Galleries,
    gallery: Gallery,
    subject: str,
    detector: ModelRuntime,
    embedder: ModelRuntime,
    image: DecodedImage,
    every: bool,
    timing: Timing,
) -> Enrolled:
    """Detect; keep the one face (or every face with every=True); embed; store; index."""
    found = await detect_faces(detector, image, timing)
    if not len(found):
        raise NoFaceFound(
            f"no face found (detector {detector.name}, score threshold "
            f"{DetectorSettings.from_card(detector.card).score_threshold:g}); nothing was "
            "enrolled. Send a photo with a clearly visible, roughly frontal face"
        )
    if len(found) > 1 and not every:
        raise SeveralFaces(
            f"{len(found)} faces found; nothing was enrolled. Send a photo of this subject "
            "alone, or add ?all=true to enrol every face as this subject"
        )
    chosen = found if every else found.take([largest(found)])
    vectors = await embed_faces(embedder, [image], [chosen], timing)
    size = EmbedderSettings.from_card(embedder.card).size
    qualities = [quality(chosen, i, size) for i in range(len(chosen))]
    new = [
        NewFace(vectors[i], [round(float(v), 2) for v in chosen.xyxy[i]],
                round(float(chosen.score[i]), 4), qualities[i])
        for i in range(len(chosen))
    ]  # fmt: skip
    ids, subject_id, revision = await in_thread(
        timing, "store", galleries.store.add_faces, gallery, subject, new
    )
    await galleries.indexes.apply(
        gallery.id, revision, lambda index: index.add(ids, subject_id, subject, vectors)
    )
    return Enrolled(ids, chosen, qualities, len(found))


@dataclass(frozen=True)
class Identified:
    faces: Detections
    matches: list[list[Match]]
    threshold: float
    threshold_source: str
    enrolled: int


def threshold_of(gallery: Gallery, embedder: ModelRuntime) -> tuple[float, str]:
    """The gallery's calibrated threshold, else the embedder card's cosine threshold."""
    if gallery.threshold is not None and gallery.calibration is not None:
        c = gallery.calibration
        return gallery.threshold, (
            f"calibrated on this gallery for target_far {c['target_far']:g}: FAR "
            f"{c['far']:.4g}, TAR {c['tar']:.4g} on {c['genuine_pairs']} genuine and "
            f"{c['impostor_pairs']} impostor pairs"
        )
    settings = EmbedderSettings.from_card(embedder.card)
    return settings.thresholds["cosine"], (
        f"the card of {embedder.ref} (postprocess.thresholds.cosine); calibrate the gallery "
        "for a threshold with a known false-accept rate"
    )


async def identify(
    galleries: Galleries,
    gallery: Gallery,
    detector: ModelRuntime,
    embedder: ModelRuntime,
    image: DecodedImage,
    top_k: int,
    max_faces: int,
    timing: Timing,
) -> Identified:
    """Every face (up to max_faces, best score first) against the gallery's subjects."""
    found = await detect_faces(detector, image, timing)
    found = found.take(np.arange(min(len(found), max_faces)))
    threshold, source = threshold_of(gallery, embedder)
    if not len(found):
        return Identified(found, [], threshold, source, 0)
    vectors = await embed_faces(embedder, [image], [found], timing)
    index: GalleryIndex = await galleries.indexes.current(gallery)
    matches = await in_thread(timing, "search", index.search, vectors, top_k)
    return Identified(found, matches, threshold, source, index.n)


async def calibrate(galleries: Galleries, gallery: Gallery, target_far: float) -> cal.Calibration:
    """Calibrate on the gallery's faces as they are now, and keep the threshold."""
    index = await galleries.indexes.current(gallery)

    def run() -> cal.Calibration:
        with index.lock:
            matrix = index.matrix[: index.n].copy()
            subjects = index.subject_ids[: index.n].copy()
        genuine, impostor, sampled = cal.pair_scores(matrix, subjects)
        return cal.calibrate(genuine, impostor, target_far, sampled)

    result = await off_loop(run)
    report: dict[str, Any] = {**result.report(), "revision": index.revision}
    await off_loop(galleries.store.set_calibration, gallery.id, result.threshold, report)
    return result
