"""ASGI middlewares: request ids, and the upload byte limit enforced while the body streams."""

from __future__ import annotations

import hmac
import json
import random
import re
from collections.abc import Iterable, Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.asgi import HttpMiddleware
from service.errors import error_body
from service.metrics import metrics_of
from service.runtime import ModelRuntime, request_leases
from service.tenancy import Principal

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def new_request_id() -> str:
    """32 random hex digits, like uuid4().hex. Not from os.urandom: that drops the GIL for a
    getrandom() call, and getting it back from the decode threads cost the event loop 20% of
    its busy time at 16 concurrent requests (py-spy, here). A request id needs uniqueness,
    not secrecy."""
    return f"{random.getrandbits(128):032x}"


class RequestIdMiddleware(HttpMiddleware):
    """Gives every request an id (the client's X-Request-ID if sane) for logs and error bodies."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming = dict(scope.get("headers", ())).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the {limit}-byte upload limit")


class BodyLimitMiddleware(HttpMiddleware):
    """Refuse bodies over `max_bytes`: at once from Content-Length, else while counting the
    stream, so a 5 GB upload is never read into memory or spooled to disk.

    Raising an HTTPException from `receive` reaches the error handlers (FastAPI re-raises
    HTTPExceptions met while parsing a body), which answer in the one error shape."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(scope, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        detail = BodyTooLarge(self.max_bytes).detail
        await send_error(scope, send, 413, "payload_too_large", detail, [(b"connection", b"close")])


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer in the one error shape from a middleware, before the app's handlers exist."""
    request_id = scope.get("state", {}).get("request_id", "-")
    metrics = metrics_of(scope)
    if metrics is not None:
        metrics.errors.labels(code).inc()
    body = json.dumps(error_body(scope.get("path", ""), code, message, request_id)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """When keys are configured, every path but the open ones needs `X-API-Key: <key>` or
    `Authorization: Bearer <key>`. Keys are compared in constant time and never logged.

    Two scopes: inference keys (`keys`) call every route but the repository's; admin keys
    (`admin_keys`) call everything, including `/v2/repository/...`, which changes what the
    server runs. With keys configured and no admin key, the repository cannot be changed.
    An accepted key's tenant and scope (`principals`, service/tenancy.py) go into
    `request.state.principal` for the routes that keep per-tenant state (face galleries)."""

    ADMIN_PREFIX = "/v2/repository"

    OPEN_PATHS = frozenset(
        {
            "/healthz",
            "/readyz",
            "/docs",
            "/docs/oauth2-redirect",
            "/redoc",
            "/openapi.json",
            "/",
            "/favicon.ico",
        }
    )

    def __init__(
        self,
        app: ASGIApp,
        keys: Iterable[str],
        admin_keys: Iterable[str] = (),
        principals: Mapping[str, Principal] | None = None,
    ) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.admin_keys = [k.encode() for k in admin_keys]
        self.principals = {k.encode(): p for k, p in (principals or {}).items()}

    def _admit(self, scope: Scope, key: bytes) -> None:
        """An accepted key: record who it is (looked up only once it has matched)."""
        principal = self.principals.get(key)
        if principal is not None:
            scope.setdefault("state", {})["principal"] = principal

    def _presented(self, scope: Scope) -> bytes | None:
        headers = dict(scope.get("headers", ()))
        if b"x-api-key" in headers:
            return bytes(headers[b"x-api-key"]).strip()
        auth = bytes(headers.get(b"authorization", b""))
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
        return None

    @staticmethod
    def _matches(key: bytes, keys: list[bytes]) -> bool:
        # compare against every key so the time taken does not reveal which one matched
        matches = [hmac.compare_digest(key, k) for k in keys]
        return any(matches)

    def _accepted(self, key: bytes) -> bool:
        return self._matches(key, self.keys) or self._matches(key, self.admin_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and (self.keys or self.admin_keys)
            and scope["method"] != "OPTIONS"
            and (
                scope["path"] == self.ADMIN_PREFIX
                or scope["path"].startswith(self.ADMIN_PREFIX + "/")
            )
        ):
            await self._admin_only(scope, receive, send)
            return
        if (
            scope["type"] != "http"
            or not (self.keys or self.admin_keys)
            or scope["path"] in self.OPEN_PATHS
            or scope["path"].startswith("/docs/assets/")
            or scope["method"] == "OPTIONS"  # CORS preflight carries no credentials
        ):
            await self.app(scope, receive, send)
            return
        key = self._presented(scope)
        if key is not None and self._accepted(key):
            self._admit(scope, key)
            await self.app(scope, receive, send)
            return
        message = (
            "missing API key: send X-API-Key or Authorization: Bearer"
            if key is None
            else "the API key is not valid"
        )
        await send_error(scope, send, 401, "unauthorized", message, [_CHALLENGE])

    async def _admin_only(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self._presented(scope)
        if key is not None and self._matches(key, self.admin_keys):
            self._admit(scope, key)
            await self.app(scope, receive, send)
            return
        if key is None or not self._matches(key, self.keys):
            message = (
                "missing API key: the model repository needs an admin key (X-API-Key or "
                "Authorization: Bearer)"
                if key is None
                else "the API key is not valid"
            )
            await send_error(scope, send, 401, "unauthorized", message, [_CHALLENGE])
            return
        message = (
            "this key may run inference but not change the model repository; use an admin key "
            "(IIS_ADMIN_API_KEYS)"
            if self.admin_keys
            else "the model repository cannot be changed: no admin key is configured "
            "(IIS_ADMIN_API_KEYS)"
        )
        await send_error(scope, send, 403, "forbidden", message)


_CHALLENGE = (b"www-authenticate", b'Bearer realm="image-inference-service"')


class LeaseMiddleware(HttpMiddleware):
    """Gives each request a list in which ModelRegistry.get records the model runtimes it
    uses, and releases them once the response is sent: a replaced model version is closed only
    after the last request holding it has finished."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: list[ModelRuntime] = []
        token = request_leases.set(held)
        try:
            await self.app(scope, receive, send)
        finally:
            request_leases.reset(token)
            for runtime in held:
                runtime.release()
