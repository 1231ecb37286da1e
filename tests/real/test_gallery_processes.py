"""Face galleries through real uvicorn processes: SIGKILL in the middle of a stream of
enrolments, 8 clients enrolling and deleting at once, two replicas sharing PostgreSQL."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

from tests.support.gallery import (
    BACKENDS,
    GALLERY,
    as_env,
    database_settings,
    face_models,
    gallery_server,
    photo,
)

pytestmark = [pytest.mark.real_weights, pytest.mark.e2e]


@pytest.fixture(scope="module")
def models(default_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return face_models(default_models, tmp_path_factory.mktemp("face-models"))


@pytest.fixture(params=BACKENDS)
def db_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    for db in database_settings(request.param, tmp_path):
        yield as_env(db)


def post_subject(url: str, gallery: str, name: str) -> None:
    r = httpx.post(f"{url}{GALLERY}/{gallery}/subjects", json={"subject": name}, timeout=30)
    assert r.status_code == 201, r.text


def detail(url: str, gallery: str, name: str) -> dict:
    r = httpx.get(f"{url}{GALLERY}/{gallery}/subjects/{name}", timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_sigkill_mid_enrolment_keeps_every_answered_face(
    models: Path, db_env: dict[str, str], testdata: Path
) -> None:
    files = photo(testdata, "obama.jpg")
    server = gallery_server(models, db_env).start()
    answered: list[int] = []
    sent = 0
    stop = threading.Event()
    lock = threading.Lock()
    try:
        post_subject(server.url, "crash", "obama")

        def stream() -> None:
            nonlocal sent
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    with lock:
                        sent += 1
                    try:
                        r = client.post(f"{server.url}{GALLERY}/crash/subjects/obama/faces",
                                        files=files)  # fmt: skip
                    except httpx.TransportError:
                        return  # the server died under this request
                    assert r.status_code == 201, r.text
                    with lock:
                        answered.extend(f["face_id"] for f in r.json()["faces"])

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(stream) for _ in range(4)]
            try:
                while len(answered) < 8:
                    ended = [f.exception() for f in futures if f.done()]
                    assert not ended, ended
                    stop.wait(0.05)
                server.kill()  # in the middle: 4 enrolments in flight
            finally:
                stop.set()  # else a failed assertion leaves the streams enrolling forever
            for f in futures:
                f.result()
    finally:
        server.stop()

    again = gallery_server(models, db_env).start()
    try:
        got = detail(again.url, "crash", "obama")
        stored = {f["face_id"] for f in got["face_list"]}
        assert set(answered) <= stored, "an enrolment answered 201 was lost"
        assert len(stored) <= sent, "more faces than enrolments sent"
        assert got["faces"] == len(stored)
        # none half-written: every stored embedding is a whole unit vector of the model
        export = httpx.get(f"{again.url}{GALLERY}/crash/export", timeout=30)
        faces = [json.loads(x) for x in export.content.splitlines() if b'"face"' in x]
        assert len(faces) == len(stored)
        for f in faces:
            v = np.frombuffer(base64.b64decode(f["embedding"]), "<f4")
            assert v.shape == (128,) and abs(float(np.linalg.norm(v)) - 1) < 1e-4
        # and the restarted index serves them
        r = httpx.post(f"{again.url}{GALLERY}/crash/identify", files=photo(testdata, "obama2.jpg"),
                       timeout=30)  # fmt: skip
        assert r.json()["enrolled_faces"] == len(stored)
        assert r.json()["faces"][0]["subject"] == "obama"
    finally:
        again.stop()


def test_eight_clients_enrolling_and_deleting_exact_counts(
    models: Path, db_env: dict[str, str], testdata: Path
) -> None:
    files = photo(testdata, "obama2.jpg")
    server = gallery_server(models, db_env).start()
    try:
        post_subject(server.url, "busy", "shared")

        def client_work(i: int) -> None:
            with httpx.Client(base_url=server.url + GALLERY + "/busy", timeout=60) as c:
                mine = f"c{i}"
                assert c.post("/subjects", json={"subject": mine}).status_code == 201
                ids = []
                for _ in range(3):
                    r = c.post(f"/subjects/{mine}/faces", files=files)
                    assert r.status_code == 201, r.text
                    ids.append(r.json()["faces"][0]["face_id"])
                r = c.post("/subjects/shared/faces", files=files)
                assert r.status_code == 201, r.text
                assert c.delete(f"/subjects/{mine}/faces/{ids[0]}").status_code == 200
                if i % 2 == 0:
                    r = c.delete(f"/subjects/{mine}")
                    assert r.status_code == 200 and r.json()["faces_deleted"] == 2, r.text

        with ThreadPoolExecutor(8) as pool:
            for f in [pool.submit(client_work, i) for i in range(8)]:
                f.result()
        info = httpx.get(f"{server.url}{GALLERY}/busy", timeout=30).json()
        assert (info["subjects"], info["faces"]) == (1 + 4, 8 + 4 * 2)
        # the in-memory index agrees with the database, exactly
        r = httpx.post(f"{server.url}{GALLERY}/busy/identify?top_k=100", files=files, timeout=30)
        assert r.json()["enrolled_faces"] == 16
        assert sorted(m["subject"] for m in r.json()["faces"][0]["matches"]) == sorted(
            ["shared", "c1", "c3", "c5", "c7"]
        )
        pages = httpx.get(f"{server.url}{GALLERY}/busy/subjects", timeout=30).json()["subjects"]
        assert {s["subject"]: s["faces"] for s in pages} == {
            "shared": 8, "c1": 2, "c3": 2, "c5": 2, "c7": 2,
        }  # fmt: skip
    finally:
        server.stop()


def test_two_replicas_on_postgresql_agree(models: Path, tmp_path: Path, testdata: Path) -> None:
    for db in database_settings("postgresql", tmp_path):
        env = as_env(db)
        a, b = gallery_server(models, env).start(), gallery_server(models, env).start()
        try:
            post_subject(a.url, "both", "obama")
            post_subject(b.url, "both", "biden")
            enrolled = 0
            for url, other, who, pic in [
                (a.url, b.url, "obama", "obama.jpg"),
                (b.url, a.url, "biden", "biden.jpg"),
                (a.url, b.url, "obama", "obama2.jpg"),
            ]:
                r = httpx.post(f"{url}{GALLERY}/both/subjects/{who}/faces",
                               files=photo(testdata, pic), timeout=30)  # fmt: skip
                assert r.status_code == 201, r.text
                enrolled += 1
                # the other replica answers with every enrolment committed before it
                r = httpx.post(f"{other}{GALLERY}/both/identify",
                               files=photo(testdata, "obama3.jpg"), timeout=30)  # fmt: skip
                assert r.json()["enrolled_faces"] == enrolled
            # both enrolling and identifying at once, then the same answer from each
            with ThreadPoolExecutor(6) as pool:
                jobs = [pool.submit(httpx.post, f"{u}{GALLERY}/both/subjects/biden/faces",
                                    files=photo(testdata, "biden.jpg"), timeout=60)
                        for u in (a.url, b.url) * 2]  # fmt: skip
                jobs += [pool.submit(httpx.post, f"{u}{GALLERY}/both/identify",
                                     files=photo(testdata, "obama3.jpg"), timeout=60)
                         for u in (a.url, b.url)]  # fmt: skip
                assert all(j.result().status_code in (200, 201) for j in jobs)
            answers = [
                httpx.post(f"{u}{GALLERY}/both/identify?top_k=2",
                           files=photo(testdata, "obama3.jpg"), timeout=30).json()
                for u in (a.url, b.url)
            ]  # fmt: skip
            assert answers[0]["enrolled_faces"] == answers[1]["enrolled_faces"] == 7
            assert answers[0]["faces"] == answers[1]["faces"]
            assert answers[0]["faces"][0]["subject"] == "obama"
        finally:
            a.stop()
            b.stop()


def test_bench_gallery_runs_small(default_models: Path, testdata: Path, tmp_path: Path) -> None:
    """scripts/bench/gallery.py end to end on a small gallery: its JSON has every figure."""
    import subprocess
    import sys

    from tests.support.app import ROOT

    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "-m", "scripts", "bench-gallery", "--photo", str(testdata / "obama3.jpg"),
         "--faces", "3000", "--requests", "2", "--enrol-clients", "2", "--enrolments", "1",
         "--threads", "1", "--models", str(default_models), "--out", str(out)],
        cwd=ROOT, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    got = json.loads(out.read_text())
    assert got["gallery"]["faces"] == 3000 and got["first_identify_enrolled_faces"] == 3000
    assert got["enrolment"]["stored"] == got["enrolment"]["enrolments"] == 2
    assert got["gallery"]["index_mb_per_100k_faces"] == pytest.approx(50.4, abs=0.5)
    assert got["identify_ms"]["n"] == got["faces_embed_ms"]["n"] == 2
