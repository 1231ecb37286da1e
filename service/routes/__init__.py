"""HTTP routes: they decode the request, call one task function, encode its schema. One module
per area, each with a `router`; service/app.py includes them all (ROUTES). What several routes
share (dependencies, parameters, helpers) lives in common.py."""
