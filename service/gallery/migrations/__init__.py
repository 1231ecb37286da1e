"""Alembic migrations of the gallery database (run by service.gallery.db.migrate)."""
