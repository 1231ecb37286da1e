"""Gallery pieces without a server: calibration, the search index, key-file tenancy, the
JSON Lines parser and the migrations (their schema is the tables' schema)."""

from __future__ import annotations

import asyncio
import base64
import json
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.gallery import calibrate as cal
from service.gallery.db import make_engine, metadata, migrate
from service.gallery.errors import InvalidImport, ModelMismatch, TooFewPairs
from service.gallery.index import GalleryIndex, Indexes
from service.gallery.store import Snapshot
from service.gallery.transfer import chunked, parse
from service.tenancy import DEFAULT_TENANT, Principal, parse_key_line, principals
from tests.support.gallery import BACKENDS, database_settings


def unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- calibration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("impostor", "target", "threshold", "far"),
    [
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], 0.1, 0.900001, 0.1),
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], 0.2, 0.800001, 0.2),
        ([0.5] * 10, 0.1, 0.500001, 0.0),  # ties: none may pass, so none does
        ([0.1] * 8 + [0.9, 0.9], 0.1, 0.900001, 0.0),
    ],
)
def test_threshold_for_target_far(impostor, target, threshold, far):
    genuine = np.linspace(0.5, 1.0, 12)
    got = cal.calibrate(genuine, np.array(impostor), target)
    assert got.threshold == pytest.approx(threshold, abs=1e-9)
    assert got.far == pytest.approx(far)
    assert got.tar == pytest.approx((genuine >= got.threshold).mean())


@pytest.mark.parametrize(
    ("n_imp", "n_gen", "target"), [(9, 12, 0.1), (10, 9, 0.1), (999, 50, 1e-3)]
)
def test_too_few_pairs_are_refused(n_imp, n_gen, target):
    with pytest.raises(TooFewPairs, match="needs at least"):
        cal.calibrate(np.ones(n_gen), np.zeros(n_imp), target)


def test_auc_and_pairs_against_brute_force():
    rng = np.random.default_rng(0)
    m, subjects = unit(rng, 40), np.repeat(np.arange(10), 4)
    genuine, impostor, sampled = cal.pair_scores(m, subjects)
    sims = m.astype(np.float64) @ m.T.astype(np.float64)
    i, j = np.triu_indices(40, 1)
    same = subjects[i] == subjects[j]
    assert sorted(genuine) == pytest.approx(sorted(sims[i, j][same]))
    assert sorted(impostor) == pytest.approx(sorted(sims[i, j][~same]))
    assert not sampled
    brute = np.mean([[(g > x) + 0.5 * (g == x) for x in impostor] for g in genuine])
    assert cal.auc(genuine, impostor) == pytest.approx(brute)
    assert cal.auc(np.array([1.0, 0.9]), np.array([0.0, 0.5])) == 1.0
    assert cal.auc(np.array([0.5]), np.array([0.5])) == 0.5


# --- the index --------------------------------------------------------------------------


def snapshot(m: np.ndarray, subjects: np.ndarray, revision: int = 0) -> Snapshot:
    ids = np.arange(1, len(m) + 1, dtype=np.int64)
    return Snapshot(revision, ids, subjects.astype(np.int64), m,
                    {int(s): f"s{s}" for s in set(subjects.tolist())})  # fmt: skip


@pytest.mark.parametrize(("n", "subjects", "top_k"), [(200, 50, 5), (500, 3, 3), (30, 30, 1),
                                                      (1000, 10, 10), (5, 2, 5)])  # fmt: skip
def test_search_is_exact_per_subject(n, subjects, top_k):
    rng = np.random.default_rng(n)
    m, who = unit(rng, n), rng.integers(0, subjects, n)
    index = GalleryIndex(snapshot(m, who))
    queries = unit(rng, 3)
    for q, got in zip(queries, index.search(queries, top_k), strict=True):
        sims = m @ q
        best = {int(s): float(sims[who == s].max()) for s in np.unique(who)}
        want = sorted(best.items(), key=lambda kv: -kv[1])[:top_k]
        assert [x.subject for x in got] == [f"s{s}" for s, _ in want]
        assert [x.similarity for x in got] == pytest.approx([v for _, v in want], abs=1e-6)


def test_a_change_waits_for_a_running_search_off_the_event_loop():
    """Indexes.apply takes the index's lock in a worker thread: while a search (here, a held
    lock) runs, the event loop keeps serving, and the change lands once the search ends."""
    rng = np.random.default_rng(3)
    index = GalleryIndex(snapshot(unit(rng, 2), np.array([0, 1]), revision=5))
    indexes = Indexes(store=None)  # type: ignore[arg-type]  # apply never reads the store
    indexes.by_id[1] = index

    async def scenario() -> list[str]:
        events: list[str] = []
        index.lock.acquire()
        # a safety net: were apply to block the loop, this thread still frees it
        releaser = threading.Timer(3.0, index.lock.release)
        releaser.start()
        change = asyncio.create_task(indexes.apply(1, 6, lambda i: i.remove([1])))
        await asyncio.sleep(0.2)
        events.append(f"loop ran, change done={change.done()}")
        releaser.cancel()
        index.lock.release()
        await asyncio.wait_for(change, 5)
        events.append(f"revision {index.revision}, rows {index.n}")
        return events

    assert asyncio.run(scenario()) == ["loop ran, change done=False", "revision 6, rows 1"]


def test_changes_apply_in_revision_order_and_removals_swap():
    rng = np.random.default_rng(1)
    m = unit(rng, 4)
    index = GalleryIndex(snapshot(m[:2], np.array([0, 1]), revision=5))
    # revision 7 arrives before 6: held until 6 is in
    index.apply(7, lambda: index.remove([1]))
    assert index.revision == 5 and index.n == 2
    index.apply(6, lambda: index.add([3, 4], 2, "s2", m[2:]))
    assert index.revision == 7 and index.n == 3
    index.apply(6, lambda: index.add([9], 2, "s2", m[:1]))  # already in: dropped
    assert index.n == 3
    assert sorted(index.row_of) == [2, 3, 4]
    (got,) = index.search(m[3:4], 3)
    assert got[0].subject == "s2" and got[0].similarity == pytest.approx(1.0, abs=1e-6)
    assert {x.subject for x in got} == {"s1", "s2"}  # s0's only face was removed
    for _ in range(100):  # growing past the capacity keeps every row
        index.add([int(rng.integers(10**6, 10**9))], 3, "s3", unit(rng, 1))
    assert index.n == 103 and len(index.row_of) == 103


# --- tenancy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("k1", ("k1", DEFAULT_TENANT, False)),
        ("k1 acme", ("k1", "acme", False)),
        ("  k1\tacme   read-only ", ("k1", "acme", True)),
        ("# comment", None),
        ("", None),
    ],
)
def test_key_lines(line, expected):
    parsed = parse_key_line(line, "keys:1")
    if expected is None:
        assert parsed is None
    else:
        assert parsed is not None
        key, who = parsed
        assert (key, who.tenant, who.read_only) == expected
        assert who.actor.startswith("key:") and key not in who.actor


@pytest.mark.parametrize("line", ["k1 acme write", "k1 a b c", "k1 not/safe"])
def test_bad_key_lines(line):
    with pytest.raises(ValueError, match="keys:3"):
        parse_key_line(line, "keys:3")


def test_plain_keys_belong_to_the_default_tenant(tmp_path: Path):
    f = tmp_path / "keys"
    f.write_text("a1 acme read-only\nplain\n")
    got = principals(["env-key"], f, ["admin-key"])
    assert {k: (p.tenant, p.read_only) for k, p in got.items()} == {
        "env-key": ("default", False), "admin-key": ("default", False),
        "a1": ("acme", True), "plain": ("default", False),
    }  # fmt: skip
    assert isinstance(got["plain"], Principal)


# --- import parsing ---------------------------------------------------------------------


def line(**kw) -> bytes:
    return json.dumps(kw).encode() + b"\n"


HEAD = line(type="gallery", format=1, model="m", model_version=1, dim=2)
VEC = base64.b64encode(np.array([0.6, 0.8], "<f4").tobytes()).decode()


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        (b"", InvalidImport, "empty"),
        (b"[1]\n", InvalidImport, "not a JSON object"),
        (line(type="subject", subject="a"), InvalidImport, "header"),
        (HEAD + line(type="face", subject="a", box=[0, 0, 1, 1], score=1, quality=1,
                     embedding=VEC), InvalidImport, "before its subject"),
        (HEAD + line(type="subject", subject="a b"), InvalidImport, "URL-safe"),
        (HEAD + line(type="subject", subject="a") + line(type="subject", subject="a"),
         InvalidImport, "twice"),
        (HEAD + line(type="subject", subject="a") + line(type="face", subject="a",
         box=[0, 0, 1, 1], score=1, quality=1, embedding=VEC[:-4]), ModelMismatch, "values"),
        (HEAD + line(type="subject", subject="a") + line(type="face", subject="a",
         box=[0, 0, 1, 1], score=1, quality=1, embedding="%%%"), InvalidImport, "base64"),
        (HEAD + line(type="subject", subject="a") + line(type="face", subject="a",
         box=[0, 0, 1], score=1, quality=1, embedding=VEC), InvalidImport, "box"),
        (HEAD + line(type="subject", subject="a") + line(type="face", subject="a",
         box=[0, 0, 1, 1], score=1, quality=1,
         embedding=base64.b64encode(np.array([3, 4], "<f4").tobytes()).decode()),
         InvalidImport, "unit vector"),
    ],
)  # fmt: skip
def test_bad_imports(body, error, match):
    with pytest.raises(error, match=match):
        parse(body, lambda n: " " not in n)


def test_good_import():
    body = (
        HEAD
        + line(type="subject", subject="a", metadata={"x": 1})
        + line(type="face", subject="a", box=[0, 0, 1, 1], score=0.9, quality=0.8, embedding=VEC)
    )
    parsed = parse(body, lambda n: True)
    assert (parsed.model, parsed.model_version, parsed.dim, parsed.faces) == ("m", 1, 2, 1)
    assert parsed.people["a"][1][0].embedding.tolist() == pytest.approx([0.6, 0.8])


# --- migrations -------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    from service.gallery.db import database_url

    for db in database_settings(request.param, tmp_path):
        e = make_engine(database_url(db.get("database_url"), tmp_path))
        yield e
        e.dispose()


def test_migrations_reach_the_tables_schema(engine: sa.Engine) -> None:
    assert migrate(engine) == "0001"
    assert migrate(engine) == "0001"  # a second start changes nothing
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            pragmas = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                       for p in ("journal_mode", "synchronous", "secure_delete")}  # fmt: skip
        assert pragmas == {"journal_mode": "wal", "synchronous": 2, "secure_delete": 1}


def test_a_gallery_keeps_one_embedding_length(engine: sa.Engine) -> None:
    """The first faces set a gallery's embedding length; enrolments and imports of another
    are refused whole (nothing stored), an import mixing lengths too."""
    from service.gallery.store import NewFace, Store

    migrate(engine)
    store = Store(engine)

    def faces(dim: int, n: int = 1) -> list[NewFace]:
        return [NewFace(np.ones(dim, np.float32) / np.sqrt(dim), [0, 0, 1, 1], 1.0, 1.0)] * n

    mixed = store.ensure_gallery("t", "mixed", "m", 1)
    with pytest.raises(ModelMismatch, match="one length per gallery"):
        store.import_subjects(mixed, [("a", {}, faces(4)), ("b", {}, faces(8))])
    assert store.counts(mixed.id) == (0, 0)
    gallery = store.ensure_gallery("t", "g", "m", 1)
    store.create_subject(gallery, "a", {})
    store.add_faces(gallery, "a", faces(4, 2))
    with pytest.raises(ModelMismatch, match="holds 4-d embeddings of m@1; got 8-d ones"):
        store.add_faces(gallery, "a", faces(8))
    with pytest.raises(ModelMismatch, match="got 8-d ones"):
        store.import_subjects(gallery, [("b", {}, faces(4)), ("c", {}, faces(8))])
    assert store.counts(gallery.id) == (1, 2)
    store.import_subjects(gallery, [("b", {}, faces(4))])
    assert store.counts(gallery.id) == (2, 3)


def _migrate_in_child(url: str, results: Any) -> None:
    try:
        results.put(migrate(make_engine(url)))
    except Exception as e:  # the answer the parent asserts on
        results.put(f"{type(e).__name__}: {e}"[:200])


def test_processes_starting_at_once_on_one_sqlite_file_all_migrate(tmp_path: Path) -> None:
    """Several processes on one SQLite file (compose's CPU and CUDA services share a volume)
    start together: each reaches head, none fails on a table another just created. With a
    deferred BEGIN about 3 rounds in 10 had a failure; 30 rounds of 4."""
    context = multiprocessing.get_context("fork")
    for round_ in range(30):
        url = f"sqlite:///{tmp_path}/round{round_}.db"
        results = context.Queue()
        children = [
            context.Process(target=_migrate_in_child, args=(url, results)) for _ in range(4)
        ]
        for child in children:
            child.start()
        answers = [results.get(timeout=60) for _ in children]
        for child in children:
            child.join(timeout=60)
        assert answers == ["0001"] * 4, f"round {round_}: {answers}"


@pytest.mark.parametrize(("size", "pieces"), [(1, 12), (10, 7), (25, 4), (10_000, 1)])
def test_export_chunks_keep_every_byte_in_order(size: int, pieces: int) -> None:
    lines = [f'{{"n": {i}}}\n'.encode() for i in range(12)]  # 9 bytes each, 10 from n=10 on
    chunks = list(chunked(lines, size))
    assert b"".join(chunks) == b"".join(lines)
    assert len(chunks) == pieces
    assert all(len(c) >= size for c in chunks[:-1])  # only the last may be short
    assert list(chunked([], size)) == []
