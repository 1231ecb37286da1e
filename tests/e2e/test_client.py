"""iis_client.client: typed answers, error mapping, retries on 429/503 after Retry-After, the API
key header; sync over the app in-process, async over a real socket."""

from __future__ import annotations

import asyncio
import inspect
from datetime import datetime, timezone
from pathlib import Path

import httpx2 as httpx
import pytest

from iis_client.client import ApiError, AsyncClient, Client, RetryPolicy, retry_after_seconds
from iis_client.schemas import ClassifyResponse
from tests.support.app import serve
from tests.support.images import encode, noise_image

OK_BODY = {
    "model": "m",
    "predictions": [{"label": "cat", "class_id": 1, "score": 0.9}],
    "image": {"width": 4, "height": 3},
    "timing_ms": {"total": 1.0},
}


def error_body(code: str, message: str = "busy") -> dict[str, object]:
    return {"error": {"code": code, "message": message, "request_id": "rid-1"}}


class Script:
    """A MockTransport handler answering from a list, recording each request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def scripted(*answers: httpx.Response | Exception, **kwargs) -> tuple[Client, Script, list]:
    script, sleeps = Script(*answers), []
    http = httpx.Client(transport=httpx.MockTransport(script), base_url="http://iis")
    return Client(http=http, sleep=sleeps.append, **kwargs), script, sleeps


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 0 ", 0.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),  # an HTTP date 10 s after "now"
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: go now
        ("soon", None),
        ("-5", None),
    ],
)
def test_retry_after_header(header, seconds):
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=timezone.utc)
    assert retry_after_seconds(header, now) == seconds


REFUSED = httpx.ConnectError("connection refused")


@pytest.mark.parametrize(
    ("attempt", "outcome", "wait"),
    [
        (0, httpx.Response(200), None),
        (0, httpx.Response(400), None),
        (0, httpx.Response(500), None),
        (0, httpx.Response(429), 0.5),
        (2, httpx.Response(503), 2.0),  # no Retry-After: backoff doubles per attempt
        (0, httpx.Response(503, headers={"Retry-After": "4"}), 4.0),
        (0, httpx.Response(503, headers={"Retry-After": "99"}), 10.0),  # capped
        (3, httpx.Response(503, headers={"Retry-After": "1"}), None),  # retries spent
        (1, REFUSED, 1.0),
        (3, REFUSED, None),
        (0, httpx.ReadTimeout("slow"), None),  # the server may have run it: not resent
    ],
)
def test_retry_policy_decides_from_the_outcome(attempt, outcome, wait):
    policy = RetryPolicy(retries=3, backoff_s=0.5, max_wait_s=10)
    assert policy.wait(attempt, outcome) == wait


def test_sync_and_async_clients_have_the_same_methods():
    for name in ["classify", "detect", "segment", "verify_faces", "embed_faces", "models", "ready"]:
        sync, awaitable = getattr(Client, name), getattr(AsyncClient, name)
        assert inspect.signature(sync) == inspect.signature(awaitable)
        assert inspect.iscoroutinefunction(awaitable) and not inspect.iscoroutinefunction(sync)
    assert "image" in inspect.signature(Client.classify).parameters


def test_ready_is_asked_once_and_a_503_is_an_answer():
    loading = {"status": "loading", "models": {"m": False}}
    client, script, sleeps = scripted(httpx.Response(503, json=loading))
    answer = client.ready()
    assert (answer.status, answer.models) == ("loading", {"m": False})
    assert sleeps == [] and [r.url.path for r in script.requests] == ["/readyz"]


def test_429_and_503_are_retried_after_the_servers_retry_after():
    client, script, sleeps = scripted(
        httpx.Response(429, headers={"Retry-After": "2"}, json=error_body("overloaded")),
        httpx.Response(503, headers={"Retry-After": "0"}, json=error_body("model_unavailable")),
        httpx.Response(200, json=OK_BODY),
    )
    answer = client.classify(b"jpeg bytes", top_k=1)
    assert isinstance(answer, ClassifyResponse) and answer.predictions[0].label == "cat"
    assert sleeps == [2.0, 0.0] and len(script.requests) == 3
    # every retry sends the whole request again, image and query included
    assert all(b"jpeg bytes" in r.content for r in script.requests)
    assert {str(r.url) for r in script.requests} == {"http://iis/classify?top_k=1"}


def test_retries_give_up_with_the_last_error():
    client, script, sleeps = scripted(
        *[httpx.Response(503, headers={"Retry-After": "1"}, json=error_body("model_unavailable",
                                                                            "model x loading"))
          for _ in range(3)],
        retry=RetryPolicy(retries=2),
    )  # fmt: skip
    with pytest.raises(ApiError) as caught:
        client.classify(b"x")
    err = caught.value
    assert (err.status, err.code, err.message) == (503, "model_unavailable", "model x loading")
    assert err.request_id == "rid-1" and err.retry_after == 1.0
    assert sleeps == [1.0, 1.0] and len(script.requests) == 3


def test_backoff_without_retry_after_and_the_wait_cap():
    client, _, sleeps = scripted(
        httpx.Response(429, json=error_body("overloaded")),
        httpx.Response(429, json=error_body("overloaded")),
        httpx.Response(503, headers={"Retry-After": "3600"}, json=error_body("x")),
        httpx.Response(200, json=OK_BODY),
        retry=RetryPolicy(retries=3, backoff_s=0.25, max_wait_s=7),
    )
    client.classify(b"x")
    assert sleeps == [0.25, 0.5, 7.0]


def test_client_errors_are_not_retried():
    client, script, sleeps = scripted(
        httpx.Response(400, json=error_body("invalid_image", "not a decodable image")),
    )
    with pytest.raises(ApiError, match="400 invalid_image: not a decodable image"):
        client.classify(b"x")
    assert sleeps == [] and len(script.requests) == 1


def test_a_refused_connection_is_retried_then_raised():
    refused = httpx.ConnectError("connection refused")
    client, script, sleeps = scripted(refused, httpx.Response(200, json=OK_BODY))
    assert client.classify(b"x").model == "m" and sleeps == [0.5]
    client, script, sleeps = scripted(refused, refused, retry=RetryPolicy(retries=1))
    with pytest.raises(httpx.ConnectError):
        client.classify(b"x")
    assert len(script.requests) == 2


def test_a_non_service_error_body_still_raises_api_error():
    client, _, _ = scripted(httpx.Response(502, text="<html>bad gateway</html>"))
    with pytest.raises(ApiError) as caught:
        client.classify(b"x")
    assert caught.value.code == "http_502" and "bad gateway" in caught.value.message


def test_query_parameters_key_header_and_files(tmp_path: Path):
    detect_body = {"model": "d", "detections": [], "image": {"width": 1, "height": 1},
                   "timing_ms": {}}  # fmt: skip
    client, script, _ = scripted(httpx.Response(200, json=detect_body), api_key="s3cret")
    photo = tmp_path / "street.jpg"
    photo.write_bytes(b"\xff\xd8 jpeg")
    client.detect(photo, score_threshold=0.3, classes=["dog", "7"])
    (request,) = script.requests
    assert request.url.path == "/detect"
    assert request.url.params.multi_items() == [
        ("score_threshold", "0.3"),
        ("classes", "dog"),
        ("classes", "7"),
    ]  # fmt: skip  (None options are left to the server's defaults)
    assert request.headers["x-api-key"] == "s3cret"
    assert b'name="image"; filename="street.jpg"' in request.content
    assert b"\xff\xd8 jpeg" in request.content


def test_tiling_parameters_reach_the_query(tmp_path: Path):
    body = {"model": "s", "instances": [], "image": {"width": 1, "height": 1}, "timing_ms": {},
            "tiling": {"mode": "on", "tiles": 4, "tile_size": 416, "overlap": 0.2}}  # fmt: skip
    client, script, _ = scripted(httpx.Response(200, json=body))
    photo = tmp_path / "beach.jpg"
    photo.write_bytes(b"\xff\xd8 jpeg")
    answer = client.segment(photo, tiling="on", tile_size=416, tile_overlap=0.2, max_tiles=8)
    (request,) = script.requests
    assert request.url.params.multi_items() == [
        ("tiling", "on"), ("tile_size", "416"), ("tile_overlap", "0.2"), ("max_tiles", "8"),
    ]  # fmt: skip
    assert answer.tiling is not None and answer.tiling.tiles == 4


def test_against_the_app(tiny_classifier_dir: Path):
    """Through the real app in-process (its TestClient is an httpx2.Client)."""
    photo = encode(noise_image(64, 48, seed=2), "PNG")
    with serve(tiny_classifier_dir, api_keys=["k-9"]) as app:
        raw = app.post(
            "/classify?top_k=2", files={"image": ("a.png", photo)}, headers={"X-API-Key": "k-9"}
        ).json()
        with pytest.raises(ApiError) as caught:
            Client(http=app).classify(photo)
        assert (caught.value.status, caught.value.code) == (401, "unauthorized")
        iis = Client(http=app, api_key="k-9")
        answer = iis.classify(photo, top_k=2)
        assert set(answer.timing_ms) == set(raw.pop("timing_ms"))
        assert answer.model_dump(exclude={"timing_ms"}) == raw
        assert iis.models().defaults == {"classify": "tiny-cls"}
        assert iis.ready().status == "ready"
        with pytest.raises(ApiError) as caught:
            iis.classify(photo, model="nope")
        assert caught.value.code == "model_not_found" and caught.value.status == 404


def test_async_client_over_a_socket(tiny_server: str):
    photos = [encode(noise_image(64, 48, seed=s), "PNG") for s in range(6)]
    with Client(tiny_server) as iis:
        expected = [iis.classify(p, top_k=3) for p in photos]

    async def main() -> list[ClassifyResponse]:
        async with AsyncClient(tiny_server) as iis:
            assert (await iis.ready()).status == "ready"
            return await asyncio.gather(*(iis.classify(p, top_k=3) for p in photos))

    answers = asyncio.run(main())
    assert [a.predictions for a in answers] == [e.predictions for e in expected]


def test_async_client_retries_too():
    script, sleeps = (
        Script(
            httpx.Response(429, headers={"Retry-After": "1"}, json=error_body("overloaded")),
            httpx.Response(200, json=OK_BODY),
        ),
        [],
    )

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> ClassifyResponse:
        http = httpx.AsyncClient(transport=httpx.MockTransport(script), base_url="http://iis")
        async with AsyncClient(http=http, sleep=sleep, api_key="k") as iis:
            answer = await iis.classify(b"x")
        await http.aclose()
        return answer

    assert asyncio.run(main()).model == "m"
    assert sleeps == [1.0] and [r.headers["x-api-key"] for r in script.requests] == ["k", "k"]
