"""The client against the server's /openapi.json, so that the two cannot drift: every client
method's HTTP method, path, form files, query parameters (names, types, enums; defaults left to
the server) and answer model match the operation the app publishes."""

from __future__ import annotations

import inspect
import types
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest

from iis_client.client import Client, Endpoints, Request
from iis_client.params import FaceMetric, MaskFormat, TilingMode
from service.app import create_app
from service.settings import Settings

METHODS = sorted(name for name, v in vars(Endpoints).items() if isinstance(v, staticmethod))
JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """/openapi.json as the app generates it (no models needed: the schema is static)."""
    app = create_app(Settings(models_dir=tmp_path_factory.mktemp("models")))
    schema: dict[str, Any] = app.openapi()
    return schema


def built(name: str) -> tuple[Request[Any], type | None]:
    """The request the client method `name` sends with no options, and its parameters'
    TypedDict (None for a method without query parameters)."""
    endpoint = getattr(Endpoints, name)
    signature = inspect.signature(endpoint, eval_str=True)
    images = [p for p in signature.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    options = [p for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
    request = endpoint(*[b"not sent" for _ in images])
    params = get_args(options[0].annotation)[0] if options else None
    return request, params


def schema_of(annotation: Any) -> dict[str, Any]:
    """The JSON schema a client parameter's type stands for (None stripped: never sent)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, types.UnionType) and len(args) == 1:
        return schema_of(args[0])
    if get_origin(annotation) is Literal:
        return {"enum": sorted(get_args(annotation)), "type": "string"}
    if get_origin(annotation) is Sequence:
        return {"type": "array", "items": schema_of(args[0])}
    return {"type": JSON_TYPES[annotation]}


def server_schema(parameter: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema, the null alternative and the limits and docs dropped."""
    schema = parameter["schema"]
    alternatives = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    assert len(alternatives) == 1, parameter
    (kept,) = alternatives
    out = {k: v for k, v in kept.items() if k in ("type", "enum", "items")}
    if "enum" in out:
        out["enum"] = sorted(out["enum"])
    if "items" in out:
        out["items"] = {"type": out["items"]["type"]}
    return out


def without_null_defaults(schema: Any) -> Any:
    """FastAPI leaves `"default": null` out of the schemas it publishes; pydantic writes it."""
    if isinstance(schema, dict):
        return {
            k: without_null_defaults(v)
            for k, v in schema.items()
            if not (k == "default" and v is None)
        }
    if isinstance(schema, list):
        return [without_null_defaults(v) for v in schema]
    return schema


def operation(spec: dict[str, Any], request: Request[Any]) -> dict[str, Any]:
    call = request.call
    assert call.path in spec["paths"], f"the server has no {call.path}"
    ops = spec["paths"][call.path]
    assert call.method.lower() in ops, f"{call.path} takes {sorted(ops)}, not {call.method}"
    op: dict[str, Any] = ops[call.method.lower()]
    return op


def test_every_task_route_has_a_client_method(spec):
    """The routes the client is for (the tasks, the model listing, readiness) are all there."""
    paths = {built(name)[0].call.path for name in METHODS}
    tagged = {
        path
        for path, ops in spec["paths"].items()
        for op in ops.values()
        if {"classify", "detect", "segment", "faces"} & set(op.get("tags", []))
    }
    assert tagged <= paths, f"no client method for {sorted(tagged - paths)}"
    assert {"/v1/models", "/readyz"} <= paths


@pytest.mark.parametrize("name", METHODS)
def test_query_parameters_match_the_operation(spec, name):
    request, params = built(name)
    op = operation(spec, request)
    server = {p["name"]: p for p in op.get("parameters", []) if p["in"] == "query"}
    client = get_type_hints(params) if params else {}
    assert sorted(client) == sorted(server), f"{name}: client vs server query parameters"
    for key, annotation in client.items():
        assert schema_of(annotation) == server_schema(server[key]), f"{name}({key}=...)"
        # the client leaves a parameter out unless it is given, so it must be optional
        assert not server[key].get("required", False), f"{name}: {key} is required"
    # nothing given -> nothing sent: every default is the server's own
    assert request.call.params == ()


@pytest.mark.parametrize("name", METHODS)
def test_form_files_match_the_operation(spec, name):
    request, _ = built(name)
    op = operation(spec, request)
    sent = sorted(request.call.files or {})
    if "requestBody" not in op:
        assert sent == []
        return
    ref = op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    body = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert sent == sorted(body["properties"]) == sorted(body["required"])


@pytest.mark.parametrize("name", METHODS)
def test_answer_model_matches_the_operation(spec, name):
    request, _ = built(name)
    ok = operation(spec, request)["responses"]["200"]["content"]["application/json"]["schema"]
    component = ok["$ref"].rsplit("/", 1)[1]
    assert component == request.answer.__name__
    # the same fields, types and nesting as the model the client parses into
    ours = request.answer.model_json_schema(
        ref_template="#/components/schemas/{model}", mode="serialization"
    )
    published = spec["components"]["schemas"]
    for nested, schema in ours.pop("$defs", {}).items():
        assert published[nested] == without_null_defaults(schema), nested
    assert published[component] == without_null_defaults(ours)


@pytest.mark.parametrize(
    ("enum", "path", "parameter"),
    [
        (TilingMode, "/detect", "tiling"),
        (TilingMode, "/segment", "tiling"),
        (MaskFormat, "/segment", "mask_format"),
        (FaceMetric, "/verify-faces", "metric"),
    ],
)
def test_shared_enums_are_the_servers(spec, enum, path, parameter):
    (query,) = [p for p in spec["paths"][path]["post"]["parameters"] if p["name"] == parameter]
    assert server_schema(query)["enum"] == sorted(get_args(enum))


def test_client_methods_carry_the_endpoints_signatures():
    for name in METHODS:
        method = getattr(Client, name)
        endpoint = inspect.signature(getattr(Endpoints, name), eval_str=True)
        assert list(inspect.signature(method).parameters)[1:] == list(endpoint.parameters)


def test_none_is_not_sent_and_an_unknown_parameter_is_refused():
    request = Endpoints.detect(b"x", score_threshold=None, classes=["dog", "7"], tiling="on")
    assert request.call.params == (("classes", "dog"), ("classes", "7"), ("tiling", "on"))
    with pytest.raises(TypeError, match="/classify takes no parameter top_kk"):
        Endpoints.classify(b"x", top_kk=3)  # type: ignore[call-arg]
