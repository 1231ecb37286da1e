"""/v1/faces/galleries/...: subjects, enrolment, identification, calibration, export/import.

Every gallery belongs to the caller's tenant (service/tenancy.py): another tenant's gallery of
the same name is a different gallery, and one that is not the caller's answers 404.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse

from service.errors import request_id_of
from service.gallery import service, transfer
from service.gallery.errors import ModelMismatch, ReadOnlyKey
from service.gallery.schemas import (
    NAME_PATTERN,
    CalibrateRequest,
    CalibrateResponse,
    Deleted,
    DeletionLog,
    DeletionRecord,
    EnrolResponse,
    GalleryList,
    GalleryOut,
    IdentifiedFace,
    IdentifyResponse,
    ImportResponse,
    MatchOut,
    StoredFace,
    SubjectCreate,
    SubjectDetail,
    SubjectOut,
    SubjectPage,
)
from service.gallery.service import Galleries
from service.gallery.store import Audit, Gallery
from service.routes.common import (
    GalleriesDep,
    ImageUpload,
    RegistryDep,
    SettingsDep,
    face_out,
    face_photo,
)
from service.runtime import ModelRuntime
from service.schemas import ERROR_RESPONSES
from service.tenancy import Principal, principal_of
from service.timing import Timing, off_loop

router = APIRouter(prefix="/v1/faces", tags=["face galleries"], responses=ERROR_RESPONSES)
NAME = re.compile(NAME_PATTERN)

GalleryName = Annotated[str, Path(pattern=NAME_PATTERN, description="URL-safe gallery name.")]
SubjectName = Annotated[str, Path(pattern=NAME_PATTERN, description="URL-safe subject name.")]
DetectorName = Annotated[
    str | None, Query(max_length=80, description="Face detector; default per /v1/models.")
]


# async, as the dependencies in routes/common.py: a plain def would cost every gallery
# request a thread-pool hop for a field read
async def reader(request: Request) -> Principal:
    return principal_of(request)


async def writable(request: Request) -> Principal:
    principal = principal_of(request)
    if principal.read_only:
        raise ReadOnlyKey(
            "this API key is read-only: it may identify, list and export, not enrol, delete, "
            "calibrate or import"
        )
    return principal


Reader = Annotated[Principal, Depends(reader)]
Writer = Annotated[Principal, Depends(writable)]


def _audit(request: Request, principal: Principal) -> Audit:
    return Audit(principal.actor, request_id_of(request))


async def _gallery(galleries: Galleries, principal: Principal, name: str) -> Gallery:
    return await off_loop(galleries.store.get_gallery, principal.tenant, name)


async def _gallery_or_new(
    galleries: Galleries, principal: Principal, name: str, embedder: Callable[[], ModelRuntime]
) -> Gallery:
    """The tenant's gallery `name`, created bound to `embedder()` if it does not exist."""
    found = await off_loop(galleries.store.find_gallery, principal.tenant, name)
    if found is not None:
        return found
    model = embedder()
    return await off_loop(
        galleries.store.ensure_gallery, principal.tenant, name, model.name, model.version
    )


def _out(gallery: Gallery, subjects: int, faces: int) -> GalleryOut:
    return GalleryOut(
        gallery=gallery.name, model=gallery.model_name, model_version=gallery.model_version,
        dim=gallery.dim, subjects=subjects, faces=faces, threshold=gallery.threshold,
        calibration=gallery.calibration, revision=gallery.revision,
    )  # fmt: skip


@router.get("/galleries", response_model=GalleryList)
async def list_galleries(galleries: GalleriesDep, principal: Reader) -> GalleryList:
    """The caller's galleries."""
    rows = await off_loop(galleries.store.list_galleries, principal.tenant)
    return GalleryList(galleries=[_out(g, s, f) for g, s, f in rows])


@router.get("/galleries/{gallery}", response_model=GalleryOut)
async def get_gallery(
    gallery: GalleryName, galleries: GalleriesDep, principal: Reader
) -> GalleryOut:
    """One gallery: its embedder model, counts and threshold."""
    found = await _gallery(galleries, principal, gallery)
    subjects, faces = await off_loop(galleries.store.counts, found.id)
    return _out(found, subjects, faces)


@router.delete("/galleries/{gallery}", response_model=Deleted)
async def delete_gallery(
    request: Request, gallery: GalleryName, galleries: GalleriesDep, principal: Writer
) -> Deleted:
    """Delete a gallery, every subject and every embedding in it (logged, without them)."""
    found = await _gallery(galleries, principal, gallery)
    n = await off_loop(galleries.store.delete_gallery, found, _audit(request, principal))
    galleries.indexes.forget(found.id)
    return Deleted(gallery=gallery, faces_deleted=n)


@router.post("/galleries/{gallery}/subjects", response_model=SubjectOut, status_code=201)
async def create_subject(
    registry: RegistryDep,
    gallery: GalleryName,
    body: SubjectCreate,
    galleries: GalleriesDep,
    principal: Writer,
    model: Annotated[
        str | None,
        Query(
            max_length=80,
            description="Embedder of a new gallery (`name[@version]`); "
            "default per /v1/models. An existing gallery keeps its own.",
        ),
    ] = None,
) -> SubjectOut:
    """Add a subject (creating the gallery, bound to one embedder model, if it is new)."""
    existing = await _gallery_or_new(
        galleries, principal, gallery, lambda: registry.get("face-embed", model)
    )
    if model is not None and model not in (existing.model_name, existing.model_ref):
        raise ModelMismatch(
            f"gallery {gallery!r} uses {existing.model_ref}; it cannot take subjects for {model}"
        )
    subject = await off_loop(galleries.store.create_subject, existing, body.subject, body.metadata)
    return SubjectOut(
        subject=subject.name, metadata=subject.metadata, faces=0, created_at=subject.created_at
    )


@router.get("/galleries/{gallery}/subjects", response_model=SubjectPage)
async def list_subjects(
    gallery: GalleryName,
    galleries: GalleriesDep,
    principal: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[
        str | None, Query(max_length=64, description="The `next` of the previous page.")
    ] = None,
) -> SubjectPage:
    """Subjects by name, a page at a time."""
    found = await _gallery(galleries, principal, gallery)
    page, total = await off_loop(galleries.store.list_subjects, found.id, limit, after)
    return SubjectPage(
        gallery=gallery,
        subjects=[
            SubjectOut(subject=s.name, metadata=s.metadata, faces=s.faces, created_at=s.created_at)
            for s in page
        ],
        total=total,
        next=page[-1].name if len(page) == limit else None,
    )


@router.get("/galleries/{gallery}/subjects/{subject}", response_model=SubjectDetail)
async def get_subject(
    gallery: GalleryName, subject: SubjectName, galleries: GalleriesDep, principal: Reader
) -> SubjectDetail:
    """One subject with its faces (boxes and scores; never the embeddings or a photo)."""
    found = await _gallery(galleries, principal, gallery)
    row, face_rows = await off_loop(galleries.store.get_subject, found, subject)
    return SubjectDetail(
        subject=row.name, metadata=row.metadata, faces=row.faces, created_at=row.created_at,
        face_list=[StoredFace(face_id=f["id"], **{k: v for k, v in f.items() if k != "id"})
                   for f in face_rows],
    )  # fmt: skip


@router.delete("/galleries/{gallery}/subjects/{subject}", response_model=Deleted)
async def delete_subject(
    request: Request,
    gallery: GalleryName,
    subject: SubjectName,
    galleries: GalleriesDep,
    principal: Writer,
) -> Deleted:
    """Delete a subject and every embedding of it, for real (logged, without them)."""
    found = await _gallery(galleries, principal, gallery)
    ids, revision = await off_loop(
        galleries.store.delete_subject, found, subject, _audit(request, principal)
    )
    await galleries.indexes.apply(found.id, revision, lambda index: index.remove(ids))
    return Deleted(gallery=gallery, subject=subject, faces_deleted=len(ids))


@router.post(
    "/galleries/{gallery}/subjects/{subject}/faces", response_model=EnrolResponse, status_code=201
)
async def enrol_face(
    registry: RegistryDep,
    settings: SettingsDep,
    gallery: GalleryName,
    subject: SubjectName,
    image: ImageUpload,
    galleries: GalleriesDep,
    principal: Writer,
    all: Annotated[
        bool, Query(description="Enrol every face in the photo (default: exactly one).")
    ] = False,
    detector: DetectorName = None,
) -> EnrolResponse:
    """Detect, align and embed the face in a photo and store it for the subject (no photo kept)."""
    timing = Timing()
    found = await _gallery(galleries, principal, gallery)
    photo = await face_photo(registry, settings, image, timing, found.model_ref, detector)
    embedder = photo.embedder
    result = await service.enrol(
        galleries, found, subject, photo.detector, embedder, photo.image, all, timing
    )
    shown = [face_out(result.faces, i) for i in range(len(result.ids))]
    faces = [
        StoredFace(face_id=face_id, box=face.box, score=face.score, quality=quality)
        for face_id, face, quality in zip(result.ids, shown, result.qualities, strict=True)
    ]
    return EnrolResponse(
        gallery=gallery, subject=subject, model=embedder.name, model_version=embedder.version,
        faces=faces, faces_found=result.found, timing_ms=timing.report(),
    )  # fmt: skip


@router.delete("/galleries/{gallery}/subjects/{subject}/faces/{face_id}", response_model=Deleted)
async def delete_face(
    request: Request,
    gallery: GalleryName,
    subject: SubjectName,
    face_id: Annotated[int, Path(ge=1, le=2**62)],
    galleries: GalleriesDep,
    principal: Writer,
) -> Deleted:
    """Delete one enrolled face (logged, without its embedding)."""
    found = await _gallery(galleries, principal, gallery)
    revision = await off_loop(
        galleries.store.delete_face, found, subject, face_id, _audit(request, principal)
    )
    await galleries.indexes.apply(found.id, revision, lambda index: index.remove([face_id]))
    return Deleted(gallery=gallery, subject=subject, face_id=face_id, faces_deleted=1)


@router.post("/galleries/{gallery}/identify", response_model=IdentifyResponse)
async def identify(
    registry: RegistryDep,
    settings: SettingsDep,
    gallery: GalleryName,
    image: ImageUpload,
    galleries: GalleriesDep,
    principal: Reader,
    detector: DetectorName = None,
    top_k: Annotated[int, Query(ge=1, le=100)] = 5,
    max_faces: Annotated[int, Query(ge=1, le=100)] = 20,
) -> IdentifyResponse:
    """Who is in this photo? Every face against the gallery's subjects."""
    timing = Timing()
    found = await _gallery(galleries, principal, gallery)
    photo = await face_photo(registry, settings, image, timing, found.model_ref, detector)
    embedder, finder, decoded = photo.embedder, photo.detector, photo.image
    result = await service.identify(
        galleries, found, finder, embedder, decoded, top_k, max_faces, timing
    )
    faces = []
    for i, matches in enumerate(result.matches):
        best = matches[0] if matches else None
        known = best is not None and best.similarity >= result.threshold
        faces.append(
            IdentifiedFace(
                **face_out(result.faces, i).model_dump(),
                matches=[MatchOut(subject=m.subject, similarity=m.similarity) for m in matches],
                subject=best.subject if known and best else None,
                similarity=best.similarity if best else None,
            )
        )
    return IdentifyResponse(
        gallery=gallery, model=embedder.name, model_version=embedder.version,
        detector=finder.name, threshold=result.threshold,
        threshold_source=result.threshold_source, enrolled_faces=result.enrolled, faces=faces,
        image={"width": decoded.width, "height": decoded.height}, timing_ms=timing.report(),
    )  # fmt: skip


@router.post("/galleries/{gallery}/calibrate", response_model=CalibrateResponse)
async def calibrate(
    gallery: GalleryName, body: CalibrateRequest, galleries: GalleriesDep, principal: Writer
) -> CalibrateResponse:
    """Pick and keep the threshold for a target false-accept rate from the enrolled faces."""
    found = await _gallery(galleries, principal, gallery)
    result = await service.calibrate(galleries, found, body.target_far)
    return CalibrateResponse(gallery=gallery, previous_threshold=found.threshold, **result.report())


@router.get("/galleries/{gallery}/export", response_class=StreamingResponse)
async def export_gallery(
    gallery: GalleryName, galleries: GalleriesDep, principal: Reader
) -> StreamingResponse:
    """The gallery as JSON Lines: header, subjects, faces with their embeddings."""
    found = await _gallery(galleries, principal, gallery)
    return StreamingResponse(
        transfer.chunked(transfer.export_lines(galleries.store, found)),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{gallery}.jsonl"'},
    )


IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "description": "An export's JSON Lines (any content type; application/x-ndjson is usual).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post(
    "/galleries/{gallery}/import",
    response_model=ImportResponse,
    status_code=201,
    openapi_extra=IMPORT_BODY,
)
async def import_gallery(
    request: Request,
    registry: RegistryDep,
    gallery: GalleryName,
    galleries: GalleriesDep,
    principal: Writer,
) -> ImportResponse:
    """Import an export: all of it or nothing; refused when its model is not the gallery's."""
    body = await request.body()  # bounded by the upload limit (IIS_MAX_UPLOAD_BYTES)
    parsed = await off_loop(transfer.parse, body, lambda n: bool(NAME.match(n)))

    def file_model() -> ModelRuntime:  # a new gallery takes the file's, which we must have
        embedder = registry.get("face-embed", f"{parsed.model}@{parsed.model_version}")
        transfer.check_model(parsed, None, embedder.name, embedder.version)
        return embedder

    existing = await _gallery_or_new(galleries, principal, gallery, file_model)
    transfer.check_model(parsed, existing, existing.model_name, existing.model_version)
    people = [(name, meta, new) for name, (meta, new) in parsed.people.items()]
    stored, _ = await off_loop(galleries.store.import_subjects, existing, people)
    return ImportResponse(
        gallery=gallery, model=existing.model_name, model_version=existing.model_version,
        subjects=len(people), faces=stored,
    )  # fmt: skip


@router.get("/deletions", response_model=DeletionLog)
async def deletion_log(
    galleries: GalleriesDep,
    principal: Writer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeletionLog:
    """The tenant's deletions, newest first: who, when, what (never an embedding)."""
    rows = await off_loop(galleries.store.deletion_log, principal.tenant, limit)
    return DeletionLog(deletions=[DeletionRecord(**r) for r in rows])
