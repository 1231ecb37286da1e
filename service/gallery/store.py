"""The gallery database through SQLAlchemy 2 Core; synchronous, called from worker threads.

Every change to a gallery's faces first bumps `galleries.revision` (UPDATE ... RETURNING): on
PostgreSQL that row lock orders the writers of one gallery, so revisions follow commit order;
on SQLite every writer holds the database lock (BEGIN IMMEDIATE). A replica whose index is at
the revision the database reports has every face committed before it read that revision.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from service.gallery.db import deletions, faces, galleries, subjects, writer
from service.gallery.errors import (
    FaceNotFound,
    GalleryNotFound,
    ModelMismatch,
    SubjectExists,
    SubjectNotFound,
)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Gallery:
    id: int
    tenant: str
    name: str
    model_name: str
    model_version: int
    dim: int | None
    threshold: float | None
    calibration: dict[str, Any] | None
    revision: int
    created_at: dt.datetime

    @property
    def model_ref(self) -> str:
        return f"{self.model_name}@{self.model_version}"

    @staticmethod
    def of(row: Row[Any]) -> Gallery:
        m = row._mapping
        return Gallery(
            m["id"], m["tenant"], m["name"], m["model_name"], m["model_version"], m["dim"],
            m["threshold"], m["calibration"], m["revision"], m["created_at"],
        )  # fmt: skip


@dataclass(frozen=True)
class Subject:
    id: int
    name: str
    metadata: dict[str, Any]
    created_at: dt.datetime
    faces: int = 0


@dataclass(frozen=True)
class NewFace:
    """embedding: (D,) float32, L2-normalised; box: [x1, y1, x2, y2] original pixels."""

    embedding: np.ndarray
    box: list[float]
    score: float
    quality: float


@dataclass(frozen=True)
class Audit:
    """Who asks for a deletion: the key's label (never the key) and the request id."""

    actor: str
    request_id: str


@dataclass
class Snapshot:
    """A gallery's faces at one revision. ids, subject_ids: (N,) int64; matrix: (N, D) float32."""

    revision: int
    ids: np.ndarray
    subject_ids: np.ndarray
    matrix: np.ndarray
    names: dict[int, str] = field(default_factory=dict)


def to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blobs(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """-> (N, dim) float32 from N blobs of dim little-endian float32 each."""
    if not blobs:
        return np.zeros((0, dim), np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.writer = writer(engine)

    # --- galleries ------------------------------------------------------------------------

    def find_gallery(self, tenant: str, name: str) -> Gallery | None:
        with self.engine.connect() as conn:
            return self._find(conn, tenant, name)

    @staticmethod
    def _find(conn: Connection, tenant: str, name: str) -> Gallery | None:
        row = conn.execute(
            sa.select(galleries).where(galleries.c.tenant == tenant, galleries.c.name == name)
        ).first()
        return Gallery.of(row) if row is not None else None

    def get_gallery(self, tenant: str, name: str) -> Gallery:
        found = self.find_gallery(tenant, name)
        if found is None:
            raise GalleryNotFound(
                f"no gallery {name!r}; create one by adding a subject to it "
                f"(POST /v1/faces/galleries/{name}/subjects)"
            )
        return found

    def ensure_gallery(self, tenant: str, name: str, model: str, version: int) -> Gallery:
        """The gallery, created for this embedder model if it does not exist yet."""
        found = self.find_gallery(tenant, name)
        if found is not None:
            return found
        try:
            with self.writer.begin() as conn:
                conn.execute(
                    sa.insert(galleries).values(
                        tenant=tenant,
                        name=name,
                        model_name=model,
                        model_version=version,
                        revision=0,
                        created_at=now(),
                    )  # fmt: skip
                )
        except IntegrityError:
            pass  # created at the same moment by another request: use that one
        return self.get_gallery(tenant, name)

    def all_galleries(self) -> list[Gallery]:
        with self.engine.connect() as conn:
            return [Gallery.of(r) for r in conn.execute(sa.select(galleries)).all()]

    def list_galleries(self, tenant: str) -> list[tuple[Gallery, int, int]]:
        """-> (gallery, subjects, faces) for each gallery of the tenant, by name."""
        n_subjects = (
            sa.select(sa.func.count())
            .where(subjects.c.gallery_id == galleries.c.id)
            .scalar_subquery()
        )
        n_faces = (
            sa.select(sa.func.count()).where(faces.c.gallery_id == galleries.c.id).scalar_subquery()
        )
        query = (
            sa.select(galleries, n_subjects.label("n_subjects"), n_faces.label("n_faces"))
            .where(galleries.c.tenant == tenant)
            .order_by(galleries.c.name)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [(Gallery.of(r), int(r.n_subjects), int(r.n_faces)) for r in rows]

    def counts(self, gallery_id: int) -> tuple[int, int]:
        with self.engine.connect() as conn:
            n_subjects = conn.execute(
                sa.select(sa.func.count()).where(subjects.c.gallery_id == gallery_id)
            ).scalar_one()
            n_faces = conn.execute(
                sa.select(sa.func.count()).where(faces.c.gallery_id == gallery_id)
            ).scalar_one()
        return int(n_subjects), int(n_faces)

    def delete_gallery(self, gallery: Gallery, audit: Audit) -> int:
        """Every subject and face of it, for real; -> faces deleted."""
        with self.writer.begin() as conn:
            n = conn.execute(sa.delete(faces).where(faces.c.gallery_id == gallery.id)).rowcount
            conn.execute(sa.delete(subjects).where(subjects.c.gallery_id == gallery.id))
            conn.execute(sa.delete(galleries).where(galleries.c.id == gallery.id))
            self._log(conn, audit, gallery, None, None, n)
        return int(n)

    def set_calibration(self, gallery_id: int, threshold: float, report: dict[str, Any]) -> None:
        with self.writer.begin() as conn:
            conn.execute(
                sa.update(galleries)
                .where(galleries.c.id == gallery_id)
                .values(threshold=threshold, calibration=report)
            )

    # --- subjects -------------------------------------------------------------------------

    def create_subject(self, gallery: Gallery, name: str, metadata: dict[str, Any]) -> Subject:
        created = now()
        try:
            with self.writer.begin() as conn:
                subject_id = _insert_subject(conn, gallery, name, metadata, created)
        except IntegrityError:
            raise SubjectExists(
                f"subject {name!r} already exists in gallery {gallery.name!r}; enrol more faces "
                f"with POST .../subjects/{name}/faces"
            ) from None
        return Subject(subject_id, name, metadata, created)

    def list_subjects(
        self, gallery_id: int, limit: int, after: str | None
    ) -> tuple[list[Subject], int]:
        """Subjects by name, `limit` of them after the name `after`; -> (page, total)."""
        n_faces = (
            sa.select(sa.func.count())
            .where(faces.c.subject_id == subjects.c.id)
            .scalar_subquery()
            .label("n_faces")
        )
        query = (
            sa.select(subjects, n_faces)
            .where(subjects.c.gallery_id == gallery_id)
            .order_by(subjects.c.name)
            .limit(limit)
        )
        if after is not None:
            query = query.where(subjects.c.name > after)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            total = conn.execute(
                sa.select(sa.func.count()).where(subjects.c.gallery_id == gallery_id)
            ).scalar_one()
        page = [Subject(r.id, r.name, r.metadata, r.created_at, int(r.n_faces)) for r in rows]
        return page, int(total)

    def get_subject(self, gallery: Gallery, name: str) -> tuple[Subject, list[dict[str, Any]]]:
        """-> the subject and its faces (id, box, score, quality, created_at; no embedding)."""
        with self.engine.connect() as conn:
            row = self._subject(conn, gallery, name)
            rows = conn.execute(
                sa.select(faces.c.id, faces.c.box, faces.c.score, faces.c.quality,
                          faces.c.created_at)
                .where(faces.c.subject_id == row.id)
                .order_by(faces.c.id)
            ).all()  # fmt: skip
        listed = [dict(r._mapping) for r in rows]
        return Subject(row.id, row.name, row.metadata, row.created_at, len(listed)), listed

    @staticmethod
    def _subject(conn: Connection, gallery: Gallery, name: str) -> Row[Any]:
        row = conn.execute(
            sa.select(subjects).where(subjects.c.gallery_id == gallery.id, subjects.c.name == name)
        ).first()
        if row is None:
            raise SubjectNotFound(f"no subject {name!r} in gallery {gallery.name!r}")
        return row

    @staticmethod
    def _bump(conn: Connection, gallery: Gallery) -> int:
        """Take the gallery's write lock (PostgreSQL: its row) and advance its revision."""
        revision = conn.execute(
            sa.update(galleries)
            .where(galleries.c.id == gallery.id)
            .values(revision=galleries.c.revision + 1)
            .returning(galleries.c.revision)
        ).scalar_one_or_none()
        if revision is None:
            raise GalleryNotFound(f"gallery {gallery.name!r} was deleted")
        return int(revision)

    def delete_subject(self, gallery: Gallery, name: str, audit: Audit) -> tuple[list[int], int]:
        """The subject and every face of it, for real. -> (deleted face ids, revision)."""
        with self.writer.begin() as conn:
            revision = self._bump(conn, gallery)
            row = self._subject(conn, gallery, name)
            ids = conn.execute(
                sa.delete(faces).where(faces.c.subject_id == row.id).returning(faces.c.id)
            ).scalars().all()  # fmt: skip
            conn.execute(sa.delete(subjects).where(subjects.c.id == row.id))
            self._log(conn, audit, gallery, name, None, len(ids))
        return [int(i) for i in ids], revision

    # --- faces ----------------------------------------------------------------------------

    def add_faces(
        self, gallery: Gallery, subject: str, new: Sequence[NewFace]
    ) -> tuple[list[int], int, int]:
        """Store faces of a subject in one transaction. -> (face ids, subject id, revision)."""
        with self.writer.begin() as conn:
            revision = self._bump(conn, gallery)
            row = self._subject(conn, gallery, subject)
            _claim_dim(conn, gallery, {int(f.embedding.shape[0]) for f in new})
            ids = conn.execute(
                sa.insert(faces).returning(faces.c.id, sort_by_parameter_order=True),
                _face_rows(gallery, int(row.id), new, now()),
            ).scalars().all()  # fmt: skip
        return [int(i) for i in ids], int(row.id), revision

    def import_subjects(
        self, gallery: Gallery, people: Sequence[tuple[str, dict[str, Any], list[NewFace]]]
    ) -> tuple[int, int]:
        """New subjects with their faces, all in one transaction or none (a subject the
        gallery already has refuses the whole import). -> (faces stored, revision)."""
        created = now()
        stored = 0
        with self.writer.begin() as conn:
            revision = self._bump(conn, gallery)
            names = [name for name, _, _ in people]
            existing = conn.execute(
                sa.select(subjects.c.name).where(
                    subjects.c.gallery_id == gallery.id, subjects.c.name.in_(names)
                )
            ).scalars().all()  # fmt: skip
            if existing:
                raise SubjectExists(
                    f"gallery {gallery.name!r} already has subjects {sorted(existing)[:5]}; "
                    "nothing was imported (delete them first, or import into another gallery)"
                )
            dims = {int(f.embedding.shape[0]) for _, _, new in people for f in new}
            _claim_dim(conn, gallery, dims)
            for name, metadata, new in people:
                subject_id = _insert_subject(conn, gallery, name, metadata, created)
                if new:
                    conn.execute(sa.insert(faces), _face_rows(gallery, subject_id, new, created))
                    stored += len(new)
        return stored, revision

    def delete_face(self, gallery: Gallery, subject: str, face_id: int, audit: Audit) -> int:
        """-> the revision after deleting it."""
        with self.writer.begin() as conn:
            revision = self._bump(conn, gallery)
            row = self._subject(conn, gallery, subject)
            deleted = conn.execute(
                sa.delete(faces).where(faces.c.id == face_id, faces.c.subject_id == row.id)
            ).rowcount
            if not deleted:
                raise FaceNotFound(f"subject {subject!r} has no face {face_id}")
            self._log(conn, audit, gallery, subject, face_id, 1)
        return revision

    @staticmethod
    def _log(
        conn: Connection,
        audit: Audit,
        gallery: Gallery,
        subject: str | None,
        face_id: int | None,
        n: int,
    ) -> None:
        conn.execute(
            sa.insert(deletions).values(
                at=now(),
                actor=audit.actor[:64],
                request_id=audit.request_id[:64],
                tenant=gallery.tenant,
                gallery=gallery.name,
                subject=subject,
                face_id=face_id,
                faces_deleted=n,
            )  # fmt: skip
        )

    def deletion_log(self, tenant: str, limit: int = 100) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(deletions)
                .where(deletions.c.tenant == tenant)
                .order_by(deletions.c.id.desc())
                .limit(limit)
            ).all()
        return [dict(r._mapping) for r in rows]

    # --- what the search index reads ------------------------------------------------------

    def snapshot(self, gallery: Gallery) -> Snapshot:
        """Every face of the gallery and its revision, read in one consistent snapshot."""
        conn_opts = {"isolation_level": "REPEATABLE READ"}
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(**conn_opts)
            with conn.begin():
                revision = conn.execute(
                    sa.select(galleries.c.revision, galleries.c.dim).where(
                        galleries.c.id == gallery.id
                    )
                ).first()
                if revision is None:
                    raise GalleryNotFound(f"gallery {gallery.name!r} was deleted")
                rows = conn.execute(
                    sa.select(faces.c.id, faces.c.subject_id, faces.c.embedding)
                    .where(faces.c.gallery_id == gallery.id)
                    .order_by(faces.c.id)
                ).all()
                names = dict(
                    conn.execute(
                        sa.select(subjects.c.id, subjects.c.name).where(
                            subjects.c.gallery_id == gallery.id
                        )
                    ).all()
                )
        dim = int(revision.dim or 0)
        return Snapshot(
            revision=int(revision.revision),
            ids=np.array([r.id for r in rows], np.int64),
            subject_ids=np.array([r.subject_id for r in rows], np.int64),
            matrix=from_blobs([r.embedding for r in rows], dim),
            names={int(k): str(v) for k, v in names.items()},
        )

    def iter_subjects(self, gallery: Gallery) -> Iterator[tuple[str, dict[str, Any]]]:
        query = (
            sa.select(subjects.c.name, subjects.c.metadata)
            .where(subjects.c.gallery_id == gallery.id)
            .order_by(subjects.c.name)
        )
        with self.engine.connect() as conn:
            for r in conn.execute(query):
                yield r.name, r.metadata

    def iter_faces(
        self, gallery: Gallery
    ) -> Iterator[tuple[str, list[float], float, float, bytes]]:
        """(subject, box, score, quality, embedding blob) of every face, by subject then id."""
        query = (
            sa.select(subjects.c.name, faces.c.box, faces.c.score, faces.c.quality,
                      faces.c.embedding)
            .join(subjects, subjects.c.id == faces.c.subject_id)
            .where(faces.c.gallery_id == gallery.id)
            .order_by(subjects.c.name, faces.c.id)
        )  # fmt: skip
        with self.engine.connect() as conn:
            for r in conn.execute(query):
                yield r.name, r.box, r.score, r.quality, r.embedding


def _claim_dim(conn: Connection, gallery: Gallery, dims: set[int]) -> None:
    """Embeddings of lengths `dims` are about to be stored: a gallery takes the length of its
    first ones and refuses any other (ModelMismatch)."""
    stored = conn.execute(
        sa.select(galleries.c.dim).where(galleries.c.id == gallery.id)
    ).scalar_one()  # fmt: skip
    if stored is not None and dims - {stored}:
        raise ModelMismatch(
            f"gallery {gallery.name!r} holds {stored}-d embeddings of {gallery.model_ref}; "
            f"got {'-d, '.join(map(str, sorted(dims - {stored})))}-d ones"
        )
    if stored is None and len(dims) > 1:
        raise ModelMismatch(f"embeddings of {sorted(dims)} values: one length per gallery")
    if stored is None and dims:
        conn.execute(
            sa.update(galleries).where(galleries.c.id == gallery.id).values(dim=dims.pop())
        )


def _face_rows(
    gallery: Gallery, subject_id: int, new: Sequence[NewFace], created: dt.datetime
) -> list[dict[str, Any]]:
    return [
        {
            "gallery_id": gallery.id,
            "subject_id": subject_id,
            "embedding": to_blob(f.embedding),
            "box": f.box,
            "score": f.score,
            "quality": f.quality,
            "created_at": created,
        }  # fmt: skip
        for f in new
    ]


def _insert_subject(
    conn: Connection, gallery: Gallery, name: str, metadata: dict[str, Any], created: dt.datetime
) -> int:
    """-> the new subject's id (IntegrityError when the gallery has one of that name)."""
    subject_id = conn.execute(
        sa.insert(subjects)
        .values(gallery_id=gallery.id, name=name, metadata=metadata, created_at=created)
        .returning(subjects.c.id)
    ).scalar_one()
    return int(subject_id)
