"""API keys, CORS, request deadlines."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batching import MicroBatcher
from service.errors import DeadlineExceeded
from tests.support.app import serve
from tests.support.batching import RecordingModel
from tests.support.images import encode, noise_image

KEYS = ["k-one-0123456789", "k-two-abcdefghij"]


def classify(client, **headers):
    return client.post(
        "/classify", headers=headers, files={"image": ("a.png", encode(noise_image(), "PNG"))}
    )


@pytest.fixture
def keyed_client(tiny_classifier_dir, tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# rotated monthly\n{KEYS[1]}\n")
    with serve(tiny_classifier_dir, api_keys=[KEYS[0]], api_keys_file=key_file) as client:
        yield client


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-API-Key": "wrong"}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Basic {KEYS[0]}"}, 401),
        ({"X-API-Key": KEYS[0]}, 200),
        ({"Authorization": f"Bearer {KEYS[0]}"}, 200),
        ({"X-API-Key": KEYS[1]}, 200),  # from the key file
    ],
)
def test_api_keys(keyed_client, headers, status):
    r = classify(keyed_client, **headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert KEYS[0] not in r.text and KEYS[1] not in r.text
    else:
        assert len(r.json()["predictions"]) == 3


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json"])
def test_health_and_docs_stay_open(keyed_client, path):
    assert keyed_client.get(path).status_code == 200


def test_model_listing_needs_a_key(keyed_client):
    assert keyed_client.get("/v1/models").status_code == 401
    assert keyed_client.get("/v1/models", headers={"X-API-Key": KEYS[0]}).status_code == 200


def test_keys_are_never_logged(tiny_classifier_dir, caplog):
    with serve(tiny_classifier_dir, api_keys=KEYS) as client:
        classify(client, **{"X-API-Key": "guess-" + KEYS[0]})
        classify(client, **{"X-API-Key": KEYS[0]})
    assert KEYS[0] not in caplog.text


def test_cors_off_by_default(classify_client):
    r = classify_client.options(
        "/classify",
        headers={"Origin": "https://example.com", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_configured_origins_only(tiny_classifier_dir):
    with serve(
        tiny_classifier_dir, cors_origins=["https://app.example.com"], api_keys=KEYS
    ) as client:
        pre = client.options(
            "/classify",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "X-API-Key",
            },
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
        other = client.options(
            "/classify",
            headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"},
        )
        assert other.headers.get("access-control-allow-origin") != "https://evil.example.net"


def test_deadline_drops_the_request_and_frees_its_slot():
    async def scenario() -> None:
        model = RecordingModel(delay=0.3)
        batcher = MicroBatcher(model, name="slow", max_batch=1, max_wait_ms=0, max_queue=4)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(np.zeros((1, 1, 1), np.float32), 5.0))
        await asyncio.sleep(0.05)  # `first` is running now; the next one waits behind it
        with pytest.raises(DeadlineExceeded, match="within 0.05 s") as info:
            await batcher.submit(np.zeros((1, 1, 1), np.float32), 0.05)
        assert info.value.status_code == 503 and info.value.headers["Retry-After"]
        await first
        await batcher.close()
        assert model.batches == [1]  # the timed-out request never ran

    asyncio.run(scenario())
