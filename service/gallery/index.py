"""Exact cosine search: one gallery's faces as an (N, D) float32 matrix of unit rows.

In step with the database by its revision counter: a request reads the gallery's row (which it
needs anyway for the model and threshold) and so its revision; an index behind it is rebuilt
from one consistent snapshot before the search. A replica's own writes are applied in place,
in revision order, so a single replica never rebuilds for its own enrolments; another
replica's writes cost one rebuild on the next request that sees them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.gallery.store import Gallery, Snapshot, Store
from service.timing import off_loop


@dataclass(frozen=True)
class Match:
    subject: str
    similarity: float


# OpenBLAS runs a matrix-vector product this size on every core; on a shared 2-core machine
# that took 8 ms p50 for 100 000 x 128, against 1.9 ms in blocks of 2048 rows, which it runs
# on one thread each (scripts/bench_gallery.py; the whole matrix is read once either way).
BLOCK_ROWS = 2048


def similarities(matrix: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """matrix: (N, D), queries: (F, D) float32 unit rows -> (F, N) cosine similarities."""
    q = np.ascontiguousarray(queries.T, dtype=np.float32)  # (D, F)
    out = np.empty((len(matrix), q.shape[1]), np.float32)
    for start in range(0, len(matrix), BLOCK_ROWS):
        stop = start + BLOCK_ROWS
        np.dot(matrix[start:stop], q, out=out[start:stop])
    return out.T


class GalleryIndex:
    """The faces of one gallery at `revision`. Searches and changes hold `lock`: a search runs
    in a worker thread while the event loop may apply a change."""

    def __init__(self, snapshot: Snapshot) -> None:
        n, dim = snapshot.matrix.shape
        self.revision = snapshot.revision
        self.dim = dim
        self.n = n
        self.matrix = np.zeros((max(16, n), dim), np.float32)
        self.matrix[:n] = snapshot.matrix
        self.ids = np.zeros(max(16, n), np.int64)
        self.ids[:n] = snapshot.ids
        self.subject_ids = np.zeros(max(16, n), np.int64)
        self.subject_ids[:n] = snapshot.subject_ids
        self.row_of = {int(face): row for row, face in enumerate(snapshot.ids)}
        self.names = dict(snapshot.names)
        self.lock = threading.Lock()
        self.pending: dict[int, Callable[[], None]] = {}

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes + self.ids.nbytes + self.subject_ids.nbytes)

    # --- changes, in revision order -------------------------------------------------------

    def apply(self, revision: int, change: Callable[[], None]) -> None:
        """Apply the change that took the gallery to `revision` once every earlier one is in;
        one the index already holds (it was rebuilt past it) is dropped."""
        with self.lock:
            if revision <= self.revision:
                return
            self.pending[revision] = change
            while self.revision + 1 in self.pending:
                self.pending.pop(self.revision + 1)()
                self.revision += 1

    def add(self, face_ids: list[int], subject_id: int, name: str, vectors: np.ndarray) -> None:
        """vectors: (len(face_ids), D) unit rows. Called under the lock (via apply)."""
        k = len(face_ids)
        if self.n == 0 and self.dim != vectors.shape[1]:
            self.dim = vectors.shape[1]
            self.matrix = np.zeros((16, self.dim), np.float32)
        if self.n + k > len(self.matrix):
            grow = max(2 * len(self.matrix), self.n + k)
            matrix = np.zeros((grow, self.dim), np.float32)
            matrix[: self.n] = self.matrix[: self.n]
            self.matrix = matrix
            self.ids = np.resize(self.ids, grow)
            self.subject_ids = np.resize(self.subject_ids, grow)
        rows = slice(self.n, self.n + k)
        self.matrix[rows] = vectors
        self.ids[rows] = face_ids
        self.subject_ids[rows] = subject_id
        for offset, face in enumerate(face_ids):
            self.row_of[face] = self.n + offset
        self.n += k
        self.names[subject_id] = name

    def remove(self, face_ids: list[int]) -> None:
        """Swap-remove each face (the last row moves into its place)."""
        for face in face_ids:
            row = self.row_of.pop(face, None)
            if row is None:
                continue
            last = self.n - 1
            if row != last:
                moved = int(self.ids[last])
                self.matrix[row] = self.matrix[last]
                self.ids[row] = moved
                self.subject_ids[row] = self.subject_ids[last]
                self.row_of[moved] = row
            self.n = last

    # --- search ---------------------------------------------------------------------------

    def search(self, queries: np.ndarray, top_k: int) -> list[list[Match]]:
        """queries: (F, D) unit rows -> per query the top_k subjects by their best face's
        cosine similarity, best first."""
        with self.lock:
            n = self.n
            if n == 0:
                return [[] for _ in range(len(queries))]
            sims = similarities(self.matrix[:n], queries)
            subjects = self.subject_ids[:n]
            return [self._top_subjects(row, subjects, top_k) for row in sims]

    def _top_subjects(self, sims: np.ndarray, subjects: np.ndarray, top_k: int) -> list[Match]:
        n = len(sims)
        # The first top_k distinct subjects among the best faces are the top_k subjects; look
        # at a few times top_k faces first, all of them only if those repeat subjects.
        m = min(n, 8 * top_k + 32)
        candidates = np.argpartition(-sims, m - 1)[:m] if m < n else np.arange(n)
        candidates = candidates[np.argsort(-sims[candidates], kind="stable")]
        best: dict[int, float] = {}
        for i in candidates:
            best.setdefault(int(subjects[i]), float(sims[i]))
            if len(best) == top_k:
                break
        if len(best) < top_k and m < n:
            unique, inverse = np.unique(subjects, return_inverse=True)
            per_subject = np.full(len(unique), -np.inf, np.float32)
            np.maximum.at(per_subject, inverse, sims)
            order = np.argsort(-per_subject, kind="stable")[:top_k]
            best = {int(unique[i]): float(per_subject[i]) for i in order}
        return [Match(self.names.get(s, str(s)), round(v, 6)) for s, v in best.items()]


class Indexes:
    """The indexes of this process, by gallery id, each rebuilt when the database is ahead."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.by_id: dict[int, GalleryIndex] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def current(self, gallery: Gallery) -> GalleryIndex:
        """The index holding at least every change up to gallery.revision."""
        index = self.by_id.get(gallery.id)
        if index is not None and index.revision >= gallery.revision:
            return index
        lock = self._locks.setdefault(gallery.id, asyncio.Lock())
        async with lock:  # one rebuild however many requests found it stale
            index = self.by_id.get(gallery.id)
            if index is not None and index.revision >= gallery.revision:
                return index
            index = GalleryIndex(await off_loop(self.store.snapshot, gallery))
            self.by_id[gallery.id] = index
            return index

    async def apply(
        self, gallery_id: int, revision: int, change: Callable[[GalleryIndex], None]
    ) -> None:
        """A change this process committed at `revision`: into the index if one is loaded. In
        a worker thread: the index's lock may be held by a search of a large gallery, and
        growing its matrix copies it, neither of which may stall the event loop. Shielded: a
        client that hangs up must not cancel a committed change out of the index."""
        index = self.by_id.get(gallery_id)
        if index is not None:
            await asyncio.shield(off_loop(index.apply, revision, lambda: change(index)))

    def forget(self, gallery_id: int) -> None:
        self.by_id.pop(gallery_id, None)
        self._locks.pop(gallery_id, None)

    @property
    def nbytes(self) -> int:
        return sum(i.nbytes for i in self.by_id.values())
