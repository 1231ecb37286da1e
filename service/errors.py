"""Named failures and the one place that turns them into HTTP answers.

Core code raises `ServiceError` subclasses with a sentence a person can act on; routes never
catch anything. Every error body has one shape:
    {"error": {"code": "invalid_image", "message": "...", "request_id": "..."}}
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service.errors")


class ServiceError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidImage(ServiceError):
    status_code = 400
    code = "invalid_image"


class InvalidRequest(ServiceError):
    status_code = 400
    code = "invalid_request"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class ImageTooLarge(ServiceError):
    status_code = 413
    code = "image_too_large"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class InvalidParameter(ServiceError):
    status_code = 422
    code = "invalid_parameter"


class NoFaceFound(ServiceError):
    status_code = 422
    code = "no_face"


class ModelNotFound(ServiceError):
    status_code = 404
    code = "model_not_found"


class ModelFailed(ServiceError):
    """The model is installed but refused at load (bad card or file): never served."""

    status_code = 409
    code = "model_failed"


class LoadFailed(ServiceError):
    """A repository load whose model did not pass validation; the message says which field."""

    status_code = 400
    code = "load_failed"


class ModelControlDisabled(ServiceError):
    status_code = 409
    code = "model_control_disabled"


class Overloaded(ServiceError):
    status_code = 429
    code = "overloaded"


class ModelUnavailable(ServiceError):
    status_code = 503
    code = "model_unavailable"


class DeadlineExceeded(ServiceError):
    status_code = 503
    code = "timeout"


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


def error_response(
    request: Request,
    status_code: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    rid = request_id_of(request)
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(code).inc()
    return JSONResponse(
        error_body(request.url.path, code, message, rid), status_code=status_code, headers=headers
    )


def error_body(path: str, code: str, message: str, request_id: str) -> dict[str, Any]:
    """The one error shape; under /v2 the Open Inference Protocol's, whose `error` is the
    message itself (what tritonclient and the kserve SDK read), with our code and id beside."""
    if path == "/v2" or path.startswith("/v2/"):
        return {"error": message, "code": code, "request_id": request_id}
    return {"error": {"code": code, "message": message, "request_id": request_id}}


_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "overloaded",
    503: "unavailable",
}


def _describe_validation(errors: list[dict[str, Any]]) -> tuple[int, str, str]:
    """Missing/wrong form fields are 400 (the body is wrong); bad query values are 422."""
    parts = []
    in_body = False
    for err in errors:
        loc = [str(p) for p in err.get("loc", ())]
        where = loc[0] if loc else "request"
        in_body = in_body or where == "body"
        field = loc[-1] if len(loc) > 1 else where
        if err.get("type") == "missing":
            parts.append(f"{where} field '{field}' is required")
        elif "UploadFile" in str(err.get("msg", "")):
            parts.append(f"{where} field '{field}' must be a file upload (multipart/form-data)")
        else:
            parts.append(f"{where} field '{field}': {err.get('msg', 'invalid')}")
    message = "; ".join(parts) or "invalid request"
    if in_body:
        return 400, "invalid_request", message
    return 422, "invalid_parameter", message


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        log.info(
            "request %s rejected: %s %s: %s",
            request_id_of(request),
            exc.status_code,
            exc.code,
            exc.message,
        )
        return error_response(request, exc.status_code, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message = _describe_validation(list(exc.errors()))
        log.info("request %s rejected: %s %s: %s", request_id_of(request), status, code, message)
        return error_response(request, status, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = str(exc.detail)
        log.info(
            "request %s rejected: %s %s: %s", request_id_of(request), exc.status_code, code, message
        )
        return error_response(request, exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s failed with an unexpected error", request_id_of(request))
        return error_response(request, 500, "internal_error", "internal error; see server logs")
