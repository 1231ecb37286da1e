"""The Open Inference Protocol's model repository extension (Triton / KServe paths), so
`tritonclient.http`'s get_model_repository_index, load_model and unload_model work unchanged;
and the card's JSON Schema. Changing the repository needs an admin key when keys are set
(ApiKeyMiddleware); errors under /v2 come in the protocol's shape."""

from __future__ import annotations

import json
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request

from service.cards import json_schema
from service.errors import InvalidRequest
from service.repository import ModelRepository
from service.routes.common import ModelPath, RepositoryDep
from service.schemas import (
    ERROR_RESPONSES,
    RepositoryIndexEntry,
    RepositoryLoadResponse,
)

router = APIRouter(tags=["model repository"])


async def _json_body(request: Request) -> dict[str, Any]:
    """The optional JSON object body of a repository call ({} when empty)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = await anyio.to_thread.run_sync(json.loads, raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


@router.post(
    "/v2/repository/index", response_model=list[RepositoryIndexEntry], responses=ERROR_RESPONSES
)
async def repository_index(
    request: Request, repository: RepositoryDep
) -> list[RepositoryIndexEntry]:
    """Every model in the repository folder and every loaded version, with its state."""
    body = await _json_body(request)
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidRequest("'ready' must be true or false")
    rows = await anyio.to_thread.run_sync(repository.index, ready)
    return [RepositoryIndexEntry(**row) for row in rows]


# What load and unload answer: the model's versions and their states.
_VERSIONS: dict[str, Any] = {
    "response_model": RepositoryLoadResponse,
    "responses": ERROR_RESPONSES,
}


@router.post("/v2/repository/models/{name}/load", **_VERSIONS)
async def load_model(
    request: Request, repository: RepositoryDep, name: ModelPath
) -> RepositoryLoadResponse:
    """(Re)load every version of a model: from its folder, or from the files sent with the
    request (Triton's `parameters`: `config` = the card, `file:<path>` = base64 content). The new
    version serves only after it validated, warmed up and passed its checks."""
    body = await _json_body(request)
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidRequest("'parameters' must be a JSON object")
    await repository.load(name, parameters)
    return _load_answer(repository, name)


@router.post("/v2/repository/models/{name}/unload", **_VERSIONS)
async def unload_model(
    request: Request, repository: RepositoryDep, name: ModelPath
) -> RepositoryLoadResponse:
    """Stop serving every version of a model; requests in flight finish first, then its
    sessions are released. Its folder stays (load it again by name)."""
    await _json_body(request)
    await repository.unload(name)
    return _load_answer(repository, name)


def _load_answer(repository: ModelRepository, name: str) -> RepositoryLoadResponse:
    entries = repository.registry.entries.get(name, {})
    return RepositoryLoadResponse(
        name=name, versions=[entries[v].describe() for v in sorted(entries)]
    )


@router.get("/v1/models/card-schema", response_model=dict[str, Any])
async def card_schema() -> dict[str, Any]:
    """The JSON Schema of model.json (every task), to check cards in your own CI."""
    return json_schema()
