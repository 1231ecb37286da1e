"""Structured logs: every line `python -m service` writes is one JSON object, uvicorn's access
log included, and records made while a request runs carry its request id."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from service.logging_config import REQUEST_ID, JsonFormatter
from tests.support.app import ROOT, free_port
from tests.support.images import encode, noise_image


def record(name: str, msg: str, args: tuple[object, ...] = (), **extra: object):
    rec = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_formatter_fields_request_id_and_extras():
    token = REQUEST_ID.set("req-42")
    try:
        line = JsonFormatter().format(record("service", "model %s slow", ("m",), model="m"))
    finally:
        REQUEST_ID.reset(token)
    out = json.loads(line)
    assert out["message"] == "model m slow" and out["level"] == "warning"
    assert out["logger"] == "service" and out["request_id"] == "req-42" and out["model"] == "m"
    assert out["ts"].endswith("Z")
    assert "request_id" not in json.loads(JsonFormatter().format(record("x", "outside")))


def test_access_record_is_split_into_fields():
    args = ("127.0.0.1:5000", "POST", "/detect?score_threshold=0.3", "1.1", 200)
    out = json.loads(JsonFormatter().format(record("uvicorn.access", '%s - "%s %s HTTP/%s" %d',
                                                   args)))  # fmt: skip
    assert out["message"] == '127.0.0.1:5000 - "POST /detect?score_threshold=0.3 HTTP/1.1" 200'
    assert (out["method"], out["path"], out["status"]) == ("POST", "/detect?score_threshold=0.3",
                                                           200)  # fmt: skip


@pytest.mark.e2e
def test_server_logs_are_json_lines_with_request_ids(tiny_classifier_dir: Path, tmp_path: Path):
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    env = os.environ | {"IIS_MODELS_DIR": str(tiny_classifier_dir), "IIS_PORT": str(port),
                        "IIS_LOG_LEVEL": "info"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        photo = encode(noise_image(40, 30), "PNG")
        ok = httpx.post(f"{url}/classify", files={"image": ("a.png", photo)},
                        headers={"X-Request-ID": "trace-1"})  # fmt: skip
        bad = httpx.post(f"{url}/classify", files={"image": ("a.png", b"nope")})
        assert ok.status_code == 200 and bad.status_code == 400
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        log.close()

    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines()]
    access = [x for x in lines if x["logger"] == "uvicorn.access" and x["path"] == "/classify"]
    assert [(x["status"], x["method"]) for x in access] == [(200, "POST"), (400, "POST")]
    assert access[0]["request_id"] == "trace-1"
    rejected = bad.json()["error"]["request_id"]
    assert access[1]["request_id"] == rejected
    # the service's own log line about the rejected upload has the same id
    assert any(x["logger"] != "uvicorn.access" and x.get("request_id") == rejected for x in lines)
    assert any("ready" in x["message"] and x["logger"] == "service.repository" for x in lines)
