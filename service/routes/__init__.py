"""HTTP routes: they decode the request, call one task function, encode its schema."""
