"""galleries, subjects, faces and the deletion log

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer, "sqlite")  # SQLite: INTEGER PK is the rowid


def upgrade() -> None:
    op.create_table(
        "galleries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("dim", sa.Integer, nullable=True),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("calibration", sa.JSON, nullable=True),
        sa.Column("revision", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_galleries_tenant_name"),
    )
    op.create_table(
        "subjects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "gallery_id",
            sa.Integer,
            sa.ForeignKey("galleries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("gallery_id", "name", name="uq_subjects_gallery_name"),
    )
    op.create_table(
        "faces",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column(
            "gallery_id",
            sa.Integer,
            sa.ForeignKey("galleries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "subject_id",
            sa.Integer,
            sa.ForeignKey("subjects.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("box", sa.JSON, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("quality", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_faces_gallery", "faces", ["gallery_id"])
    op.create_index("ix_faces_subject", "faces", ["subject_id"])
    op.create_table(
        "deletions",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("gallery", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(64), nullable=True),
        sa.Column("face_id", sa.BigInteger, nullable=True),
        sa.Column("faces_deleted", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deletions")
    op.drop_index("ix_faces_subject", "faces")
    op.drop_index("ix_faces_gallery", "faces")
    op.drop_table("faces")
    op.drop_table("subjects")
    op.drop_table("galleries")
