"""/classify and the service endpoints over a tiny exported model, through the real lifespan."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.cards import read_card
from service.images import DecodedImage
from service.tasks.classify import postprocess, preprocess
from tests.support.images import encode, noise_image


def expected_top(tiny_classifier_dir, img: Image.Image) -> tuple[list[int], np.ndarray]:
    """The answer computed without the service: card preprocess + a bare session + softmax."""
    loaded = read_card(tiny_classifier_dir / "tiny-cls")
    pixels = np.asarray(img.convert("RGB"))
    decoded = DecodedImage(pixels, pixels.shape[1], pixels.shape[0], "PNG")
    session = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": preprocess([decoded], loaded.card)})
    (pred,) = postprocess(logits, 3, "softmax")
    return pred.class_id.tolist(), pred.score


def test_classify_matches_a_bare_session(classify_client: TestClient, tiny_classifier_dir):
    img = noise_image(80, 60, seed=3)
    r = classify_client.post(
        "/classify?top_k=3", files={"image": ("x.png", encode(img, "PNG"), "image/png")}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    ids, scores = expected_top(tiny_classifier_dir, img)
    assert body["model"] == "tiny-cls"
    assert [p["class_id"] for p in body["predictions"]] == ids
    assert [p["label"] for p in body["predictions"]] == [
        ["apple", "banana", "cherry"][i] for i in ids
    ]
    np.testing.assert_allclose([p["score"] for p in body["predictions"]], scores, rtol=1e-5)
    assert sum(p["score"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-5)
    assert body["image"] == {"width": 80, "height": 60}
    assert set(body["timing_ms"]) >= {"decode", "preprocess", "inference", "total"}
    assert r.headers["x-request-id"]


def post_image(client: TestClient, data: bytes, url: str = "/classify", field: str = "image"):
    return client.post(url, files={field: ("upload", data, "application/octet-stream")})


def assert_error(response, status: int, code: str, words: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert words in body["error"]["message"]
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "/work/" not in response.text


@pytest.mark.parametrize(
    ("url", "kwargs", "status", "code", "words"),
    [
        ("/classify", {"data": {"image": "not a file"}}, 400, "invalid_request", "file upload"),
        (
            "/classify",
            {"files": {"photo": ("a.png", b"x")}},
            400,
            "invalid_request",
            "'image' is required",
        ),
        ("/classify", {}, 400, "invalid_request", "'image' is required"),
        (
            "/classify",
            {"files": {"image": ("a.txt", b"just text")}},
            400,
            "invalid_image",
            "not a decodable image",
        ),
        (
            "/classify",
            {"files": {"image": ("a.svg", b"<svg></svg>")}},
            415,
            "unsupported_media_type",
            "SVG",
        ),
        (
            "/classify",
            {"files": {"image": ("a.pdf", b"%PDF-1.4 ...")}},
            415,
            "unsupported_media_type",
            "PDF",
        ),
        ("/classify?top_k=0", {}, 422, "invalid_parameter", "top_k"),
        ("/classify?top_k=101", {}, 422, "invalid_parameter", "top_k"),
        ("/classify?top_k=abc", {}, 422, "invalid_parameter", "top_k"),
        ("/classify?model=nope", {}, 404, "model_not_found", "available: tiny-cls"),
    ],
)
def test_client_errors_have_one_shape(classify_client, url, kwargs, status, code, words):
    if "files" not in kwargs and "data" not in kwargs and status != 400:
        kwargs = {"files": {"image": ("a.png", encode(noise_image(), "PNG"))}}
    assert_error(classify_client.post(url, **kwargs), status, code, words)
    # and the server keeps serving
    ok = post_image(classify_client, encode(noise_image(), "PNG"))
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 3


def test_byte_limit_is_413(tiny_classifier_dir):
    from tests.support.app import serve

    with serve(tiny_classifier_dir, max_upload_bytes=10_000) as client:
        big = encode(noise_image(200, 200), "PNG")
        assert len(big) > 10_000
        assert_error(post_image(client, big), 413, "payload_too_large", "10000-byte")
        assert post_image(client, encode(noise_image(20, 20), "PNG")).status_code == 200


def test_pixel_limit_is_413(tiny_classifier_dir):
    from tests.support.app import serve

    with serve(tiny_classifier_dir, max_pixels=1000) as client:
        assert_error(
            post_image(client, encode(noise_image(40, 30), "PNG")), 413, "image_too_large", "40x30"
        )
        assert post_image(client, encode(noise_image(30, 30), "PNG")).status_code == 200


def test_top_k_is_capped_by_class_count(classify_client):
    r = classify_client.post(
        "/classify?top_k=100", files={"image": ("a.png", encode(noise_image(), "PNG"))}
    )
    assert sorted(p["class_id"] for p in r.json()["predictions"]) == [0, 1, 2]


def test_health_ready_and_models(classify_client):
    assert classify_client.get("/healthz").json() == {"status": "ok"}
    ready = classify_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"] == {"tiny-cls": True}
    info = classify_client.get("/v1/models").json()
    assert info["defaults"] == {"classify": "tiny-cls"}
    (model,) = info["models"]
    assert model["card"]["labels"] == ["apple", "banana", "cherry"]
    assert model["providers"]["active"][-1] == "CPUExecutionProvider"
    assert model["providers"]["requested"][-1] == "CPUExecutionProvider"
    assert model["ready"] is True and model["batching"]["max_batch"] >= 1
    assert info["runtime"]["intra_op_threads"] == 1


def test_readyz_is_503_without_models(tmp_path):
    from tests.support.app import serve

    with serve(tmp_path) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert_error(
            post_image(client, encode(noise_image(), "PNG")),
            404,
            "model_not_found",
            "no classify model",
        )


def test_a_broken_model_is_reported_and_the_rest_serve(tiny_classifier_dir, tmp_path):
    import shutil

    from tests.support.app import serve

    shutil.copytree(tiny_classifier_dir / "tiny-cls", tmp_path / "tiny-cls")
    shutil.copytree(tiny_classifier_dir / "tiny-cls", tmp_path / "broken")
    card = (tmp_path / "broken" / "model.json").read_text().replace('"tiny-cls"', '"broken"')
    (tmp_path / "broken" / "model.json").write_text(card)
    (tmp_path / "broken" / "model.onnx").write_bytes(b"not onnx")
    with serve(tmp_path, default_models=["tiny-cls"]) as client:
        assert client.get("/readyz").status_code == 200
        failed = client.get("/v1/models").json()["failed"]
        assert "model.onnx: onnxruntime cannot load it" in failed["broken@1"]
        # the client's request is fine; the model is not: 409, never a 5xx
        assert_error(
            client.post(
                "/classify?model=broken", files={"image": ("a.png", encode(noise_image(), "PNG"))}
            ),
            409,
            "model_failed",
            "failed to load",
        )


def test_unknown_route_and_method_use_the_error_shape(classify_client):
    assert_error(classify_client.get("/nope"), 404, "not_found")
    assert_error(classify_client.get("/classify"), 405, "method_not_allowed")


def test_client_request_id_is_echoed(classify_client):
    r = classify_client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = classify_client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces"


def test_metrics_count_requests_errors_and_batches(classify_client):
    from prometheus_client.parser import text_string_to_metric_families

    image = {"image": ("a.png", encode(noise_image(), "PNG"))}
    for _ in range(3):
        assert classify_client.post("/classify", files=image).status_code == 200
    classify_client.post("/classify", files={"image": ("a.txt", b"text")})
    classify_client.get("/no/such/path")
    text = classify_client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("iis_requests_total", (("endpoint", "/classify"), ("status", "200")))] == 3
    assert samples[("iis_requests_total", (("endpoint", "/classify"), ("status", "400")))] == 1
    assert samples[("iis_requests_total", (("endpoint", "unmatched"), ("status", "404")))] == 1
    assert samples[("iis_errors_total", (("code", "invalid_image"),))] == 1
    assert samples[("iis_batch_size_count", (("model", "tiny-cls"),))] >= 3
    assert samples[("iis_queue_depth", (("model", "tiny-cls"),))] == 0
    info = [k for k in samples if k[0] == "iis_model_info"]
    assert info == [
        (
            "iis_model_info",
            (("model", "tiny-cls"), ("provider", "CPUExecutionProvider"), ("task", "classify")),
        )
    ]


def test_docs_work_offline(classify_client):
    page = classify_client.get("/docs")
    assert page.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower()
    js = classify_client.get("/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert classify_client.get("/docs/assets/swagger-ui.css").status_code == 200
    assert classify_client.get("/openapi.json").json()["paths"]["/classify"]["post"]
