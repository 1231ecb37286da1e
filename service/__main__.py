"""`python -m service`: serve with uvicorn using the IIS_* settings."""

from __future__ import annotations

import uvicorn

from service.logging_config import log_config
from service.memory import limit_malloc_arenas
from service.settings import get_settings


def main() -> None:
    limit_malloc_arenas()  # before uvicorn starts any thread
    settings = get_settings()
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),  # JSON lines, the access log included
        # One process holds one session per model; scale out with more containers instead.
        workers=1,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
