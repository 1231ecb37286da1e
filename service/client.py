"""Typed Python client for the service, sync (`Client`) and async (`AsyncClient`).

    from service.client import Client

    with Client("http://127.0.0.1:8000", api_key="s3cret") as iis:
        top = iis.classify("cat.jpg", top_k=3).predictions[0]
        print(top.label, top.score)

Answers are the service's own pydantic models (`ClassifyResponse`, `DetectResponse`, ...).
An error answer raises `ApiError` with the body's code, message and request id. 429 (queue
full) and 503 (model loading or busy) are retried after the server's `Retry-After`, and a
refused connection with exponential backoff, up to `RetryPolicy.retries` times.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Concatenate, Generic, Literal, ParamSpec, TypeVar, get_args

import httpx2
from pydantic import BaseModel

from service.schemas import (
    ClassifyResponse,
    DetectResponse,
    FaceEmbedResponse,
    ModelsResponse,
    ReadyResponse,
    SegmentResponse,
    VerifyFacesResponse,
)

__all__ = ["ApiError", "AsyncClient", "Client", "ImageSource", "RetryPolicy"]

ImageSource = str | os.PathLike[str] | bytes | IO[bytes]
"""A file path, the encoded image bytes, or a binary file object."""

Answer = TypeVar("Answer", bound=BaseModel)
Sent = TypeVar("Sent")  # what the transport's request() returns: a Response, or its awaitable
Method = TypeVar("Method", bound=Callable[..., Any])
P = ParamSpec("P")
RETRIED_STATUSES = frozenset({429, 503})
RETRIED_ERRORS: tuple[type[Exception], ...] = (httpx2.ConnectError, httpx2.ConnectTimeout)


class ApiError(Exception):
    """An error answer: `status` is the HTTP status, `code` the body's error code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx2.Response) -> ApiError:
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
            request_id = error.get("request_id")
        except (ValueError, KeyError, TypeError):  # not the service's error shape (a proxy?)
            code, message = f"http_{response.status_code}", response.text[:200]
            request_id = None
        return cls(
            response.status_code,
            code,
            message,
            request_id or response.headers.get("x-request-id"),
            retry_after_seconds(response.headers.get("retry-after")),
        )


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds to wait: delta-seconds or an HTTP date; None if absent/bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait on 429/503 answers and refused connections."""

    retries: int = 3
    backoff_s: float = 0.5  # first wait when the server names none; doubles each time
    max_wait_s: float = 30.0  # never sleep longer than this, whatever Retry-After says

    def delay(self, attempt: int, retry_after: float | None) -> float:
        wait = retry_after if retry_after is not None else self.backoff_s * 2**attempt
        return min(max(wait, 0.0), self.max_wait_s)

    def wait(self, attempt: int, outcome: httpx2.Response | Exception) -> float | None:
        """Seconds to sleep before trying again after attempt `attempt` (from 0) ended in
        `outcome`; None when that outcome is final (returned or raised as it is)."""
        if attempt >= self.retries:
            return None
        if isinstance(outcome, Exception):
            return self.delay(attempt, None) if isinstance(outcome, RETRIED_ERRORS) else None
        if outcome.status_code not in RETRIED_STATUSES:
            return None
        return self.delay(attempt, retry_after_seconds(outcome.headers.get("retry-after")))


NO_RETRY = RetryPolicy(retries=0)


@dataclass(frozen=True)
class Call:
    """One request, built the same way for both clients."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    files: dict[str, tuple[str, bytes]] | None = None

    def via(self, request: Callable[..., Sent], api_key: str | None) -> Sent:
        """Hand the call to `httpx2.Client.request` or `httpx2.AsyncClient.request`."""
        headers = {"X-API-Key": api_key} if api_key else {}
        return request(
            self.method, self.path, params=self.params, files=self.files, headers=headers
        )


@dataclass(frozen=True)
class Request(Generic[Answer]):
    """A Call and how to read its response: the model it parses into. A `probe` is sent once
    and any status is an answer (/readyz: 503 means still loading, not an error)."""

    call: Call
    answer: type[Answer]
    probe: bool = False

    def retry(self, policy: RetryPolicy) -> RetryPolicy:
        return NO_RETRY if self.probe else policy

    def parse(self, response: httpx2.Response) -> Answer:
        if response.status_code >= 400 and not self.probe:
            raise ApiError.from_response(response)
        return self.answer.model_validate_json(response.content)


def _final(outcome: httpx2.Response | Exception) -> httpx2.Response:
    """The last attempt's response, or its error raised."""
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def read_image(image: ImageSource, default_name: str = "image") -> tuple[str, bytes]:
    """-> (file name for the form part, bytes)."""
    if isinstance(image, bytes):
        return default_name, image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        return path.name, path.read_bytes()
    name = getattr(image, "name", default_name)
    return Path(str(name)).name, image.read()


def _params(**values: Any) -> tuple[tuple[str, str], ...]:
    """Query parameters, leaving out None (the server's default then applies)."""
    out: list[tuple[str, str]] = []
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            out += [(name, str(v)) for v in value]
        else:
            out.append((name, str(value)))
    return tuple(out)


def _post(path: str, answer: type[Answer], image: ImageSource, **options: Any) -> Request[Answer]:
    return Request(Call("POST", path, _params(**options), {"image": read_image(image)}), answer)


class Endpoints:
    """Every endpoint once: its signature, the request it sends, the model it answers with.
    `Client` and `AsyncClient` turn each into a method that sends and parses."""

    @staticmethod
    def classify(
        image: ImageSource, *, top_k: int | None = None, model: str | None = None
    ) -> Request[ClassifyResponse]:
        return _post("/classify", ClassifyResponse, image, top_k=top_k, model=model)

    @staticmethod
    def detect(
        image: ImageSource,
        *,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        tiling: Literal["off", "on", "auto"] | None = None,
        tile_size: int | None = None,
        tile_overlap: float | None = None,
        max_tiles: int | None = None,
        model: str | None = None,
    ) -> Request[DetectResponse]:
        return _post(
            "/detect", DetectResponse, image, score_threshold=score_threshold,
            iou_threshold=iou_threshold, max_detections=max_detections, classes=classes,
            tiling=tiling, tile_size=tile_size, tile_overlap=tile_overlap, max_tiles=max_tiles,
            model=model,
        )  # fmt: skip

    @staticmethod
    def segment(
        image: ImageSource,
        *,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_threshold: float | None = None,
        mask_format: Literal["rle", "polygon", "png"] | None = None,
        tiling: Literal["off", "on", "auto"] | None = None,
        tile_size: int | None = None,
        tile_overlap: float | None = None,
        max_tiles: int | None = None,
        model: str | None = None,
    ) -> Request[SegmentResponse]:
        return _post(
            "/segment", SegmentResponse, image, score_threshold=score_threshold,
            iou_threshold=iou_threshold, max_detections=max_detections, classes=classes,
            mask_threshold=mask_threshold, mask_format=mask_format, tiling=tiling,
            tile_size=tile_size, tile_overlap=tile_overlap, max_tiles=max_tiles, model=model,
        )  # fmt: skip

    @staticmethod
    def verify_faces(
        image_a: ImageSource,
        image_b: ImageSource,
        *,
        threshold: float | None = None,
        metric: Literal["cosine", "euclidean"] | None = None,
        model: str | None = None,
        detector: str | None = None,
    ) -> Request[VerifyFacesResponse]:
        params = _params(threshold=threshold, metric=metric, model=model, detector=detector)
        files = {"image_a": read_image(image_a, "a"), "image_b": read_image(image_b, "b")}
        return Request(Call("POST", "/verify-faces", params, files), VerifyFacesResponse)

    @staticmethod
    def embed_faces(
        image: ImageSource,
        *,
        score_threshold: float | None = None,
        max_faces: int | None = None,
        model: str | None = None,
        detector: str | None = None,
    ) -> Request[FaceEmbedResponse]:
        return _post(
            "/faces/embed", FaceEmbedResponse, image, score_threshold=score_threshold,
            max_faces=max_faces, model=model, detector=detector,
        )  # fmt: skip

    @staticmethod
    def models() -> Request[ModelsResponse]:
        return Request(Call("GET", "/v1/models"), ModelsResponse)

    @staticmethod
    def ready() -> Request[ReadyResponse]:
        """/readyz without retrying: 503 (still loading) is an answer here, not an error."""
        return Request(Call("GET", "/readyz"), ReadyResponse, probe=True)


def _method(method: Method, endpoint: Callable[..., Any], owner: str) -> Method:
    """Give `method` the endpoint's name, docstring and signature (with `self`, returning the
    answer model) so that help() and editors show the real parameters."""
    signature = inspect.signature(endpoint, eval_str=True)
    (answer,) = get_args(signature.return_annotation)
    self_ = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    signature = signature.replace(
        parameters=[self_, *signature.parameters.values()], return_annotation=answer
    )
    for name, value in [
        ("__name__", endpoint.__name__),
        ("__qualname__", f"{owner}.{endpoint.__name__}"),
        ("__doc__", endpoint.__doc__),
        ("__signature__", signature),
    ]:
        setattr(method, name, value)
    return method


def _blocking(endpoint: Callable[P, Request[Answer]]) -> Callable[Concatenate[Client, P], Answer]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> Answer:
        return self._fetch(endpoint(*args, **kwargs))

    return _method(method, endpoint, "Client")


def _awaitable(
    endpoint: Callable[P, Request[Answer]],
) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, Answer]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> Answer:
        return await self._fetch(endpoint(*args, **kwargs))

    return _method(method, endpoint, "AsyncClient")


class Client:
    """Blocking client. `http` may be any httpx2.Client (e.g. FastAPI's TestClient); then
    `base_url` is ignored and the caller closes it."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        http: httpx2.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_key = api_key
        self.retry = retry or RetryPolicy()
        self._own = http is None
        self.http = http or httpx2.Client(base_url=base_url, timeout=timeout)
        self._sleep = sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.http.close()

    def send(self, call: Call, *, retry: RetryPolicy | None = None) -> httpx2.Response:
        """Send, retrying 429/503 and refused connections; returns the last response."""
        policy, attempt = retry or self.retry, 0
        while True:
            try:
                outcome: httpx2.Response | Exception = call.via(self.http.request, self.api_key)
            except RETRIED_ERRORS as error:
                outcome = error
            wait = policy.wait(attempt, outcome)
            if wait is None:
                return _final(outcome)
            self._sleep(wait)
            attempt += 1

    def _fetch(self, request: Request[Answer]) -> Answer:
        return request.parse(self.send(request.call, retry=request.retry(self.retry)))

    classify = _blocking(Endpoints.classify)
    detect = _blocking(Endpoints.detect)
    segment = _blocking(Endpoints.segment)
    verify_faces = _blocking(Endpoints.verify_faces)
    embed_faces = _blocking(Endpoints.embed_faces)
    models = _blocking(Endpoints.models)
    ready = _blocking(Endpoints.ready)


class AsyncClient:
    """The same API as `Client`, awaitable; use one per event loop."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        http: httpx2.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.api_key = api_key
        self.retry = retry or RetryPolicy()
        self._own = http is None
        self.http = http or httpx2.AsyncClient(base_url=base_url, timeout=timeout)
        self._sleep = sleep

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own:
            await self.http.aclose()

    async def send(self, call: Call, *, retry: RetryPolicy | None = None) -> httpx2.Response:
        policy, attempt = retry or self.retry, 0
        while True:
            try:
                outcome: httpx2.Response | Exception = await call.via(
                    self.http.request, self.api_key
                )
            except RETRIED_ERRORS as error:
                outcome = error
            wait = policy.wait(attempt, outcome)
            if wait is None:
                return _final(outcome)
            await self._sleep(wait)
            attempt += 1

    async def _fetch(self, request: Request[Answer]) -> Answer:
        return request.parse(await self.send(request.call, retry=request.retry(self.retry)))

    classify = _awaitable(Endpoints.classify)
    detect = _awaitable(Endpoints.detect)
    segment = _awaitable(Endpoints.segment)
    verify_faces = _awaitable(Endpoints.verify_faces)
    embed_faces = _awaitable(Endpoints.embed_faces)
    models = _awaitable(Endpoints.models)
    ready = _awaitable(Endpoints.ready)
