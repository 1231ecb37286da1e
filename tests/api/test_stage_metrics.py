"""iis_stage_duration_seconds: every timing_ms step of a successful request, by endpoint."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from service.timing import Timing, collect_reports
from tests.support.images import encode, noise_image

STAGES = ("decode", "preprocess", "queue", "inference", "postprocess")


def stage_counts(client: TestClient) -> dict[tuple[str, str], float]:
    text = client.get("/metrics").text
    pattern = r'^iis_stage_duration_seconds_count\{endpoint="([^"]+)",stage="([^"]+)"\} (\S+)$'
    return {(e, s): float(v) for e, s, v in re.findall(pattern, text, flags=re.MULTILINE)}


def test_classify_feeds_every_stage(classify_client: TestClient):
    r = classify_client.post("/classify", files={"image": ("a.png", encode(noise_image(), "PNG"))})
    assert r.status_code == 200, r.text
    counts = stage_counts(classify_client)
    for stage in STAGES:
        assert counts[("/classify", stage)] == 1.0, (stage, counts)
    assert set(r.json()["timing_ms"]) - {"total"} == {s for (_, s) in counts}
    # the total is the request histogram's job, not a stage
    assert ("/classify", "total") not in counts


def test_stage_sums_match_the_response(classify_client: TestClient):
    r = classify_client.post("/classify", files={"image": ("a.png", encode(noise_image(), "PNG"))})
    text = classify_client.get("/metrics").text
    pattern = r'^iis_stage_duration_seconds_sum\{endpoint="/classify",stage="inference"\} (\S+)$'
    (total_s,) = re.findall(pattern, text, flags=re.MULTILINE)
    assert abs(float(total_s) * 1000 - r.json()["timing_ms"]["inference"]) < 0.01


def test_failed_requests_feed_no_stages(classify_client: TestClient):
    r = classify_client.post("/classify", files={"image": ("a.txt", b"not an image")})
    assert r.status_code == 400
    assert stage_counts(classify_client) == {}
    r = classify_client.post("/classify", files={"image": ("a.png", encode(noise_image(), "PNG"))})
    assert r.status_code == 200
    assert stage_counts(classify_client)[("/classify", "decode")] == 1.0


def test_reports_are_collected_only_inside_a_block():
    timing = Timing()
    timing.add("decode", 2.0)
    assert timing.report()["decode"] == 2.0  # no collector: nothing breaks
    with collect_reports() as reports:
        timing.add("inference", 3.0)
        timing.report()
    timing.report()
    assert reports == [{"decode": 2.0, "inference": 3.0}]
