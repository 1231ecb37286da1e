"""Shared pieces of the face-gallery tests: the two databases, photos, HTTP helpers.

PostgreSQL: IIS_TEST_DATABASE_URL names a server (scripts/test.sh starts one with
scripts/postgres.sh and exports it); each test gets a fresh database on it, dropped after.
Without it the PostgreSQL half is skipped, loudly, unless IIS_TEST_REQUIRE_POSTGRES=1 (CI),
where it fails.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from PIL import Image

from tests.support.app import ServiceProcess
from tests.support.images import encode

PG_ENV = "IIS_TEST_DATABASE_URL"
BACKENDS = ["sqlite", "postgresql"]


def postgres_admin_url() -> str | None:
    url = os.environ.get(PG_ENV)
    if url:
        return url
    reason = (
        f"{PG_ENV} is not set: the PostgreSQL half of the gallery tests did not run. "
        "scripts/test.sh starts a server (scripts/postgres.sh) and sets it"
    )
    if os.environ.get("IIS_TEST_REQUIRE_POSTGRES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the test server; dropped afterwards."""
    admin_url = postgres_admin_url()
    assert admin_url is not None
    name = f"iis_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def database_settings(backend: str, tmp: Path) -> Iterator[dict[str, Any]]:
    """Settings overrides for one backend: a fresh SQLite file or a fresh PostgreSQL db."""
    if backend == "sqlite":
        yield {"data_dir": tmp}
    else:
        for url in fresh_postgres_database():
            yield {"database_url": url, "data_dir": tmp}


def as_env(overrides: dict[str, Any]) -> dict[str, str]:
    """The same overrides as IIS_ environment variables (for a uvicorn subprocess)."""
    return {f"IIS_{k.upper()}": str(v) for k, v in overrides.items()}


def photo(testdata: Path, name: str) -> dict[str, tuple[str, bytes, str]]:
    return {"image": (name, (testdata / name).read_bytes(), "image/jpeg")}


def two_people(testdata: Path) -> dict[str, tuple[str, bytes, str]]:
    """obama.jpg and biden.jpg side by side: a photo with two faces."""
    a, b = (Image.open(testdata / n).convert("RGB") for n in ("obama.jpg", "biden.jpg"))
    b = b.resize((round(b.width * a.height / b.height), a.height))
    both = Image.new("RGB", (a.width + b.width, a.height))
    both.paste(a, (0, 0))
    both.paste(b, (a.width, 0))
    return {"image": ("two.jpg", encode(both), "image/jpeg")}


GALLERY = "/v1/faces/galleries"


def gallery_server(models_dir: Path, env: dict[str, str]) -> ServiceProcess:
    """The service over `models_dir` with one ORT thread, killable at will; start() it."""
    return ServiceProcess(models_dir, {"IIS_INTRA_OP_THREADS": "1", **env}, ready_seconds=90)


def face_models(default_models: Path, into: Path) -> Path:
    """A models folder with only the face detector and embedder (faster starts)."""
    for name in ("yunet-2023mar", "sface-2021dec"):
        shutil.copytree(default_models / name, into / name)
    return into
