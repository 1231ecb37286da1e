"""scripts/bench.py and scripts/benchkit.py: the helpers, and one real (tiny) side-by-side run.

The run starts every server over real loopback sockets with the tiny classifier and checks the
report's shape and that all stacks give the same answer. It asserts nothing about speed:
performance targets are judged by the full benchmark (README, Performance), never by tests."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from scripts import bench, benchkit


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert benchkit.percentile(values, 0.5) == 50
    assert benchkit.percentile(values, 0.95) == 95
    assert benchkit.percentile(values, 0.99) == 99
    assert benchkit.percentile(values, 1.0) == 100
    assert benchkit.summary([3.0, 1.0, 2.0]) == {"p50": 2.0, "p95": 3.0, "p99": 3.0, "n": 3}
    assert benchkit.summary([])["n"] == 0


def test_drive_keeps_n_in_flight_and_counts_statuses() -> None:
    in_flight = peak = 0
    calls = 0

    async def send(_session: object) -> tuple[int, object]:
        nonlocal in_flight, peak, calls
        calls += 1
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return (200, {"n": calls}) if calls % 5 else (503, None)

    result = asyncio.run(benchkit.drive(send, concurrency=4, requests=40, seconds=30, warmup=3))
    assert calls == 43  # 3 unmeasured warm-up requests, then exactly `requests`
    assert peak == 4
    assert result.ok + result.statuses.get("503", 0) == 40
    assert result.statuses["503"] >= 7
    assert result.to_json()["non_200"] == {"503": result.statuses["503"]}
    assert result.throughput > 0


def test_drive_stops_at_the_time_bound() -> None:
    async def send(_session: object) -> tuple[int, object]:
        await asyncio.sleep(0.02)
        return 200, None

    result = asyncio.run(benchkit.drive(send, concurrency=2, requests=10_000, seconds=0.3))
    assert 10 <= result.ok < 100  # bounded by time, not by the 10,000 requests


def test_targets_judge_the_figures_they_quote() -> None:
    level = {"throughput_rps": 100.0, "latency_ms": {"p50": 10.0}}
    model = {
        "stacks": {
            "raw": {"best_throughput_rps": 105.0, "batch1_latency_ms": {"p50": 9.0}},
            "service": {
                "levels": {"1": level, "16": level},
                "rss_mb_after_warmup": 200.0,
                "rss_mb_after_run": 250.0,
            },
            "naive": {"levels": {"16": {"throughput_rps": 80.0}}},
            "litserve": {"levels": {"16": {"throughput_rps": 50.0}}},
        }
    }
    checks = {c["target"]: c for c in bench.check_targets(model, [1, 16], classifier=True)}
    naive = checks["c=16: service >= 1.3x naive throughput"]
    assert (naive["measured"], naive["holds"]) == (1.25, False)
    assert checks["c=16: service >= 1.2x litserve throughput"]["holds"] is True
    assert checks["c=16: service >= 90% of raw best-batch throughput"]["holds"] is True
    assert checks["c=1: service p50 <= raw batch-1 p50 + 15%"]["measured"] == 1.111
    assert checks["service RSS after the run <= 1.2x after warm-up"]["holds"] is False


def test_a_tiny_side_by_side_run_over_real_sockets(
    tiny_classifier_dir: Path, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(buf, "JPEG")
    photo.write_bytes(buf.getvalue())
    out = tmp_path / "bench"
    argv = [
        "--models", str(tiny_classifier_dir / "tiny-cls"),
        "--concurrency", "1,3",
        "--requests", "12",
        "--seconds", "5",
        "--raw-batches", "1,2",
        "--image", str(photo),
        "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads((out / "bench.json").read_text())
    model = result["models"]["tiny-cls"]
    assert set(model["stacks"]) == {"raw", "service", "naive", "litserve"}
    for stack in ("service", "naive", "litserve"):
        for c in ("1", "3"):
            level = model["stacks"][stack]["levels"][c]
            assert level["requests_ok"] == 12, (stack, c, level)
            assert level["non_200"] == {}
            assert level["latency_ms"]["p50"] > 0
        assert model["stacks"][stack]["rss_mb_after_run"] > 10
    # every stack answered the photo with the same top-1 class
    assert model["answers_agree"], model["answers"]
    assert model["answers"]["service"] in ("apple", "banana", "cherry")
    assert {c["target"] for c in model["targets"]} >= {
        "c=3: service >= 1.3x naive throughput",
        "c=1: service p50 <= raw batch-1 p50 + 15%",
    }
    table = (out / "bench.md").read_text()
    assert "| tiny-cls | litserve | 3 |" in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
