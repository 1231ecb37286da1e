"""Tables, the engine and migrations.

SQLite (the default, one file under IIS_DATA_DIR) runs in WAL mode with synchronous=FULL, so a
transaction that committed survives a SIGKILL or a power cut, and secure_delete, so deleted
rows are overwritten on disk. Writes open with BEGIN IMMEDIATE: two writers never deadlock on
a read-to-write upgrade, they queue on the busy timeout. PostgreSQL (IIS_DATABASE_URL) is what
several replicas share.

The schema is changed only by the Alembic migrations in service/gallery/migrations, run to
head at start-up (under a PostgreSQL advisory lock, so replicas starting together migrate once).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("service.gallery")

metadata = sa.MetaData()

NAME_LEN = 64
# Bumped by every change to a gallery's faces (in the transaction that makes it): a replica
# compares it with the revision of its in-memory index to know whether it is current.
galleries = sa.Table(
    "galleries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(NAME_LEN), nullable=False),
    sa.Column("name", sa.String(NAME_LEN), nullable=False),
    sa.Column("model_name", sa.String(NAME_LEN), nullable=False),
    sa.Column("model_version", sa.Integer, nullable=False),
    sa.Column("dim", sa.Integer, nullable=True),
    sa.Column("threshold", sa.Float, nullable=True),
    sa.Column("calibration", sa.JSON, nullable=True),
    sa.Column("revision", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("tenant", "name", name="uq_galleries_tenant_name"),
)

subjects = sa.Table(
    "subjects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("gallery_id", sa.ForeignKey("galleries.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", sa.String(NAME_LEN), nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("gallery_id", "name", name="uq_subjects_gallery_name"),
)

faces = sa.Table(
    "faces",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("gallery_id", sa.ForeignKey("galleries.id", ondelete="CASCADE"), nullable=False),
    sa.Column("subject_id", sa.ForeignKey("subjects.id", ondelete="CASCADE"), nullable=False),
    # float32 little-endian, L2-normalised; the model is the gallery's (checked at insert)
    sa.Column("embedding", sa.LargeBinary, nullable=False),
    sa.Column("box", sa.JSON, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("quality", sa.Float, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_faces_gallery", "gallery_id"),
    sa.Index("ix_faces_subject", "subject_id"),
)

# Who deleted what and when; never an embedding.
deletions = sa.Table(
    "deletions",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(NAME_LEN), nullable=False),
    sa.Column("request_id", sa.String(NAME_LEN), nullable=False),
    sa.Column("tenant", sa.String(NAME_LEN), nullable=False),
    sa.Column("gallery", sa.String(NAME_LEN), nullable=False),
    sa.Column("subject", sa.String(NAME_LEN), nullable=True),
    sa.Column("face_id", sa.BigInteger, nullable=True),
    sa.Column("faces_deleted", sa.Integer, nullable=False),
)


def database_url(url: str | None, data_dir: Path) -> str:
    """IIS_DATABASE_URL, else a SQLite file under the data directory (created if missing)."""
    if url:
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / 'gallery.db').resolve()}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _sqlite_setup(engine)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)


def _sqlite_setup(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we send BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=FULL",
            "foreign_keys=ON",
            "secure_delete=ON",
            "busy_timeout=30000",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def writer(engine: Engine) -> Engine:
    """The engine, marked so that SQLite transactions start with BEGIN IMMEDIATE."""
    return engine.execution_options(write=True)


MIGRATIONS = "service.gallery:migrations"
ADVISORY_LOCK = 0x1157_6A11  # any constant of ours: serialises replicas migrating at once


def migrate(engine: Engine) -> str:
    """Run the Alembic migrations to head; -> the revision the database is at. Replicas
    starting at once take turns: PostgreSQL by an advisory lock, SQLite (several processes on
    one file, as the compose file's CPU and CUDA services) by BEGIN IMMEDIATE, so the second
    waits for the first's commit and finds the database at head."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    with writer(engine).connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK})
            conn.commit()
        try:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()
            head = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        finally:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK})
                conn.commit()
    log.info("gallery database %s at migration %s", engine.url.render_as_string(), head)
    return str(head)
