"""scripts/hotload.py: the printed command and the request, against a stand-in server on a real
socket. The stand-in records what arrived; every assertion is on those recorded bytes."""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scripts import hotload
from scripts.hotload import HotLoadError, hot_load, load_command

# Quotes, non-ASCII and a \r\n: the card must arrive as the same text, not re-serialised.
CARD = '{\r\n  "task": "classify",\n  "labels": ["caf\u00e9", "say \\"cheese\\"", "it\'s"]\n}\n'
ONNX = bytes(range(256)) * 40 + b"\x00\xff\xfe"  # every byte value: base64 padding and all
GOLDEN = bytes((i * 7 + 3) % 256 for i in range(1001))


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class StandIn:
    """An HTTP server on 127.0.0.1 answering every POST with (status, body) and recording it.
    hot_load and curl return only after the answer, which is sent after the recording, so
    `received.get_nowait()` right after them needs no waiting."""

    def __init__(self, status: int = 200, body: bytes = b"{}") -> None:
        self.received: queue.Queue[Received] = queue.Queue()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # so that curl's "Expect: 100-continue" is answered

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", 0))
                stand_in.received.put(
                    Received("POST", self.path, dict(self.headers), self.rfile.read(length))
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def one(self) -> Received:
        got = self.received.get_nowait()
        assert self.received.empty(), "more than one request arrived"
        return got


@pytest.fixture
def stand_in() -> Iterator[Callable[..., StandIn]]:
    started: list[StandIn] = []

    def start(status: int = 200, body: bytes = b"{}") -> StandIn:
        s = StandIn(status, body)
        s.thread.start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.server.shutdown()
        s.server.server_close()
        s.thread.join()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    # a space and a single quote in the path: the printed command must quote it
    d = tmp_path / "it's models" / "cats"
    d.mkdir(parents=True)
    (d / "model.json").write_bytes(CARD.encode("utf-8"))
    (d / "model.onnx").write_bytes(ONNX)
    (d / "golden.npz").write_bytes(GOLDEN)
    return d


@pytest.fixture(autouse=True)
def no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("IIS_API_KEY", "IIS_URL", "IIS_MAX_UPLOAD_BYTES"):
        monkeypatch.delenv(var, raising=False)


def expected_body(onnx: bytes = ONNX, golden: bytes | None = GOLDEN) -> dict:
    parameters = {"config": CARD, "file:model.onnx": base64.b64encode(onnx).decode()}
    if golden is not None:
        parameters["file:golden.npz"] = base64.b64encode(golden).decode()
    return {"parameters": parameters}


def assert_files_round_trip(body: dict, folder: Path) -> None:
    p = body["parameters"]
    assert p["config"] == (folder / "model.json").read_bytes().decode("utf-8")
    for name in ("model.onnx", "golden.npz"):
        assert base64.b64decode(p[f"file:{name}"], validate=True) == (folder / name).read_bytes()


def run_bash(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- the printed command ----------------------------------------------------------------


def test_by_name_command_is_a_bare_post():
    assert (
        load_command("http://gpu-box:8000/", "cats", Path("models/cats"), False)
        == "curl -fsS -X POST http://gpu-box:8000/v2/repository/models/cats/load"
    )


def test_command_names_the_key_variable_never_the_key():
    line = load_command("http://h:1", "cats", Path("x"), False, with_api_key=True)
    assert (
        line
        == 'curl -fsS -X POST -H "X-API-Key: $IIS_API_KEY" http://h:1/v2/repository/models/cats/load'
    )


def test_files_command_reads_the_folder_by_absolute_path(folder: Path, monkeypatch):
    monkeypatch.chdir(folder.parent.parent)
    line = load_command("http://h:1", "cats", Path("it's models/cats"), True)
    assert shlex.quote(str(folder)) in line  # absolute, so it works pasted from any directory
    assert line.endswith("http://h:1/v2/repository/models/cats/load)")


# --- hot_load against the stand-in ------------------------------------------------------


def test_hot_load_sends_tritons_load_request(stand_in, folder):
    server = stand_in()
    hot_load(server.url, "cats", folder, api_key="s3cret")
    got = server.one()
    assert (got.method, got.path) == ("POST", "/v2/repository/models/cats/load")
    assert got.headers["X-API-Key"] == "s3cret"
    assert got.headers["Content-Type"] == "application/json"
    assert got.json() == expected_body()
    assert_files_round_trip(got.json(), folder)


def test_folder_without_golden_sends_no_golden(stand_in, folder):
    (folder / "golden.npz").unlink()
    server = stand_in()
    hot_load(server.url, "cats", folder)
    got = server.one()
    assert got.json() == expected_body(golden=None)
    assert "X-API-Key" not in got.headers


def test_load_by_name_sends_no_body(stand_in, folder):
    server = stand_in()
    hot_load(server.url, "cats", folder, api_key="k", send_files=False)
    got = server.one()
    assert (got.path, got.body, got.headers["X-API-Key"]) == (
        "/v2/repository/models/cats/load",
        b"",
        "k",
    )


def test_refusal_raises_with_the_servers_message(stand_in, folder):
    message = "model.json: labels: 3 labels for a model with 4 outputs"
    server = stand_in(422, json.dumps({"error": message, "field": "labels"}).encode())
    with pytest.raises(HotLoadError) as caught:
        hot_load(server.url, "cats", folder)
    assert message in str(caught.value) and "HTTP 422" in str(caught.value)
    server.one()


def test_refusal_without_json_shows_the_text(stand_in, folder):
    server = stand_in(502, b"upstream went away")
    with pytest.raises(HotLoadError, match="HTTP 502.*upstream went away"):
        hot_load(server.url, "cats", folder)


def test_unreachable_server_is_a_hot_load_error(folder):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        url = f"http://127.0.0.1:{closed.server_address[1]}"
    with pytest.raises(HotLoadError, match="could not reach"):
        hot_load(url, "cats", folder, timeout=5)


def test_not_a_model_folder_is_refused_before_sending(stand_in, folder):
    (folder / "model.onnx").unlink()
    server = stand_in()
    with pytest.raises(HotLoadError, match="not a model folder"):
        hot_load(server.url, "cats", folder)
    assert server.received.empty()


def test_oversize_is_refused_before_sending(stand_in, folder):
    # 16 MiB on disk is under 20 MiB, but base64 makes it 21.3 MiB: the server's limit is on the
    # body, so this must be refused here rather than cut off there with a 413
    with (folder / "model.onnx").open("wb") as f:
        f.truncate(16 * 2**20)  # sparse: no 16 MiB written
    server = stand_in()
    with pytest.raises(HotLoadError) as caught:
        hot_load(server.url, "cats", folder)
    text = str(caught.value)
    assert "IIS_MAX_UPLOAD_BYTES" in text and "--load-by-name" in text and "models" in text
    assert server.received.empty()


def test_a_raised_limit_lets_it_through(stand_in, folder, monkeypatch):
    with (folder / "model.onnx").open("wb") as f:
        f.truncate(16 * 2**20)
    monkeypatch.setenv("IIS_MAX_UPLOAD_BYTES", str(32 * 2**20))
    server = stand_in()
    hot_load(server.url, "cats", folder)
    assert server.one().json() == expected_body(onnx=bytes(16 * 2**20))


# --- the printed command, run for real -----------------------------------------------------


def test_printed_command_sends_the_same_request(stand_in, folder, tmp_path):
    server = stand_in()
    hot_load(server.url, "cats", folder, api_key="s3cret")
    by_library = server.one()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    line = load_command(server.url, "cats", folder, True, with_api_key=True)
    done = run_bash(line, IIS_API_KEY="s3cret", TMPDIR=str(tmpdir))
    assert done.returncode == 0, done.stderr
    by_curl = server.one()
    assert by_curl.path == by_library.path
    assert by_curl.json() == by_library.json() == expected_body()
    assert by_curl.headers["X-API-Key"] == "s3cret"
    assert by_curl.headers["Content-Type"] == "application/json"
    assert list(tmpdir.iterdir()) == []  # the body's temporary file is removed


def test_printed_by_name_command_posts_no_body(stand_in, folder):
    server = stand_in()
    done = run_bash(load_command(server.url, "cats", folder, False))
    assert done.returncode == 0, done.stderr
    got = server.one()
    assert (got.path, got.body) == ("/v2/repository/models/cats/load", b"")


def test_printed_command_fails_on_a_refusal(stand_in, folder):
    server = stand_in(422, b'{"error": "no"}')
    done = run_bash(load_command(server.url, "cats", folder, True))
    assert done.returncode != 0
    server.one()


def test_printed_command_sends_nothing_when_the_folder_is_unreadable(stand_in, folder):
    # an empty body would mean "reload by name" to the server: a broken folder must not send one
    (folder / "model.json").unlink()
    server = stand_in()
    done = run_bash(load_command(server.url, "cats", folder, True))
    assert done.returncode != 0
    assert server.received.empty()


# --- the CLI helper -----------------------------------------------------------------------


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    hotload.add_arguments(parser)
    return parser.parse_args(argv)


def test_after_export_without_load_into_only_prints(folder, capsys, monkeypatch):
    monkeypatch.setenv("IIS_URL", "http://gpu-box:8000")
    hotload.after_export(cli(), "cats", folder)
    out = capsys.readouterr().out
    assert out == (
        "hot-load cats into a running service:\n"
        f"  {load_command('http://gpu-box:8000', 'cats', folder, True)}\n"
    )


def test_after_export_with_load_into_loads(stand_in, folder, capsys, monkeypatch):
    monkeypatch.setenv("IIS_API_KEY", "from-env")
    server = stand_in()
    hotload.after_export(cli("--load-into", server.url), "cats", folder)
    got = server.one()
    assert got.json() == expected_body() and got.headers["X-API-Key"] == "from-env"
    out = capsys.readouterr().out
    assert load_command(server.url, "cats", folder, True, with_api_key=True) in out
    assert out.endswith(f"loaded cats into {server.url}\n")


def test_after_export_by_name(stand_in, folder, capsys):
    server = stand_in()
    hotload.after_export(
        cli("--load-into", server.url, "--load-by-name", "--api-key", "k"), "cats", folder
    )
    assert server.one().body == b""
    out = capsys.readouterr().out
    assert "export IIS_API_KEY=<admin key> first" in out  # the key came from the flag
    assert load_command(server.url, "cats", folder, False, with_api_key=True) in out


def test_after_export_refusal_exits_with_the_message(stand_in, folder):
    server = stand_in(409, b'{"error": "cats: golden check failed: max abs diff 0.3"}')
    with pytest.raises(SystemExit, match="golden check failed: max abs diff 0.3"):
        hotload.after_export(cli("--load-into", server.url), "cats", folder)


def test_after_export_prints_by_name_for_an_oversize_folder(folder, capsys):
    with (folder / "model.onnx").open("wb") as f:
        f.truncate(40 * 2**20)
    hotload.after_export(cli(), "cats", folder)
    out = capsys.readouterr().out
    assert "too large to upload" in out
    assert load_command(hotload.DEFAULT_URL, "cats", folder, False) in out


# --- the CLIs carry the flags -------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "classify", "--help"],
        ["export", "detect", "--help"],
        ["export", "face", "--help"],
        ["export", "segment", "--help"],
        ["train-classifier", "--help"],
        ["train-faces", "train", "--help"],
        ["train-segmenter", "--help"],
    ],
)
def test_every_exporting_cli_has_the_flags(argv, capsys):
    from scripts.__main__ import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--load-into URL" in out and "--load-by-name" in out and "--api-key" in out


def test_export_cli_loads_what_it_wrote(stand_in, tmp_path, capsys):
    """The export command end to end: a tiny ultralytics-layout ONNX in, and the stand-in gets
    exactly the folder the exporter wrote."""
    import torch
    from torch import nn

    from scripts.export.cli import main as export_main
    from scripts.export.common import to_onnx_bytes

    class Constant(nn.Module):  # a YOLOv8-layout (1, 4 + 1 class, 84 anchors) answer at 64 px
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(1, 5, 84).expand(x.shape[0], -1, -1) + 0 * x.mean()

    onnx = tmp_path / "tiny.onnx"
    example = torch.zeros(1, 3, 64, 64)
    onnx.write_bytes(to_onnx_bytes(Constant(), example, input_name="images", output_names=["o"]))
    labels = tmp_path / "labels.txt"
    labels.write_text("thing\n")
    server = stand_in()
    models = tmp_path / "models"
    export_main(
        ["detect", "--onnx", str(onnx), "--labels", str(labels), "--name", "tiny",
         "--out", str(models), "--load-into", server.url, "--api-key", "k"]
    )  # fmt: skip
    got = server.one()
    assert got.path == "/v2/repository/models/tiny/load" and got.headers["X-API-Key"] == "k"
    written = models / "tiny"
    p = got.json()["parameters"]
    assert p["config"] == (written / "model.json").read_text(encoding="utf-8")
    sent = {k.removeprefix("file:") for k in p if k != "config"}
    assert sent == {f.name for f in written.iterdir()} - {"model.json"}
    for name in sent:
        assert base64.b64decode(p[f"file:{name}"]) == (written / name).read_bytes()
    assert capsys.readouterr().out.endswith(f"loaded tiny into {server.url}\n")
