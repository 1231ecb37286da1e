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
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

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
RETRIED_STATUSES = frozenset({429, 503})


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


@dataclass(frozen=True)
class Call:
    """One request, built the same way for both clients."""

    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    files: dict[str, tuple[str, bytes]] | None = None


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


class Calls:
    """Request builders for every endpoint (shared by Client and AsyncClient)."""

    @staticmethod
    def classify(image: ImageSource, top_k: int | None, model: str | None) -> Call:
        return Call(
            "POST", "/classify", _params(top_k=top_k, model=model), {"image": read_image(image)}
        )

    @staticmethod
    def detect(image: ImageSource, **options: Any) -> Call:
        return Call("POST", "/detect", _params(**options), {"image": read_image(image)})

    @staticmethod
    def segment(image: ImageSource, **options: Any) -> Call:
        return Call("POST", "/segment", _params(**options), {"image": read_image(image)})

    @staticmethod
    def verify_faces(a: ImageSource, b: ImageSource, **options: Any) -> Call:
        files = {"image_a": read_image(a, "a"), "image_b": read_image(b, "b")}
        return Call("POST", "/verify-faces", _params(**options), files)

    @staticmethod
    def embed_faces(image: ImageSource, **options: Any) -> Call:
        return Call("POST", "/faces/embed", _params(**options), {"image": read_image(image)})


def _parse(response: httpx2.Response, answer: type[Answer]) -> Answer:
    if response.status_code >= 400:
        raise ApiError.from_response(response)
    return answer.model_validate_json(response.content)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


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

    def send(self, call: Call) -> httpx2.Response:
        """Send, retrying 429/503 and refused connections; returns the last response."""
        for attempt in range(self.retry.retries + 1):
            last = attempt == self.retry.retries
            try:
                response = self.http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    files=call.files,
                    headers=_headers(self.api_key),
                )
            except (httpx2.ConnectError, httpx2.ConnectTimeout):
                if last:
                    raise
                self._sleep(self.retry.delay(attempt, None))
                continue
            if response.status_code not in RETRIED_STATUSES or last:
                return response
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            self._sleep(self.retry.delay(attempt, retry_after))
        raise AssertionError("unreachable")

    def classify(
        self, image: ImageSource, *, top_k: int | None = None, model: str | None = None
    ) -> ClassifyResponse:
        return _parse(self.send(Calls.classify(image, top_k, model)), ClassifyResponse)

    def detect(
        self,
        image: ImageSource,
        *,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        model: str | None = None,
    ) -> DetectResponse:
        call = Calls.detect(
            image,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
            classes=classes,
            model=model,
        )
        return _parse(self.send(call), DetectResponse)

    def segment(
        self,
        image: ImageSource,
        *,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_threshold: float | None = None,
        mask_format: Literal["rle", "polygon", "png"] | None = None,
        model: str | None = None,
    ) -> SegmentResponse:
        call = Calls.segment(
            image,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
            classes=classes,
            mask_threshold=mask_threshold,
            mask_format=mask_format,
            model=model,
        )
        return _parse(self.send(call), SegmentResponse)

    def verify_faces(
        self,
        image_a: ImageSource,
        image_b: ImageSource,
        *,
        threshold: float | None = None,
        metric: Literal["cosine", "euclidean"] | None = None,
        model: str | None = None,
        detector: str | None = None,
    ) -> VerifyFacesResponse:
        call = Calls.verify_faces(
            image_a, image_b, threshold=threshold, metric=metric, model=model, detector=detector
        )
        return _parse(self.send(call), VerifyFacesResponse)

    def embed_faces(
        self,
        image: ImageSource,
        *,
        score_threshold: float | None = None,
        max_faces: int | None = None,
        model: str | None = None,
        detector: str | None = None,
    ) -> FaceEmbedResponse:
        call = Calls.embed_faces(
            image,
            score_threshold=score_threshold,
            max_faces=max_faces,
            model=model,
            detector=detector,
        )
        return _parse(self.send(call), FaceEmbedResponse)

    def models(self) -> ModelsResponse:
        return _parse(self.send(Call("GET", "/v1/models")), ModelsResponse)

    def ready(self) -> ReadyResponse:
        """/readyz without retrying: 503 (still loading) is an answer here, not an error."""
        response = self.http.get("/readyz", headers=_headers(self.api_key))
        return ReadyResponse.model_validate_json(response.content)


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

    async def send(self, call: Call) -> httpx2.Response:
        for attempt in range(self.retry.retries + 1):
            last = attempt == self.retry.retries
            try:
                response = await self.http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    files=call.files,
                    headers=_headers(self.api_key),
                )
            except (httpx2.ConnectError, httpx2.ConnectTimeout):
                if last:
                    raise
                await self._sleep(self.retry.delay(attempt, None))
                continue
            if response.status_code not in RETRIED_STATUSES or last:
                return response
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            await self._sleep(self.retry.delay(attempt, retry_after))
        raise AssertionError("unreachable")

    async def classify(
        self, image: ImageSource, *, top_k: int | None = None, model: str | None = None
    ) -> ClassifyResponse:
        return _parse(await self.send(Calls.classify(image, top_k, model)), ClassifyResponse)

    async def detect(
        self,
        image: ImageSource,
        *,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        model: str | None = None,
    ) -> DetectResponse:
        call = Calls.detect(
            image,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
            classes=classes,
            model=model,
        )
        return _parse(await self.send(call), DetectResponse)

    async def segment(
        self,
        image: ImageSource,
        *,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_threshold: float | None = None,
        mask_format: Literal["rle", "polygon", "png"] | None = None,
        model: str | None = None,
    ) -> SegmentResponse:
        call = Calls.segment(
            image,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
            classes=classes,
            mask_threshold=mask_threshold,
            mask_format=mask_format,
            model=model,
        )
        return _parse(await self.send(call), SegmentResponse)

    async def verify_faces(
        self,
        image_a: ImageSource,
        image_b: ImageSource,
        *,
        threshold: float | None = None,
        metric: Literal["cosine", "euclidean"] | None = None,
        model: str | None = None,
        detector: str | None = None,
    ) -> VerifyFacesResponse:
        call = Calls.verify_faces(
            image_a, image_b, threshold=threshold, metric=metric, model=model, detector=detector
        )
        return _parse(await self.send(call), VerifyFacesResponse)

    async def embed_faces(
        self,
        image: ImageSource,
        *,
        score_threshold: float | None = None,
        max_faces: int | None = None,
        model: str | None = None,
        detector: str | None = None,
    ) -> FaceEmbedResponse:
        call = Calls.embed_faces(
            image,
            score_threshold=score_threshold,
            max_faces=max_faces,
            model=model,
            detector=detector,
        )
        return _parse(await self.send(call), FaceEmbedResponse)

    async def models(self) -> ModelsResponse:
        return _parse(await self.send(Call("GET", "/v1/models")), ModelsResponse)

    async def ready(self) -> ReadyResponse:
        response = await self.http.get("/readyz", headers=_headers(self.api_key))
        return ReadyResponse.model_validate_json(response.content)
