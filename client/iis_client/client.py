"""Typed Python client for the service, sync (`Client`) and async (`AsyncClient`).

    from iis_client import Client

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
import types
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Concatenate, Generic, ParamSpec, TypeVar, get_args, overload

import httpx2
from pydantic import BaseModel
from typing_extensions import Unpack

from iis_client.params import (
    ClassifyParams,
    DetectParams,
    EmbedFacesParams,
    SegmentParams,
    VerifyFacesParams,
)
from iis_client.schemas import (
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
Http = TypeVar("Http", httpx2.Client, httpx2.AsyncClient)
Sleep = TypeVar("Sleep", Callable[[float], None], Callable[[float], Awaitable[None]])
DEFAULT_URL = "http://127.0.0.1:8000"
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


def _params(values: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
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


@dataclass(frozen=True)
class Route(Generic[Answer]):
    """One endpoint: HTTP method, path, the model it answers with, its query parameters (an
    `iis_client.params` TypedDict, or None) and its form's file fields."""

    method: str
    path: str
    answer: type[Answer]
    params: Any = None
    files: tuple[str, ...] = ("image",)
    probe: bool = False

    def request(self, *images: ImageSource, **params: Any) -> Request[Answer]:
        known = self.params.__optional_keys__ if self.params else frozenset()
        if unknown := sorted(set(params) - known):
            raise TypeError(f"{self.path} takes no parameter {', '.join(unknown)}")
        pairs = zip(self.files, images, strict=True)
        files = {field: read_image(image, field) for field, image in pairs}
        call = Call(self.method, self.path, _params(params), files or None)
        return Request(call, self.answer, self.probe)


class Endpoints:
    """Every endpoint once: its signature (the query parameters are `iis_client.params`), the
    request it sends, the model it answers with. `Client` and `AsyncClient` turn each into a
    method that sends and parses."""

    @staticmethod
    def classify(image: ImageSource, **params: Unpack[ClassifyParams]) -> Request[ClassifyResponse]:
        """Top-k classes for one image."""
        return Route("POST", "/classify", ClassifyResponse, ClassifyParams).request(image, **params)

    @staticmethod
    def detect(image: ImageSource, **params: Unpack[DetectParams]) -> Request[DetectResponse]:
        """Objects in one image: labelled boxes in original pixels, best first."""
        return Route("POST", "/detect", DetectResponse, DetectParams).request(image, **params)

    @staticmethod
    def segment(image: ImageSource, **params: Unpack[SegmentParams]) -> Request[SegmentResponse]:
        """Object instances in one image: labelled boxes and masks, best first."""
        return Route("POST", "/segment", SegmentResponse, SegmentParams).request(image, **params)

    @staticmethod
    def verify_faces(
        image_a: ImageSource, image_b: ImageSource, **params: Unpack[VerifyFacesParams]
    ) -> Request[VerifyFacesResponse]:
        """Do the largest faces of two photos belong to the same person?"""
        files = ("image_a", "image_b")
        route = Route("POST", "/verify-faces", VerifyFacesResponse, VerifyFacesParams, files)
        return route.request(image_a, image_b, **params)

    @staticmethod
    def embed_faces(
        image: ImageSource, **params: Unpack[EmbedFacesParams]
    ) -> Request[FaceEmbedResponse]:
        """Every face in one photo with its box, landmarks and L2-normalised embedding."""
        return Route("POST", "/faces/embed", FaceEmbedResponse, EmbedFacesParams).request(
            image, **params
        )

    @staticmethod
    def models() -> Request[ModelsResponse]:
        """The models the server has loaded, its defaults and its runtime."""
        return Route("GET", "/v1/models", ModelsResponse, files=()).request()

    @staticmethod
    def ready() -> Request[ReadyResponse]:
        """/readyz without retrying: 503 (still loading) is an answer here, not an error."""
        return Route("GET", "/readyz", ReadyResponse, files=(), probe=True).request()


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


class _Endpoint(Generic[P, Answer]):
    """An endpoint as a method of both clients: the class it is read from turns it into its
    kind of method (`_as_method`: blocking on `Client`, a coroutine on `AsyncClient`), once."""

    def __init__(self, endpoint: Callable[P, Request[Answer]]) -> None:
        self.endpoint = endpoint
        self.methods: dict[type, Callable[..., Any]] = {}

    @overload
    def __get__(self, client: None, owner: type[Any]) -> Callable[..., Any]: ...
    @overload
    def __get__(self, client: Client, owner: type[Any]) -> Callable[P, Answer]: ...
    @overload
    def __get__(
        self, client: AsyncClient, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, Answer]]: ...
    def __get__(self, client: object, owner: type[Any]) -> Callable[..., Any]:
        if owner not in self.methods:
            self.methods[owner] = owner._as_method(self.endpoint)
        method = self.methods[owner]
        return method if client is None else types.MethodType(method, client)


class _Session(Generic[Http, Sleep]):
    """What both clients hold: the transport, the API key and the retry policy. `http` may be
    any transport of the client's kind (e.g. FastAPI's TestClient for `Client`); then
    `base_url` and `timeout` are ignored and the caller closes it."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        http: Http | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        self.api_key = api_key
        self.retry = retry or RetryPolicy()
        self._own = http is None
        self.http: Http = http if http is not None else self._open(base_url, timeout)
        self._sleep: Sleep = sleep if sleep is not None else self._nap()

    def _open(self, base_url: str, timeout: float) -> Http:
        raise NotImplementedError

    def _nap(self) -> Sleep:
        raise NotImplementedError

    classify = _Endpoint(Endpoints.classify)
    detect = _Endpoint(Endpoints.detect)
    segment = _Endpoint(Endpoints.segment)
    verify_faces = _Endpoint(Endpoints.verify_faces)
    embed_faces = _Endpoint(Endpoints.embed_faces)
    models = _Endpoint(Endpoints.models)
    ready = _Endpoint(Endpoints.ready)


class Client(_Session[httpx2.Client, Callable[[float], None]]):
    """Blocking client (`sleep` defaults to time.sleep)."""

    def _open(self, base_url: str, timeout: float) -> httpx2.Client:
        return httpx2.Client(base_url=base_url, timeout=timeout)

    def _nap(self) -> Callable[[float], None]:
        return time.sleep

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

    _as_method = staticmethod(_blocking)


class AsyncClient(_Session[httpx2.AsyncClient, Callable[[float], Awaitable[None]]]):
    """The same API as `Client`, awaitable (`sleep` defaults to asyncio.sleep); use one per
    event loop."""

    def _open(self, base_url: str, timeout: float) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(base_url=base_url, timeout=timeout)

    def _nap(self) -> Callable[[float], Awaitable[None]]:
        return asyncio.sleep

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

    _as_method = staticmethod(_awaitable)
