"""Property-based fuzzing of every operation in /openapi.json with schemathesis: whatever it
generates (random bodies, files, query values), the service never answers 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.app import serve

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def fuzz_client(all_models):
    with serve(all_models) as client:
        yield client


def test_no_server_errors(fuzz_client):
    # from_dict, not from_asgi: from_asgi runs the app's lifespan a second time, and its shutdown
    # leaves app.state pointing at a closed registry, so no request would reach a model
    schema = schemathesis.openapi.from_dict(fuzz_client.get("/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    seen: dict[str, list[int]] = {}
    assert {op.path for op in operations} >= {"/classify", "/detect", "/segment", "/verify-faces"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_5xx(case):  # type: ignore[no-untyped-def]
            response = fuzz_client.request(**case.as_transport_kwargs())
            seen.setdefault(case.path, []).append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.text[:500])
            if response.status_code >= 400 and case.path != "/readyz":
                body = response.json()
                if case.path.startswith("/v2/"):  # the Open Inference Protocol's error shape
                    assert isinstance(body["error"], str) and body["error"], body
                    assert body["code"] and body["request_id"], body
                else:
                    assert set(body) == {"error"}, body
                    assert body["error"]["code"] and body["error"]["request_id"]

        no_5xx()
    # the fuzzer really reached the handlers: every upload endpoint answered in several ways
    for path in ("/classify", "/detect", "/segment", "/verify-faces"):
        assert len(set(seen[path])) >= 2, (path, seen[path])
