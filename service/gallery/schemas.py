"""Request and response models of the gallery routes."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import BaseModel, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_METADATA_BYTES = 4096


class SubjectCreate(BaseModel):
    subject: str = Field(pattern=NAME_PATTERN, description="URL-safe: letters, digits, . _ -")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Any JSON, up to 4 KB.")

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(value).encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"is {size} bytes of JSON; the limit is {MAX_METADATA_BYTES}")
        return value


class SubjectOut(BaseModel):
    subject: str
    metadata: dict[str, Any]
    faces: int = Field(description="Enrolled faces.")
    created_at: dt.datetime


class StoredFace(BaseModel):
    face_id: int
    box: list[float] = Field(description="[x1, y1, x2, y2] in the enrolled photo's pixels.")
    score: float = Field(description="Detector confidence, 0..1.")
    quality: float = Field(
        description="Detector score discounted when the face was smaller than the embedder's "
        "input, 0..1."
    )
    created_at: dt.datetime | None = None


class SubjectDetail(SubjectOut):
    face_list: list[StoredFace]


class SubjectPage(BaseModel):
    gallery: str
    subjects: list[SubjectOut]
    total: int
    next: str | None = Field(description="Pass as `after` for the next page; null at the end.")


class GalleryOut(BaseModel):
    gallery: str
    model: str
    model_version: int
    dim: int | None
    subjects: int
    faces: int
    threshold: float | None = Field(description="Calibrated threshold; null: the card's applies.")
    calibration: dict[str, Any] | None
    revision: int = Field(description="Advances with every enrolment or deletion.")


class GalleryList(BaseModel):
    galleries: list[GalleryOut]


class EnrolResponse(BaseModel):
    gallery: str
    subject: str
    model: str
    model_version: int
    faces: list[StoredFace]
    faces_found: int = Field(description="Faces the detector found in the photo.")
    timing_ms: dict[str, float]


class Deleted(BaseModel):
    gallery: str
    subject: str | None = None
    face_id: int | None = None
    faces_deleted: int


class MatchOut(BaseModel):
    subject: str
    similarity: float = Field(description="Cosine similarity to the subject's closest face.")


class IdentifiedFace(BaseModel):
    box: list[float]
    score: float
    landmarks: list[list[float]]
    matches: list[MatchOut] = Field(description="The top_k subjects, best first.")
    subject: str | None = Field(description="The best match if it reaches the threshold; null: "
                                "unknown.")  # fmt: skip
    similarity: float | None = Field(description="The best match's similarity.")


class IdentifyResponse(BaseModel):
    gallery: str
    model: str
    model_version: int
    detector: str
    threshold: float
    threshold_source: str
    enrolled_faces: int
    faces: list[IdentifiedFace]
    image: dict[str, int]
    timing_ms: dict[str, float]


class CalibrateRequest(BaseModel):
    target_far: float = Field(
        ge=1e-6, le=0.5, description="False-accept rate to hold, 1e-6..0.5, e.g. 0.001."
    )


class CalibrateResponse(BaseModel):
    gallery: str
    target_far: float
    threshold: float = Field(description="Kept as the gallery's threshold from now on.")
    far: float = Field(description="False-accept rate reached on the impostor pairs.")
    tar: float = Field(description="True-accept rate on the genuine pairs at the threshold.")
    auc: float = Field(description="ROC AUC: P(genuine pair scores above an impostor pair).")
    genuine_pairs: int
    impostor_pairs: int
    sampled: bool = Field(description="Large galleries are sampled (fixed seed).")
    previous_threshold: float | None


class ImportResponse(BaseModel):
    gallery: str
    model: str
    model_version: int
    subjects: int
    faces: int


class DeletionRecord(BaseModel):
    at: dt.datetime
    actor: str
    request_id: str
    gallery: str
    subject: str | None
    face_id: int | None
    faces_deleted: int


class DeletionLog(BaseModel):
    deletions: list[DeletionRecord]
