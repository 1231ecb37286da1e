"""Export and import of a gallery as JSON Lines (backups, moves between machines).

    {"type": "gallery", "format": 1, "gallery": "office", "model": "sface-2021dec",
     "model_version": 1, "dim": 128, "threshold": null, "calibration": null}
    {"type": "subject", "subject": "alice", "metadata": {"team": "ops"}}
    {"type": "face", "subject": "alice", "box": [...], "score": 0.93, "quality": 0.93,
     "embedding": "<base64 of dim float32, little-endian>"}

The header comes first; a subject's line comes before its faces. Embeddings travel exactly
(base64 of their float32 bytes) and only with the model that made them: an import into a
gallery of another model, or of another dimension, is refused as a whole.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.gallery.errors import InvalidImport, ModelMismatch
from service.gallery.store import Gallery, NewFace, Store

FORMAT = 1


def export_lines(store: Store, gallery: Gallery) -> Iterator[bytes]:
    header = {
        "type": "gallery", "format": FORMAT, "gallery": gallery.name,
        "model": gallery.model_name, "model_version": gallery.model_version,
        "dim": gallery.dim, "threshold": gallery.threshold, "calibration": gallery.calibration,
    }  # fmt: skip
    yield json.dumps(header).encode() + b"\n"
    for name, metadata in store.iter_subjects(gallery):
        yield (
            json.dumps({"type": "subject", "subject": name, "metadata": metadata}).encode() + b"\n"
        )
    for name, box, score, quality, blob in store.iter_faces(gallery):
        line = {
            "type": "face", "subject": name, "box": box, "score": score, "quality": quality,
            "embedding": base64.b64encode(blob).decode(),
        }  # fmt: skip
        yield json.dumps(line).encode() + b"\n"


CHUNK_BYTES = 256 * 1024


def chunked(lines: Iterable[bytes], size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """`lines` joined into pieces of at least `size` bytes (the last may be shorter): a
    streamed response runs a sync iterator one item per thread hop, which per export line
    meant a hop per face."""
    chunk: list[bytes] = []
    held = 0
    for line in lines:
        chunk.append(line)
        held += len(line)
        if held >= size:
            yield b"".join(chunk)
            chunk, held = [], 0
    if chunk:
        yield b"".join(chunk)


@dataclass
class Parsed:
    model: str
    model_version: int
    dim: int
    people: dict[str, tuple[dict[str, Any], list[NewFace]]] = field(default_factory=dict)

    @property
    def faces(self) -> int:
        return sum(len(f) for _, f in self.people.values())


def _embedding(value: object, dim: int, where: str) -> np.ndarray:
    try:
        raw = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImport(f"{where}: embedding is not base64") from None
    if len(raw) != 4 * dim:
        raise ModelMismatch(f"{where}: embedding has {len(raw) // 4} values; the header says {dim}")
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(vector).all() or abs(norm - 1.0) > 1e-3:
        raise InvalidImport(f"{where}: embedding is not a finite unit vector (norm {norm:.4g})")
    return vector


def parse(body: bytes, names_ok: Any) -> Parsed:
    """Validate a whole export before anything is stored. names_ok(name) -> bool."""
    lines = [ln for ln in body.splitlines() if ln.strip()]
    if not lines:
        raise InvalidImport("the body is empty; send the JSON Lines of an export")
    records = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidImport(
                f"line {n} is not JSON; send the JSON Lines of an export (GET .../export)"
            ) from None
        if not isinstance(record, dict):
            raise InvalidImport(f"line {n} is not a JSON object")
        records.append(record)
    head = records[0]
    if head.get("type") != "gallery" or head.get("format") != FORMAT:
        raise InvalidImport(f"line 1 must be the gallery header of format {FORMAT}")
    model, version, dim = head.get("model"), head.get("model_version"), head.get("dim")
    if not isinstance(model, str) or not isinstance(version, int) or not isinstance(dim, int):
        raise InvalidImport("the header needs model (string), model_version and dim (integers)")
    if not 0 < dim <= 4096:
        raise InvalidImport(f"the header's dim {dim} is out of range")
    parsed = Parsed(model, version, dim)
    for n, record in enumerate(records[1:], 2):
        kind, name = record.get("type"), record.get("subject")
        if not isinstance(name, str) or not names_ok(name):
            raise InvalidImport(f"line {n}: subject {name!r} is not a URL-safe name")
        if kind == "subject":
            metadata = record.get("metadata", {})
            if not isinstance(metadata, dict):
                raise InvalidImport(f"line {n}: metadata must be an object")
            if name in parsed.people:
                raise InvalidImport(f"line {n}: subject {name!r} appears twice")
            parsed.people[name] = (metadata, [])
        elif kind == "face":
            if name not in parsed.people:
                raise InvalidImport(f"line {n}: face of {name!r} before its subject line")
            box, score, quality = record.get("box"), record.get("score"), record.get("quality")
            if not (isinstance(box, list) and len(box) == 4
                    and all(isinstance(v, int | float) for v in box)):  # fmt: skip
                raise InvalidImport(f"line {n}: box must be [x1, y1, x2, y2]")
            if not isinstance(score, int | float) or not isinstance(quality, int | float):
                raise InvalidImport(f"line {n}: score and quality must be numbers")
            vector = _embedding(record.get("embedding"), dim, f"line {n}")
            face = NewFace(vector, [float(v) for v in box], float(score), float(quality))
            parsed.people[name][1].append(face)
        else:
            raise InvalidImport(f"line {n}: type must be 'subject' or 'face'")
    return parsed


def check_model(parsed: Parsed, gallery: Gallery | None, model: str, version: int) -> None:
    """The file's embeddings must come from the gallery's model (or, for a new gallery, from
    the embedder it is being created with)."""
    want = (gallery.model_name, gallery.model_version) if gallery else (model, version)
    if (parsed.model, parsed.model_version) != want:
        raise ModelMismatch(
            f"the export holds embeddings of {parsed.model}@{parsed.model_version}; "
            f"{'gallery ' + repr(gallery.name) + ' uses' if gallery else 'the embedder is'} "
            f"{want[0]}@{want[1]}. Embeddings of different models are never compared: "
            "re-enrol the photos with this model instead. Nothing was imported"
        )
    if gallery is not None and gallery.dim is not None and gallery.dim != parsed.dim:
        raise ModelMismatch(
            f"the export holds {parsed.dim}-d embeddings; gallery {gallery.name!r} holds "
            f"{gallery.dim}-d ones. Nothing was imported"
        )
