"""Fuzzing the Open Inference Protocol routes against real (tiny) models: schemathesis bodies
from /openapi.json with the model name pinned to one that exists (tests/api/test_fuzz.py draws
random names, which stop at 404), and hypothesis-built requests that are nearly right, in
JSON and in the binary extension. Whatever arrives, the answer is never a 5xx, and every
refusal comes in the protocol's error shape."""

from __future__ import annotations

import base64
import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.oip import DATATYPES
from tests.support.app import serve
from tests.support.images import encode, noise_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MODELS = ("tiny-cls", "tiny-yolo")
PHOTO = encode(noise_image(40, 30, seed=1), "JPEG")
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_classifier_dir: Path, tiny_detector_dir: Path) -> Iterator:
    out = tmp_path_factory.mktemp("oip-fuzz")
    for name, source in (("tiny-cls", tiny_classifier_dir), ("tiny-yolo", tiny_detector_dir)):
        shutil.copytree(source / name, out / name)
    with serve(out, max_upload_bytes=200_000) as c:
        yield c


def check(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body["error"], str) and body["error"], body
        assert body["code"] and body["request_id"], body


def _fuzz_operation(client: TestClient, operation, model: str, statuses: set[int]) -> None:  # type: ignore[no-untyped-def]
    @given(case=operation.as_strategy())
    @FUZZ
    def no_5xx(case):  # type: ignore[no-untyped-def]
        case.path_parameters = {**(case.path_parameters or {}), "name": model}
        response = client.request(**case.as_transport_kwargs())
        statuses.add(response.status_code)
        check(response)

    no_5xx()


def test_schemathesis_bodies_on_real_models(client: TestClient) -> None:
    # from_dict, not from_asgi: schemathesis would start a second lifespan of the same app (and
    # end it after the test), leaving app.state pointing at a registry it has shut down
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    operations = [
        r.ok() for r in schema.get_all_operations() if r.ok().path.startswith("/v2/models/")
    ]
    assert len(operations) >= 6
    statuses: set[int] = set()
    for operation in operations:
        for model in MODELS:
            _fuzz_operation(client, operation, model, statuses)
    assert {200, 400} <= statuses, statuses  # the handlers were reached, both ways


def _data(datatype: str, count: int) -> st.SearchStrategy[list]:
    if datatype == "BYTES":
        return st.lists(st.text(max_size=8), min_size=count, max_size=count)
    if datatype == "BOOL":
        return st.lists(st.booleans(), min_size=count, max_size=count)
    element = (
        st.floats(allow_nan=False, width=16 if datatype == "FP16" else 32)
        if datatype.startswith("FP")
        else st.integers(0, 100)
    )
    return st.lists(element, min_size=count, max_size=count)


def _either(right: object, wrong: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the right value, sometimes one drawn from `wrong`."""
    return st.one_of(st.just(right), st.just(right), st.just(right), wrong)


@st.composite
def near_requests(draw, model: str) -> tuple[bytes, dict[str, str]]:  # type: ignore[no-untyped-def]
    """Requests a client could plausibly send to `model`: mostly right, each part sometimes
    wrong (name, datatype, shape, data, sizes cut short, outputs, parameters)."""
    image = draw(st.booleans())
    side = 32 if model == "tiny-cls" else 64
    rows = draw(st.integers(1, 3))
    right_name = "image" if image else ("input" if model == "tiny-cls" else "images")
    name = draw(_either(right_name, st.sampled_from(["input", "images", "image", "other"])))
    datatype = draw(_either("BYTES" if image else "FP32", st.sampled_from(list(DATATYPES))))
    right_shape = [rows] if image else [rows, 3, side, side]
    shape = draw(_either(right_shape, st.lists(st.integers(0, 4), min_size=1, max_size=4)))
    count = 1
    for d in shape:
        count *= d
    outputs = draw(
        st.one_of(
            st.none(),
            st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(["logits", "labels", "boxes", "counts", "x"]),
                        "parameters": st.fixed_dictionaries({"binary_data": st.booleans()}),
                    }
                ),
                max_size=2,
            ),
        )
    )
    parameters = draw(
        st.dictionaries(
            st.sampled_from(["top_k", "score_threshold", "max_detections", "binary_data_output"]),
            st.one_of(st.integers(-2, 200), st.floats(-1, 2), st.booleans(), st.text(max_size=3)),
            max_size=2,
        )
    )
    tensor: dict = {"name": name, "datatype": datatype, "shape": shape}
    request = {"inputs": [tensor], "parameters": parameters}
    if outputs is not None:
        request["outputs"] = outputs
    photos = [
        PHOTO if draw(_either(True, st.just(False))) else b"junk" for _ in range(min(count, 8))
    ]
    if not draw(st.booleans()):  # JSON
        if datatype == "BYTES" and count <= 8:
            tensor["data"] = [base64.b64encode(p).decode() for p in photos]
        elif count <= 64:
            tensor["data"] = draw(_data(datatype, count))
        else:
            tensor["data"] = [0.5] * draw(_either(count, st.integers(0, count + 1)))
        return json.dumps(request).encode(), {"content-type": "application/json"}
    if datatype == "BYTES":
        raw = b"".join(struct.pack("<I", len(p)) + p for p in photos)
    else:
        raw = bytes(count * DATATYPES[datatype].itemsize)
    raw = raw[: draw(_either(len(raw), st.integers(0, len(raw))))]  # sometimes cut short
    tensor["parameters"] = {"binary_data_size": len(raw)}
    head = json.dumps(request).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


@pytest.mark.parametrize("model", MODELS)
def test_near_misses_never_fail_the_server(client: TestClient, model: str) -> None:
    statuses: set[int] = set()

    @given(request=near_requests(model))
    @FUZZ
    def no_5xx(request):  # type: ignore[no-untyped-def]
        body, headers = request
        response = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
        statuses.add(response.status_code)
        check(response)

    no_5xx()
    assert 200 in statuses and len(statuses) >= 2, statuses
