"""The FastAPI application: `create_app()` wires settings, models, routes and errors.

Run: `uvicorn service.app:create_app --factory` or `python -m service`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.errors import install_error_handlers
from service.gallery.service import Galleries
from service.logging_config import RequestLogContext
from service.metrics import Metrics, MetricsMiddleware
from service.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    LeaseMiddleware,
    RequestIdMiddleware,
)
from service.repository import ModelRegistry, ModelRepository
from service.routes import (
    classify,
    detect,
    faces,
    galleries,
    health,
    inference,
    playground,
    repository,
    segment,
)
from service.routes.docs import install_docs
from service.settings import Settings, get_settings

log = logging.getLogger("service")

# Every router the app serves, in the order the OpenAPI document lists them.
ROUTES = (health, classify, detect, faces, galleries, segment, playground, repository, inference)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry()
        model_repository = ModelRepository(registry, settings, app.state.metrics)
        app.state.registry = registry
        app.state.repository = model_repository
        # the face-gallery database: migrated to head, every gallery's index built
        app.state.galleries = face_galleries = await Galleries.open(settings)
        await face_galleries.warm()
        loader = asyncio.create_task(model_repository.start())
        if not settings.background_load:
            await loader
        try:
            yield
        finally:
            loader.cancel()
            await model_repository.stop()
            face_galleries.close()

    app = FastAPI(
        title="Image inference service",
        version="0.1.0",
        summary="Classify, detect, segment and verify faces with ONNX Runtime.",
        lifespan=lifespan,
        docs_url=None,  # served offline by install_docs below
        redoc_url=None,
        # Two images and a few text fields at most; anything more is abuse, not a photo.
        form_limits={"max_files": 4, "max_fields": 16, "max_part_size": 64 * 1024},
    )
    app.state.settings = settings
    app.state.registry = ModelRegistry()
    app.state.repository = None
    app.state.metrics = Metrics()
    install_error_handlers(app)
    # Starlette runs the last-added middleware first:
    # request id -> metrics -> CORS -> API key -> body limit -> routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(LeaseMiddleware)
    app.add_middleware(
        ApiKeyMiddleware,
        keys=settings.accepted_keys(),
        admin_keys=settings.admin_api_keys,
        principals=settings.key_principals(),
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "X-Request-ID", "Content-Type"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestLogContext)  # inside RequestIdMiddleware: logs carry its id
    app.add_middleware(RequestIdMiddleware)
    install_docs(app)
    for routes in ROUTES:
        app.include_router(routes.router)
    return app
