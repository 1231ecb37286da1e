from __future__ import annotations

import onnxruntime as ort
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.routes.common import RegistryDep, SettingsDep
from service.schemas import HealthResponse, ModelsResponse, ModelVersionState, ReadyResponse

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """Liveness: the process answers. Never touches a model."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(registry: RegistryDep) -> JSONResponse:
    """200 once every default model is loaded and warmed up, 503 before (or if one failed)."""
    body = ReadyResponse(
        status="ready" if registry.ready else ("loading" if registry.loading else "degraded"),
        models={
            name: any(e.state == "ready" for e in versions.values())
            for name, versions in sorted(registry.entries.items())
        },
        failed=registry.failed,
        pending=registry.pending,
    )
    if registry.ready:
        return JSONResponse(body.model_dump())
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "2"})


@router.get("/v1/models", response_model=ModelsResponse)
async def list_models(registry: RegistryDep, settings: SettingsDep) -> ModelsResponse:
    """Every model card, the providers really active, batching and thread settings; every
    version's state (loading, ready, unloading, failed with the reason)."""
    entries = registry.index()
    return ModelsResponse(
        defaults=registry.defaults,
        models=[e.runtime.describe() for e in entries if e.state == "ready" and e.runtime],
        versions=[ModelVersionState(**e.describe()) for e in entries],
        failed=registry.failed,
        pending=registry.pending,
        runtime={
            "onnxruntime": ort.__version__,
            "available_providers": ort.get_available_providers(),
            "device_setting": settings.device,
            "intra_op_threads": settings.intra_op_threads,
            "inter_op_threads": settings.inter_op_threads,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_pixels": settings.max_pixels,
            "model_control": settings.model_control,
        },
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format: requests, latency, errors by code, batch sizes, queue depth."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
