"""The Open Inference Protocol (KServe v2 / Triton HTTP): health, server and model metadata,
model readiness and inference, so `tritonclient.http` and the kserve SDK work unchanged. The
repository extension (/v2/repository/...) lives in routes/repository.py. Errors under /v2
come in the protocol's shape: {"error": "<message>", "code", "request_id"}."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from service.errors import ModelNotFound, UnsupportedMediaType, error_body, request_id_of
from service.oip import encode_response, header_length, parse_request
from service.oip_images import ImageRequest
from service.oip_infer import infer, model_metadata
from service.repository import ModelRegistry
from service.routes.common import ModelPath, RegistryDep, SettingsDep
from service.runtime import ModelRuntime
from service.settings import Settings
from service.timing import Timing

router = APIRouter(tags=["open inference protocol"])

VersionPath = Annotated[int, Path(ge=1, lt=2**31, description="Model version.")]
EXTENSIONS = ["model_repository", "binary_tensor_data"]
HEADER = "Inference-Header-Content-Length"
# Bodies and answers past this size are (de)serialised off the event loop.
_THREAD_BYTES = 256 * 1024


class OipError(BaseModel):
    error: str = Field(description="What went wrong, in a sentence.")
    code: str
    request_id: str


class LiveResponse(BaseModel):
    live: bool


class ServerReadyResponse(BaseModel):
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks an axis of any size (the batch axis first).")


class ImageInputMetadata(BaseModel):
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: str = Field(description="The request parameters this style reads.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, str | int]
    image_input: ImageInputMetadata = Field(
        description="The second input style: encoded images as BYTES, answered as the task's "
        "result tensors."
    )


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class InferInputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferRequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """The JSON form; with the binary extension this is the header, raw tensors follow."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInputTensor]
    outputs: list[InferRequestedOutput] | None = None


class InferOutputTensor(InferInputTensor):  # the same fields, its own name in the schema
    pass


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutputTensor]


_ERROR_TEXTS = {
    400: "A malformed request, tensor or parameter.",
    404: "No model of that name or version.",
    413: "Body, tensor or batch over the limits.",
    429: "Queue full; retry after `Retry-After`.",
    503: "Not ready; retry after `Retry-After`.",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OipError, "description": text} for code, text in _ERROR_TEXTS.items()
}


def resolve(registry: ModelRegistry, name: str, version: int | None) -> ModelRuntime:
    """The model (version) a /v2/models request names, leased for the request: ModelNotFound,
    ModelUnavailable (loading) or ModelFailed otherwise."""
    versions = registry.entries.get(name, {})
    if not versions:
        known = ", ".join(sorted(registry.entries)) or "none"
        raise ModelNotFound(f"unknown model {name!r}; this server has: {known}")
    entry = versions.get(version) if version is not None else None
    tasks = [e.task for e in ([entry] if entry else versions.values()) if e and e.task]
    ref = name if version is None else f"{name}@{version}"
    return registry.get(tasks[0] if tasks else "classify", ref)


@router.get("/v2/health/live", response_model=LiveResponse)
async def server_live() -> LiveResponse:
    """The server answers (never touches a model)."""
    return LiveResponse(live=True)


@router.get(
    "/v2/health/ready", response_model=ServerReadyResponse, responses={503: {"model": OipError}}
)
async def server_ready(request: Request, registry: RegistryDep) -> JSONResponse:
    """200 once every default model is loaded and warmed up (as /readyz), else 503."""
    if registry.ready:
        return JSONResponse({"ready": True})
    why = "models are still loading" if registry.loading else "a default model is not ready"
    body = error_body(request.url.path, "not_ready", why, request_id_of(request))
    return JSONResponse({"ready": False, **body}, status_code=503, headers={"Retry-After": "2"})


@router.get("/v2", response_model=ServerMetadata)
async def server_metadata(request: Request) -> ServerMetadata:
    """Server name, version and the protocol extensions it supports."""
    return ServerMetadata(
        name="image-inference-service", version=request.app.version, extensions=EXTENSIONS
    )


def _metadata(registry: ModelRegistry, name: str, version: int | None) -> dict[str, Any]:
    runtime = resolve(registry, name, version)
    ready = sorted(v for v, e in registry.entries.get(name, {}).items() if e.state == "ready")
    return model_metadata(runtime, ready)


@router.get("/v2/models/{name}", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata_latest(registry: RegistryDep, name: ModelPath) -> dict[str, Any]:
    """Inputs and outputs (from the model card), datatypes, shapes; both input styles."""
    return _metadata(registry, name, None)


@router.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata_version(
    registry: RegistryDep, name: ModelPath, version: VersionPath
) -> dict[str, Any]:
    """As /v2/models/{name}, for one version."""
    return _metadata(registry, name, version)


@router.get("/v2/models/{name}/ready", response_model=ModelReadyResponse, responses=ERRORS)
async def model_ready_latest(registry: RegistryDep, name: ModelPath) -> ModelReadyResponse:
    """200 when the model serves; 404 unknown, 503 loading, 409 failed to load."""
    resolve(registry, name, None)
    return ModelReadyResponse(name=name, ready=True)


@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    response_model=ModelReadyResponse,
    responses=ERRORS,
)
async def model_ready_version(
    registry: RegistryDep, name: ModelPath, version: VersionPath
) -> ModelReadyResponse:
    """As /v2/models/{name}/ready, for one version."""
    resolve(registry, name, version)
    return ModelReadyResponse(name=name, ready=True)


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """A pydantic JSON Schema with its $defs substituted in (openapi_extra takes it verbatim,
    where "#/$defs/..." would point at nothing)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


_REQUEST_SCHEMA = InferRequest.model_json_schema()
_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _inline(_REQUEST_SCHEMA, _REQUEST_SCHEMA.get("$defs", {}))
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"The binary tensor data extension: {HEADER} bytes of JSON "
                "header, then the inputs' raw bytes.",
            },
        },
    },
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferResponse,
        "content": {"application/octet-stream": {}},
        "description": f"JSON; or, when an output is binary, {HEADER} bytes of JSON header then "
        "the outputs' raw bytes.",
    },
    **ERRORS,
}


async def _infer(
    request: Request,
    registry: ModelRegistry,
    settings: Settings,
    name: str,
    version: int | None,
) -> Response:
    runtime = resolve(registry, name, version)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not accepted; send identity")
    body = await request.body()
    json_size = header_length(request.headers.get(HEADER), len(body))
    if len(body) > _THREAD_BYTES:
        parsed = await anyio.to_thread.run_sync(
            parse_request, body, json_size, settings.max_upload_bytes
        )
    else:
        parsed = parse_request(body, json_size, settings.max_upload_bytes)
    timing = Timing()
    context = ImageRequest(parsed.parameters, registry, settings.max_pixels, timing)
    outputs = await infer(runtime, parsed, context)
    args = (runtime.name, str(runtime.version), parsed.id, outputs, parsed.binary_output)
    if sum(t.data.nbytes for t, _ in outputs) > _THREAD_BYTES:
        answer, head = await anyio.to_thread.run_sync(encode_response, *args)
    else:
        answer, head = encode_response(*args)
    timing.report()  # feeds the per-stage metrics, as the REST routes do
    if head is None:
        return Response(answer, media_type="application/json")
    return Response(answer, media_type="application/octet-stream", headers={HEADER: str(head)})


# The infer routes' answer and body, for the OpenAPI document.
_INFER_ROUTE: dict[str, Any] = {
    "response_model": InferResponse,
    "responses": _INFER_RESPONSES,
    "openapi_extra": _INFER_DOC,
}


@router.post("/v2/models/{name}/infer", **_INFER_ROUTE)
async def model_infer_latest(
    request: Request, registry: RegistryDep, settings: SettingsDep, name: ModelPath
) -> Response:
    """Inference: the graph's own input tensor (raw outputs), or `image` as BYTES (the task's
    result); JSON or binary tensors both ways."""
    return await _infer(request, registry, settings, name, None)


@router.post("/v2/models/{name}/versions/{version}/infer", **_INFER_ROUTE)
async def model_infer_version(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    name: ModelPath,
    version: VersionPath,
) -> Response:
    """As /v2/models/{name}/infer, on one version."""
    return await _infer(request, registry, settings, name, version)
