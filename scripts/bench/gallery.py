"""Face-gallery figures (issue 20): identify latency against 100 000 enrolled faces, against
/faces/embed of the same photo; the search alone; enrolment throughput from 8 clients; memory
per 100 000 faces; what keeping replicas in step costs.

    python -m scripts bench-gallery --photo obama3.jpg --out artifacts/bench_gallery.json
    python -m scripts bench-gallery --database-url postgresql+psycopg://iis@127.0.0.1:55432/db

Starts the service over only the face models on a fresh database (SQLite in a temp folder
unless --database-url), creates gallery `bench` through HTTP (so it is bound to the served
embedder), fills it in this process with --faces synthetic unit vectors (--per-subject faces
per subject), then: the first identify (which rebuilds the server's index from the database,
as a replica does when another one wrote), --requests identify and /faces/embed requests
alternating, the search alone in this process, and --enrol-clients clients each enrolling
--enrolments photos. Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scripts.bench import kit as benchkit
from scripts.bench.kit import summary
from scripts.constants import ROOT

GALLERY = "/v1/faces/galleries"
FACE_MODELS = ("yunet-2023mar", "sface-2021dec")


def fill(url: str, faces: int, per_subject: int, seed: int) -> dict[str, Any]:
    """Store `faces` synthetic unit vectors in gallery `bench`, in batches of subjects."""
    import numpy as np

    from service.gallery.db import make_engine
    from service.gallery.store import NewFace, Store

    store = Store(make_engine(url))
    gallery = store.get_gallery("default", "bench")
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    subjects = faces // per_subject
    for first in range(0, subjects, 1000):
        people = []
        for s in range(first, min(first + 1000, subjects)):
            centre = rng.normal(size=128)
            x = centre + 0.6 * np.linalg.norm(centre) * rng.normal(size=(per_subject, 128)) / 11.3
            x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
            people.append((f"p{s:06d}", {}, [NewFace(v, [0, 0, 1, 1], 1.0, 1.0) for v in x]))
        store.import_subjects(gallery, people)
    seconds = time.perf_counter() - started
    gallery = store.get_gallery("default", "bench")
    # in-process figures on the same data: the search alone, the per-request revision read,
    # and a rebuild of the index from the database
    from service.gallery.index import GalleryIndex

    t0 = time.perf_counter()
    index = GalleryIndex(store.snapshot(gallery))
    rebuild_ms = (time.perf_counter() - t0) * 1000
    queries = rng.normal(size=(200, 128)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    search = []
    for q in queries:
        t0 = time.perf_counter()
        index.search(q[None], 5)
        search.append((time.perf_counter() - t0) * 1000)
    reads = []
    for _ in range(200):
        t0 = time.perf_counter()
        store.find_gallery("default", "bench")
        reads.append((time.perf_counter() - t0) * 1000)
    store.engine.dispose()
    return {
        "faces": index.n,
        "subjects": subjects,
        "bulk_insert_faces_per_s": round(index.n / seconds, 1),
        "search_ms_in_process": summary(search),
        "revision_read_ms": summary(reads),
        "index_rebuild_ms_in_process": round(rebuild_ms, 1),
        "index_bytes": index.nbytes,
        "index_mb_per_100k_faces": round(index.nbytes / 2**20 * 100_000 / index.n, 1),
    }


def timed_post(client: Any, path: str, files: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    r = client.post(path, files=files)
    elapsed = (time.perf_counter() - t0) * 1000
    if r.status_code >= 300:
        raise SystemExit(f"{path}: {r.status_code} {r.text[:300]}")
    return elapsed, dict(r.json())


def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx2 as httpx

    photo = args.photo.read_bytes()
    files = {"image": (args.photo.name, photo, "image/jpeg")}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        for name in FACE_MODELS:  # copies: the repository refuses symlinked model files
            shutil.copytree(args.models / name, models / name)
        data = Path(tmp) / "data"
        url = args.database_url or f"sqlite:///{data / 'gallery.db'}"
        port = benchkit.free_port()
        env = benchkit.service_env(models, port, args.threads,
                                   IIS_DATA_DIR=str(data), IIS_DATABASE_URL=url)  # fmt: skip
        log = Path(args.log) if args.log else Path(tmp) / "server.log"
        argv = benchkit.service_argv()
        with benchkit.serve(argv, port=port, ready_path="/readyz", env=env, log=log) as s:
            client = httpx.Client(base_url=s.url, timeout=120)
            r = client.post(f"{GALLERY}/bench/subjects", json={"subject": "probe"})
            assert r.status_code == 201, r.text
            rss_empty = s.rss_mb()
            filled = fill(url, args.faces, args.per_subject, args.seed)
            first_ms, first = timed_post(client, f"{GALLERY}/bench/identify", files)
            rss_full = s.rss_mb()
            ident, embed, search, totals = [], [], [], []
            for _ in range(args.requests):
                ms, body = timed_post(client, f"{GALLERY}/bench/identify", files)
                ident.append(ms)
                search.append(body["timing_ms"]["search"])
                totals.append(body["timing_ms"]["total"])
                ms, _ = timed_post(client, "/faces/embed", files)
                embed.append(ms)
            enrol = enrolment(s.url, files, args.enrol_clients, args.enrolments)
        p50 = statistics.median
    return {
        "photo": args.photo.name,
        "database": "postgresql" if args.database_url else "sqlite",
        "threads": args.threads,
        "cores": benchkit.cores(),
        "gallery": filled,
        "first_identify_after_fill_ms": round(first_ms, 1),
        "first_identify_enrolled_faces": first["enrolled_faces"],
        "identify_ms": summary(ident),
        "faces_embed_ms": summary(embed),
        "identify_over_embed": round(p50(ident) / p50(embed), 3),
        "search_ms_server": summary(search),
        "identify_server_total_ms": summary(totals),
        "server_rss_mb": {"one_face": round(rss_empty, 1), "filled": round(rss_full, 1)},
        "server_rss_mb_per_100k_faces": round(
            (rss_full - rss_empty) * 100_000 / max(filled["faces"], 1), 1
        ),
        "enrolment": enrol,
    }


def enrolment(base: str, files: dict[str, Any], clients: int, each: int) -> dict[str, Any]:
    """`clients` threads, each enrolling `each` photos into its own subject of gallery
    `enrol`: faces per second over the whole run and the per-request latency."""
    import httpx2 as httpx

    with httpx.Client(base_url=base, timeout=120) as c:
        for i in range(clients):
            r = c.post(f"{GALLERY}/enrol/subjects", json={"subject": f"c{i}"})
            assert r.status_code == 201, r.text

    def work(i: int) -> list[float]:
        out = []
        with httpx.Client(base_url=base, timeout=120) as c:
            for _ in range(each):
                ms, _ = timed_post(c, f"{GALLERY}/enrol/subjects/c{i}/faces", files)
                out.append(ms)
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [ms for part in pool.map(work, range(clients)) for ms in part]
    seconds = time.perf_counter() - t0
    with httpx.Client(base_url=base, timeout=120) as c:
        stored = c.get(f"{GALLERY}/enrol").json()["faces"]
    return {
        "clients": clients,
        "enrolments": len(latencies),
        "stored": stored,
        "seconds": round(seconds, 2),
        "faces_per_s": round(len(latencies) / seconds, 2),
        "latency_ms": summary(latencies),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--photo", type=Path, required=True)
    p.add_argument("--database-url", default=None)
    p.add_argument("--faces", type=int, default=100_000)
    p.add_argument("--per-subject", type=int, default=10)
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--enrol-clients", type=int, default=8)
    p.add_argument("--enrolments", type=int, default=4, help="per client")
    p.add_argument("--threads", type=int, default=benchkit.cores())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--log", type=Path, help="keep the server log here")
    args = p.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
