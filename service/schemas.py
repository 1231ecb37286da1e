"""The HTTP contract, as the server imports it: the request and response models are defined
once, in the client distribution (`iis_client.schemas`), and re-exported here; what only the
server needs (the error answers each route documents) is added."""

from __future__ import annotations

from typing import Any

from iis_client.schemas import (
    ClassifyResponse,
    ClassPrediction,
    DetectedFace,
    Detection,
    DetectResponse,
    EmbeddedFace,
    ErrorDetail,
    ErrorResponse,
    FaceEmbedResponse,
    FacePair,
    HealthResponse,
    ImageInfo,
    ModelsResponse,
    ModelVersionState,
    ReadyResponse,
    RepositoryIndexEntry,
    RepositoryLoadResponse,
    SegmentInstance,
    SegmentMask,
    SegmentResponse,
    TilingInfo,
    VerifyFacesResponse,
)

__all__ = [
    "ERROR_RESPONSES",
    "ClassPrediction",
    "ClassifyResponse",
    "DetectResponse",
    "DetectedFace",
    "Detection",
    "EmbeddedFace",
    "ErrorDetail",
    "ErrorResponse",
    "FaceEmbedResponse",
    "FacePair",
    "HealthResponse",
    "ImageInfo",
    "ModelVersionState",
    "ModelsResponse",
    "ReadyResponse",
    "RepositoryIndexEntry",
    "RepositoryLoadResponse",
    "SegmentInstance",
    "SegmentMask",
    "SegmentResponse",
    "TilingInfo",
    "VerifyFacesResponse",
]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Not a decodable image, or a missing field."},
    404: {"model": ErrorResponse, "description": "No model of that name for this task."},
    413: {"model": ErrorResponse, "description": "Upload bytes or pixels over the limit."},
    415: {"model": ErrorResponse, "description": "A format the service does not accept."},
    422: {"model": ErrorResponse, "description": "A query parameter out of range."},
    429: {"model": ErrorResponse, "description": "Queue full; retry after `Retry-After`."},
    503: {"model": ErrorResponse, "description": "Model still loading; retry after `Retry-After`."},
}
