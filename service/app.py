"""The FastAPI application: `create_app()` wires settings, models, routes and errors.

Run: `uvicorn service.app:create_app --factory` or `python -m service`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service.cards import discover
from service.errors import install_error_handlers
from service.logging_config import RequestLogContext
from service.metrics import Metrics, MetricsMiddleware
from service.middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestIdMiddleware
from service.routes import classify, health
from service.routes.detect import router as detect_router
from service.routes.docs import install_docs
from service.routes.faces import router as faces_router
from service.routes.playground import router as playground_router
from service.routes.segment import router as segment_router
from service.runtime import ModelRegistry, load_model, pick_defaults, warm_up
from service.settings import Settings, get_settings

log = logging.getLogger("service")


async def load_models(registry: ModelRegistry, settings: Settings, metrics: Metrics) -> None:
    """Load every card in models_dir, warm each up, then start its batcher. A model that fails
    is recorded (and logged) without stopping the others."""
    try:
        cards = await anyio.to_thread.run_sync(discover, settings.models_dir)
        registry.defaults = pick_defaults([c.card for c in cards], settings.default_models)
        for loaded in cards:
            name = loaded.card.name
            try:
                runtime = await anyio.to_thread.run_sync(load_model, loaded, settings)
                await anyio.to_thread.run_sync(warm_up, runtime, settings.warmup_runs)
            except Exception as exc:  # a broken model file must not stop the others
                log.exception("model %s failed to load", name)
                registry.failed[name] = f"{type(exc).__name__}: {exc}"
                continue
            metrics.track_model(runtime)
            runtime.batcher.start()
            runtime.ready = True
            registry.models[name] = runtime
            log.info(
                "model %s (%s) ready: load %.0f ms, warm-up %.0f ms",
                name,
                loaded.card.task,
                runtime.load_ms,
                runtime.warmup_ms,
            )
    finally:
        registry.loading = False
    if not registry.defaults:
        log.warning(
            "no models found in %s: build them with scripts/build_models.py", settings.models_dir
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry()
        app.state.registry = registry
        loader = asyncio.create_task(load_models(registry, settings, app.state.metrics))
        if not settings.background_load:
            await loader
        try:
            yield
        finally:
            loader.cancel()
            for runtime in registry.models.values():
                await runtime.batcher.close()

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
    app.state.metrics = Metrics()
    install_error_handlers(app)
    # Starlette runs the last-added middleware first:
    # request id -> metrics -> CORS -> API key -> body limit -> routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.accepted_keys())
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
    app.include_router(health.router)
    app.include_router(classify.router)
    app.include_router(detect_router)
    app.include_router(faces_router)
    app.include_router(segment_router)
    app.include_router(playground_router)
    return app
