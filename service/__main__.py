"""`python -m service`: serve with uvicorn using the IIS_* settings."""

from __future__ import annotations

import logging

import uvicorn

from service.settings import get_settings


def main() -> None:
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # One process holds one session per model; scale out with more containers instead.
        workers=1,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
