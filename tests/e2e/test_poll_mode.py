"""IIS_MODEL_CONTROL=poll: the server rescans its models folder and follows it.

One real server (IIS_POLL_INTERVAL_S=0.2) over a temp folder; each test adds, grows, breaks,
replaces or removes its own model folder and watches /v1/models with a deadline (no sleep is
used as synchronisation). Below them, unit tests of the pieces the poll is built on: scan,
fingerprint, the settle rule of poll_once, and parse_files.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2 as httpx
import pytest

from service.errors import InvalidRequest
from service.repository import (
    ModelRegistry,
    ModelRepository,
    VersionEntry,
    fingerprint,
    parse_files,
    scan,
)
from tests.support.app import settings_for, start_server
from tests.support.images import encode, noise_image

HEALTHY = "tiny-cls"
IMAGE = encode(noise_image(80, 60, seed=3), "PNG")
POLL_S = 0.2
ORT_REFUSES = "model.onnx: onnxruntime cannot load it: "
T = TypeVar("T")


@dataclass
class Server:
    url: str
    models: Path
    good: Path  # the tiny classifier's files, outside the models folder
    client: httpx.Client
    predictions: list[dict[str, Any]]  # the healthy model's answer to IMAGE


@pytest.fixture(scope="module")
def server(tiny_classifier_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("polled-models")
    good = tiny_classifier_dir / HEALTHY
    shutil.copytree(good, models / HEALTHY)
    # a dot-name is work in progress: never loaded, however complete and however long it stays
    place(good, models / ".parked", "parked")
    for url in start_server(
        models,
        IIS_MODEL_CONTROL="poll",
        IIS_POLL_INTERVAL_S=str(POLL_S),
        IIS_LOG_LEVEL="critical",  # the server's output goes to a pipe nobody reads
        IIS_WARMUP_RUNS="1",
        IIS_INTRA_OP_THREADS="1",
    ):
        with httpx.Client(base_url=url, timeout=30) as client:
            first = classify(client, HEALTHY)
            assert first.status_code == 200, first.text
            yield Server(url, models, good, client, first.json()["predictions"])


# --- helpers --------------------------------------------------------------------------------


def card_of(good: Path, name: str, **changes: Any) -> str:
    card = json.loads((good / "model.json").read_text())
    card.update(name=name, **changes)
    return json.dumps(card, indent=2)


def place(good: Path, folder: Path, name: str, *, onnx: bytes | None = None, **card: Any) -> None:
    """Write a model's files into `folder` (created), the card named `name`."""
    folder.mkdir(parents=True)
    shutil.copy(good / "golden.npz", folder / "golden.npz")
    (folder / "model.onnx").write_bytes(
        (good / "model.onnx").read_bytes() if onnx is None else onnx
    )
    (folder / "model.json").write_text(card_of(good, name, **card))


def place_atomically(
    good: Path, final: Path, name: str, *, onnx: bytes | None = None, **card: Any
) -> None:
    """Written under a dot-name beside `final`, then renamed into place (as the exporters do);
    an existing `final` is set aside under a dot-name first, then removed."""
    staging = final.with_name(f".{final.name}.writing")
    place(good, staging, name, onnx=onnx, **card)
    if final.exists():
        aside = final.with_name(f".{final.name}.old")
        final.rename(aside)
        staging.rename(final)
        shutil.rmtree(aside)
    else:
        staging.rename(final)


def remove_atomically(folder: Path) -> None:
    gone = folder.with_name(f".{folder.name}.removed")
    folder.rename(gone)
    shutil.rmtree(gone)


def replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def classify(client: httpx.Client, ref: str) -> httpx.Response:
    return client.post(f"/classify?top_k=3&model={ref}", files={"image": ("x.png", IMAGE)})


def entry(client: httpx.Client, name: str, version: int) -> dict[str, Any] | None:
    """The version's row in /v1/models, or None when the server does not know it."""
    r = client.get("/v1/models")
    assert r.status_code == 200, r.text
    rows = [v for v in r.json()["versions"] if v["name"] == name and v["version"] == version]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Call probe until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def in_state(client: httpx.Client, name: str, version: int, state: str) -> Any:
    def probe() -> dict[str, Any] | None:
        row = entry(client, name, version)
        return row if row is not None and row["state"] == state else None

    return probe


def assert_serves(server: Server, ref: str, version: int, labels: list[str] | None = None) -> None:
    r = classify(server.client, ref)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == ref.partition("@")[0]
    assert body["model_version"] == version
    # the same weights as the healthy model: the same classes and scores
    assert [p["class_id"] for p in body["predictions"]] == [
        p["class_id"] for p in server.predictions
    ]
    assert [p["score"] for p in body["predictions"]] == pytest.approx(
        [p["score"] for p in server.predictions], rel=1e-5
    )
    if labels is not None:
        assert [p["label"] for p in body["predictions"]] == [
            labels[p["class_id"]] for p in body["predictions"]
        ]


def assert_error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    return str(body["error"]["message"])


# --- (a), (b): a folder appears, a folder goes --------------------------------------------------


def test_an_atomically_written_folder_loads_and_a_removed_one_unloads(server: Server):
    place_atomically(server.good, server.models / "fresh", "fresh")
    row = wait_until("fresh ready", in_state(server.client, "fresh", 1, "ready"))
    assert row["reason"] == "" and row["task"] == "classify"
    assert_serves(server, "fresh", 1, ["apple", "banana", "cherry"])
    assert_serves(server, "fresh@1", 1)

    remove_atomically(server.models / "fresh")
    wait_until("fresh gone", lambda: entry(server.client, "fresh", 1) is None)
    message = assert_error(classify(server.client, "fresh"), 404, "model_not_found")
    assert message == f"no classify model 'fresh'; available: {HEALTHY}"
    assert "fresh" not in server.client.get("/v1/models").json()["failed"]
    assert_serves(server, HEALTHY, 1)


# --- (c): half-written folders ------------------------------------------------------------------


def test_a_folder_being_written_loads_only_once_complete_and_settled(server: Server):
    folder = server.models / "growing"
    onnx = (server.good / "model.onnx").read_bytes()
    half = len(onnx) // 2
    place(server.good, folder, "growing", onnx=onnx[:half])  # in place, not atomically
    rest = onnx[half:]
    step = -(-len(rest) // 40)  # 40 appends, one every 0.05 s: never still for a poll period

    def append() -> None:
        for i in range(0, len(rest), step):
            time.sleep(0.05)
            with open(folder / "model.onnx", "ab") as f:
                f.write(rest[i : i + step])

    writer = threading.Thread(target=append)
    writer.start()
    seen = []
    try:
        while writer.is_alive():
            seen.append(entry(server.client, "growing", 1))
            time.sleep(0.05)
    finally:
        writer.join()
    assert (folder / "model.onnx").read_bytes() == onnx
    assert len(seen) >= 10
    # not ready, and not even tried (a half file would have failed): the server waited
    assert seen == [None] * len(seen)

    states = []

    def ready() -> dict[str, Any] | None:
        row = entry(server.client, "growing", 1)
        states.append(row and row["state"])
        return row if row is not None and row["state"] == "ready" else None

    wait_until("growing ready", ready)
    assert "failed" not in states, states
    assert_serves(server, "growing", 1)


def test_a_truncated_model_fails_stays_failed_and_loads_when_replaced(server: Server):
    onnx = (server.good / "model.onnx").read_bytes()
    place_atomically(server.good, server.models / "stuck", "stuck", onnx=onnx[: len(onnx) // 2])
    failed = wait_until("stuck failed", in_state(server.client, "stuck", 1, "failed"))
    assert failed["reason"].startswith(ORT_REFUSES), failed
    assert "Protobuf parsing failed" in failed["reason"]
    assert str(server.models) not in failed["reason"]  # the folder is named <model folder>
    assert server.client.get("/v1/models").json()["failed"]["stuck@1"] == failed["reason"]
    message = assert_error(classify(server.client, "stuck"), 409, "model_failed")
    assert message == f"model stuck@1 failed to load: {failed['reason']}"

    # the same files are not retried at every poll: the failure stands, unchanged
    watch = time.monotonic() + 5 * POLL_S
    while time.monotonic() < watch:
        assert entry(server.client, "stuck", 1) == failed
        time.sleep(0.05)

    place_atomically(server.good, server.models / "stuck", "stuck")
    row = wait_until("stuck ready", in_state(server.client, "stuck", 1, "ready"))
    assert row["reason"] == ""
    assert "stuck@1" not in server.client.get("/v1/models").json()["failed"]
    assert_serves(server, "stuck", 1)


# --- (d): versions ----------------------------------------------------------------------------


def test_version_folders_come_and_go(server: Server):
    upper = ["APPLE", "BANANA", "CHERRY"]
    staging = server.models / ".m.writing"
    place(server.good, staging / "1", "m")
    staging.rename(server.models / "m")
    wait_until("m@1 ready", in_state(server.client, "m", 1, "ready"))
    assert_serves(server, "m", 1, ["apple", "banana", "cherry"])

    # version 2's card still says version "1": the folder's number is the version
    place_atomically(server.good, server.models / "m" / "2", "m", labels=upper)
    wait_until("m@2 ready", in_state(server.client, "m", 2, "ready"))
    assert_serves(server, "m", 2, upper)
    assert_serves(server, "m@2", 2, upper)
    assert_serves(server, "m@1", 1, ["apple", "banana", "cherry"])

    remove_atomically(server.models / "m" / "1")
    wait_until("m@1 gone", lambda: entry(server.client, "m", 1) is None)
    message = assert_error(classify(server.client, "m@1"), 404, "model_not_found")
    assert message.startswith("no classify model m@1; available: ")
    assert_serves(server, "m", 2, upper)
    assert [
        v["version"] for v in server.client.get("/v1/models").json()["versions"] if v["name"] == "m"
    ] == [2]


# --- (e): a broken replacement does not take over ----------------------------------------------


def test_a_broken_reload_is_refused_and_the_previous_files_keep_serving(server: Server):
    folder = server.models / "rl" / "2"
    staging = server.models / ".rl.writing"
    place(server.good, staging / "2", "rl")
    staging.rename(server.models / "rl")
    loaded = wait_until("rl@2 ready", in_state(server.client, "rl", 2, "ready"))
    assert_serves(server, "rl", 2, ["apple", "banana", "cherry"])

    replace_file(
        folder / "model.json",
        card_of(server.good, "rl", postprocess={"activation": "softmx"}).encode(),
    )
    reason = (
        "reload refused, version still serves the previous files: postprocess.activation: "
        "'softmx' is not one of 'softmax', 'sigmoid' or 'none'"
    )

    def refused() -> dict[str, Any] | None:
        row = entry(server.client, "rl", 2)
        return row if row is not None and row["reason"] else None

    row = wait_until("rl@2 reload refused", refused)
    assert row["reason"] == reason
    assert row["state"] == "ready" and row["since"] == loaded["since"]
    assert server.client.get("/v1/models").json()["failed"]["rl@2"] == reason
    assert_serves(server, "rl", 2, ["apple", "banana", "cherry"])
    assert_serves(server, "rl@2", 2)

    # fixed again (new labels, so the reload shows): it reloads and the reason goes
    upper = ["APPLE", "BANANA", "CHERRY"]
    replace_file(folder / "model.json", card_of(server.good, "rl", labels=upper).encode())

    def reloaded() -> dict[str, Any] | None:
        row = entry(server.client, "rl", 2)
        return row if row is not None and not row["reason"] else None

    row = wait_until("rl@2 reloaded", reloaded)
    assert row["state"] == "ready" and row["since"] > loaded["since"]
    assert "rl@2" not in server.client.get("/v1/models").json()["failed"]
    assert_serves(server, "rl", 2, upper)


def test_zz_dot_folders_were_never_loaded_and_the_healthy_model_serves(server: Server):
    """After the server tests above (file order): .parked, a complete model under a dot-name,
    has sat in the folder through every poll they waited for."""
    models = server.client.get("/v1/models").json()
    assert not [v for v in models["versions"] if v["name"].startswith(".")]
    assert ".parked" not in str(models["failed"])
    message = assert_error(classify(server.client, "parked"), 404, "model_not_found")
    assert message.startswith("no classify model 'parked'")
    assert_serves(server, HEALTHY, 1)
    assert server.client.get("/readyz").status_code == 200


# --- unit level: scan, fingerprint, the settle rule, parse_files -------------------------------


def make(folder: Path, files: dict[str, bytes | str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    return folder


def test_scan_finds_flat_and_versioned_folders_and_skips_the_rest(tmp_path: Path):
    card = json.dumps({"version": 3})
    make(tmp_path / "flat", {"model.json": card, "model.onnx": b"x"})
    make(tmp_path / "flat-v1", {"model.json": json.dumps({"version": "7"})})  # v1: a string
    make(tmp_path / "unreadable", {"model.json": "{not json"})  # 1: its load says why
    make(tmp_path / "zero", {"model.json": json.dumps({"version": 0})})
    make(tmp_path / "listed", {"model.json": "[1, 2]"})
    make(tmp_path / "both", {"model.json": card, "2/model.json": card})  # flat wins
    make(
        tmp_path / "versioned",
        {
            "1/model.json": card,
            "2/model.json": card,
            "0/model.json": card,  # no version 0
            "2147483648/model.json": card,  # past the version range
            "latest/model.json": card,
            ".3/model.json": card,
            "4/model.onnx": b"no card yet",
        },
    )
    make(tmp_path / ".hidden", {"model.json": card})
    make(tmp_path / ".versioned.writing", {"1/model.json": card})
    make(tmp_path / "bad name", {"model.json": card})
    make(tmp_path / "no-card", {"model.onnx": b"x"})
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.json").write_text(card)

    found = scan(tmp_path)

    assert found == {
        "both": {3: tmp_path / "both"},
        "flat": {3: tmp_path / "flat"},
        "flat-v1": {7: tmp_path / "flat-v1"},
        "listed": {1: tmp_path / "listed"},
        "unreadable": {1: tmp_path / "unreadable"},
        "versioned": {1: tmp_path / "versioned" / "1", 2: tmp_path / "versioned" / "2"},
        "zero": {1: tmp_path / "zero"},
    }
    assert scan(tmp_path / "missing") == {}


def test_fingerprint_follows_every_change_to_a_version_folder(tmp_path: Path):
    folder = make(tmp_path / "m", {"model.json": "{}", "model.onnx": b"abc"})
    prints = [fingerprint(folder)]
    assert prints[0] and prints[0] == fingerprint(folder)

    with open(folder / "model.onnx", "ab") as f:  # grown
        f.write(b"d")
    prints.append(fingerprint(folder))
    replace_file(folder / "model.onnx", b"abcd")  # same size, same bytes, renamed in
    prints.append(fingerprint(folder))
    (folder / "golden.npz").write_bytes(b"g")  # a file added
    prints.append(fingerprint(folder))
    (folder / "golden.npz").unlink()  # and removed again
    prints.append(fingerprint(folder))
    assert all(a != b for a, b in zip(prints, prints[1:], strict=False)), prints
    assert prints[-1] == prints[-3]  # the same files as before the golden came and went
    assert fingerprint(tmp_path / "missing") == ""


class NoTracker:
    def track_model(self, runtime: object) -> None: ...
    def untrack_model(self, name: str) -> None: ...
    def model_loaded(self, runtime: object) -> None: ...
    def model_failed(self, name: str, field: str) -> None: ...
    def model_unloaded(self, name: str) -> None: ...


def test_poll_once_syncs_a_version_only_after_two_equal_fingerprints(tmp_path: Path):
    """The settle rule, without a server: sync is replaced by a recorder that marks what it
    was given as loaded (as the real one does, by fingerprint)."""
    models = tmp_path / "models"
    models.mkdir()
    repo = ModelRepository(ModelRegistry(), settings_for(models), NoTracker())
    calls: list[tuple[str, dict[int, Path]]] = []

    async def sync(name: str, on_disk: Any = None, *, force: bool = False) -> list[VersionEntry]:
        calls.append((name, dict(on_disk)))
        versions = repo.registry.entries.setdefault(name, {})
        for v, path in on_disk.items():
            versions[v] = VersionEntry(name, v, "ready", fingerprint=fingerprint(path))
        for v in set(versions) - set(on_disk):
            del versions[v]
        if not versions:
            repo.registry.entries.pop(name)
        return []

    repo.sync = sync  # type: ignore[method-assign]

    def poll() -> list[tuple[str, dict[int, Path]]]:
        calls.clear()
        asyncio.run(repo.poll_once())
        return list(calls)

    a = make(models / "a", {"model.json": "{}", "model.onnx": b"1"})
    assert poll() == []  # first seen: maybe still being written
    assert poll() == [("a", {1: a})]  # unchanged since: settled
    assert poll() == []  # loaded, unchanged: nothing to do

    with open(a / "model.onnx", "ab") as f:
        f.write(b"2")
    assert poll() == []  # changed: wait
    with open(a / "model.onnx", "ab") as f:
        f.write(b"3")
    assert poll() == []  # changed again: still wait
    assert poll() == [("a", {1: a})]  # settled: reload

    # a second version being written holds the whole model back until both are settled
    b2 = make(models / "b" / "2", {"model.json": "{}"})
    assert poll() == []
    make(models / "b" / "3", {"model.json": "{}"})
    assert poll() == []
    assert poll() == [("b", {2: b2, 3: models / "b" / "3"})]

    (models / ".c").mkdir()
    make(models / ".c", {"model.json": "{}"})
    assert poll() == [] and poll() == []  # a dot-folder, however settled

    shutil.rmtree(models / "a")
    assert poll() == [("a", {})]  # gone: unloaded at once, nothing to settle
    assert poll() == []


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    ("parameters", "files"),
    [
        pytest.param({}, {}, id="nothing"),
        pytest.param(
            {"file:model.onnx": b64(b"onnx"), "config": '{"a": 1}'},
            {"model.onnx": b"onnx", "model.json": b'{"a": 1}'},
            id="flat",
        ),
        pytest.param(
            {
                "file:model.onnx": b64(b"onnx"),
                "file:model.json": b64(b"{}"),
                "file:golden.npz": b64(b"npz"),
            },
            {"model.onnx": b"onnx", "model.json": b"{}", "golden.npz": b"npz"},
            id="card-as-a-file",
        ),
        pytest.param(
            {
                "file:1/model.onnx": b64(b"one"),
                "file:2147483647/model.onnx": b64(b"max"),
                "config": "{}",
                "other": "ignored",
            },
            {
                "1/model.onnx": b"one",
                "2147483647/model.onnx": b"max",
                "1/model.json": b"{}",
                "2147483647/model.json": b"{}",
            },
            id="config-into-every-version",
        ),
    ],
)
def test_parse_files_accepts(parameters: dict[str, Any], files: dict[str, bytes]):
    assert parse_files(parameters) == files


def refused_keys(words: str, *keys: str) -> list[tuple[str, Any, str]]:
    """One case per `file:` key sent with good content, each refused with `words`."""
    return [(key, b64(b"x"), words) for key in keys]


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        *refused_keys(
            "no path may leave the model's folder", "file:../x/model.onnx", "file:/etc/passwd"
        ),
        *refused_keys(
            "no path may leave",
            "file:1/../model.onnx",
            "file:./model.onnx",
            "file:1//model.onnx",
            "file:1/2/model.onnx",
        ),
        *refused_keys(
            "numbered version folder",
            "file:0/model.onnx",
            "file:2147483648/model.onnx",
            "file:v1/model.onnx",
        ),
        *refused_keys("files are model.onnx, model.json or golden.npz", "file:model.py"),
        *refused_keys("files are", "file:", "file:model.onnx\\.."),
        ("file:model.onnx", "@@@", "not valid base64"),
        ("file:model.onnx", None, "must be a base64 string"),
    ],
)
def test_parse_files_refuses(key: str, value: Any, words: str):
    parameters = {key: value, "config": "{}"}
    if key != "file:model.onnx":
        parameters["file:model.onnx"] = b64(b"x")
    with pytest.raises(InvalidRequest) as err:
        parse_files(parameters)
    assert words in err.value.message
    if words not in ("not valid base64", "must be a base64 string"):
        assert err.value.message.startswith(repr(key))


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"file:model.onnx": b64(b"x")}, "no card: send 'config' or 'file:model.json'"),
        ({"file:model.json": b64(b"{}")}, "the files sent hold no model.onnx"),
        ({"file:golden.npz": b64(b"x"), "config": "{}"}, "the files sent hold no model.onnx"),
        (
            {"file:model.onnx": b64(b"x"), "file:model.json": b64(b"{}"), "config": "{}"},
            "both 'config' and 'file:model.json' were sent; send one",
        ),
        ({"file:model.onnx": b64(b"x"), "config": {"task": "classify"}}, "'config' must be"),
        ({"config": "{}"}, "'config' alone is not supported"),
    ],
)
def test_parse_files_refuses_incomplete_sets(parameters: dict[str, Any], words: str):
    with pytest.raises(InvalidRequest) as err:
        parse_files(parameters)
    assert words in err.value.message
