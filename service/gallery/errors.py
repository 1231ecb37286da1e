"""The gallery's named failures (the app's one handler maps every ServiceError)."""

from __future__ import annotations

from service.errors import ServiceError


class GalleryNotFound(ServiceError):
    status_code = 404
    code = "gallery_not_found"


class SubjectNotFound(ServiceError):
    status_code = 404
    code = "subject_not_found"


class FaceNotFound(ServiceError):
    status_code = 404
    code = "face_not_found"


class SubjectExists(ServiceError):
    status_code = 409
    code = "subject_exists"


class SeveralFaces(ServiceError):
    status_code = 422
    code = "several_faces"


class TooFewPairs(ServiceError):
    status_code = 422
    code = "too_few_pairs"


class ModelMismatch(ServiceError):
    """Embeddings of another embedder model (or dimension) than the gallery's."""

    status_code = 422
    code = "model_mismatch"


class ReadOnlyKey(ServiceError):
    status_code = 403
    code = "read_only"


class InvalidImport(ServiceError):
    status_code = 400
    code = "invalid_import"
