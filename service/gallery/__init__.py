"""Face identification against enrolled galleries (issue 20).

service.py    enrol / identify / calibrate: detect + embed (service.tasks.faces) -> store
store.py      the database (SQLAlchemy 2 Core): galleries, subjects, faces, deletion log
index.py      one in-memory (N, D) float32 matrix per gallery, in step with the database
calibrate.py  threshold for a target false-accept rate from the gallery's own pairs
transfer.py   export / import as JSON Lines
db.py         tables, engines (SQLite WAL, PostgreSQL) and Alembic migrations to head

Its HTTP routes, /v1/faces/galleries/{gallery}/..., are service/routes/galleries.py.
"""
