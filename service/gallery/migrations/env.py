"""Alembic environment: migrations run on the connection db.migrate hands over (online only).

A new migration: `alembic -x url=sqlite:///data/gallery.db revision -m "..."` from
service/gallery/migrations with script_location set to this folder, then edit it by hand."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from service.gallery.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # the alembic CLI: -x url=...
    url = context.get_x_argument(as_dictionary=True)["url"]
    connection = sa.create_engine(url).connect()

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
