"""Structured logs: one JSON object per line on stderr, for the service's loggers and
uvicorn's alike (its access log included), each with the request id when there is one.

    {"ts": "2026-11-24T21:58:03.120Z", "level": "info", "logger": "uvicorn.access",
     "message": "127.0.0.1:50312 - \\"POST /classify HTTP/1.1\\" 200", "request_id": "9f1c...",
     "client": "127.0.0.1:50312", "method": "POST", "path": "/classify", "status": 200}

`python -m service` passes `log_config(level)` to uvicorn, which applies it before the app
starts. The request id reaches every record through a context variable that
`RequestLogContext` (an ASGI middleware inside `RequestIdMiddleware`) sets per request.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else came from `extra=` and is logged as a field.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
    "taskName",
}


class RequestLogContext:
    """Makes the request id (set by RequestIdMiddleware) visible to every log call made while
    the request runs, uvicorn's access log line included (it is written from `send`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = scope.get("state", {}).get("request_id") if scope["type"] == "http" else None
        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, timezone.utc)
        out: dict[str, Any] = {
            "ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            out["request_id"] = request_id
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            out.update(_access_fields(record.args))
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def _access_fields(args: tuple[Any, ...]) -> dict[str, Any]:
    """uvicorn's access record args: (client, method, path with query, http version, status)."""
    if len(args) != 5:
        return {}
    client, method, path, http_version, status = args
    return {
        "client": client,
        "method": method,
        "path": path,
        "http_version": http_version,
        "status": int(status),
    }


def log_config(level: str = "info") -> dict[str, Any]:
    """A logging.config.dictConfig for uvicorn's `log_config`: everything as JSON on stderr."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": level},
    }
