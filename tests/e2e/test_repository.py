"""The model repository over real HTTP, driven by `tritonclient.http` (a client no one here
wrote): index, load, unload, reload; files sent with a load; versions; admin-scoped keys; a
reload under a steady stream of requests."""

from __future__ import annotations

import base64
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.app import start_server
from tests.support.images import encode, noise_image

pytestmark = pytest.mark.e2e

PHOTO = encode(noise_image(48, 40, seed=3), "PNG")


def _export(out: Path, name: str, seed: int, labels: list[str]) -> Path:
    import torch
    from torch import nn

    from scripts.export.classifier import export_classifier

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, len(labels)),
    )
    export_classifier(
        model,
        name=name,
        labels=labels,
        out_dir=out,
        preprocess={"resize": "stretch", "size": [32, 32], "mean": [0.5] * 3, "std": [0.25] * 3},
        source={"weights": f"random, seed {seed} (tests only)"},
    )
    return out / name


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two versions of one model (different weights and labels, so every answer tells which
    version computed it) and an unrelated second model."""
    root = tmp_path_factory.mktemp("builds")
    return {
        "v1": _export(root / "v1", "fruit", 0, ["apple", "banana", "cherry"]),
        "v2": _export(root / "v2", "fruit", 1, ["APPLE", "BANANA", "CHERRY", "DATE"]),
        "other": _export(root / "other", "other", 2, ["x", "y"]),
    }


def _files(folder: Path, prefix: str = "") -> dict[str, str]:
    return {
        f"file:{prefix}{p.name}": base64.b64encode(p.read_bytes()).decode()
        for p in sorted(folder.iterdir())
        if p.name in ("model.onnx", "model.json", "golden.npz")
    }


def _classify(url: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{url}/classify", params={"model": model}, files={"image": ("a.png", PHOTO)}, timeout=30
    )


@pytest.fixture
def server(tmp_path: Path, builds: dict[str, Path]) -> Iterator[tuple[str, Path]]:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copytree(builds["other"], models / "other")
    for url in start_server(models, IIS_MODEL_CONTROL="explicit"):
        yield url, models


def test_index_load_unload_through_tritonclient(server, builds):
    url, models = server
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    assert client.get_model_repository_index() == [
        {"name": "other", "version": "1", "state": "READY", "reason": ""}
    ]
    # a folder copied in is not served until it is loaded
    shutil.copytree(builds["v1"], models / "fruit")
    assert _classify(url, "fruit").json()["error"]["code"] == "model_not_found"
    index = {r["name"]: r for r in client.get_model_repository_index()}
    assert index["fruit"] == {"name": "fruit", "version": "1", "state": "UNAVAILABLE",
                              "reason": "unloaded"}  # fmt: skip

    client.load_model("fruit")
    answer = _classify(url, "fruit")
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == 1
    assert {p["label"] for p in answer.json()["predictions"]} == {"apple", "banana", "cherry"}
    assert [r["name"] for r in client.get_model_repository_index(headers=None) if
            r["state"] == "READY"] == ["fruit", "other"]  # fmt: skip

    client.unload_model("fruit")
    gone = _classify(url, "fruit")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert _classify(url, "other").status_code == 200  # the other model never noticed

    # reload by name after the folder changed: the new files serve
    shutil.rmtree(models / "fruit")
    shutil.copytree(builds["v2"], models / "fruit")
    client.load_model("fruit")
    labels = {p["label"] for p in _classify(url, "fruit").json()["predictions"]}
    assert labels == {"APPLE", "BANANA", "CHERRY", "DATE"}


def test_tritonclient_errors_carry_the_reason(server, builds):
    url, models = server
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match="no model folder nope/"):
        client.load_model("nope")
    broken = models / "broken"
    shutil.copytree(builds["v1"], broken)
    card = (broken / "model.json").read_text().replace('"fruit"', '"broken"')
    (broken / "model.json").write_text(card.replace('"softmax"', '"softmx"'))
    with pytest.raises(InferenceServerException, match="postprocess.activation: 'softmx' is not"):
        client.load_model("broken")
    index = {r["name"]: r for r in client.get_model_repository_index()}
    assert index["broken"]["state"] == "UNAVAILABLE"
    assert index["broken"]["reason"].startswith("postprocess.activation: 'softmx' is not one of")
    with pytest.raises(InferenceServerException, match="'never' is not loaded"):
        client.unload_model("never")
    client.unload_model("broken")  # forgets the failure; the folder stays
    index = {r["name"]: r for r in client.get_model_repository_index()}
    assert index["broken"]["reason"] == "unloaded"


def test_load_with_files_and_versions_side_by_side(server, builds):
    url, models = server
    # Triton's wire format for files: what tritonclient.http.load_model(files=...) means to
    # send. (tritonclient 2.73 puts the base64 *bytes* into json.dumps and raises TypeError, so
    # the body is built here; the server side is what is under test.)
    body = {"parameters": {**_files(builds["v1"], "1/"), **_files(builds["v2"], "2/")}}
    r = httpx.post(f"{url}/v2/repository/models/fruit/load", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert [(v["version"], v["state"]) for v in r.json()["versions"]] == [(1, "ready"),
                                                                          (2, "ready")]  # fmt: skip
    assert sorted(p.name for p in (models / "fruit").iterdir()) == ["1", "2"]
    newest = _classify(url, "fruit").json()
    assert newest["model_version"] == 2 and len(newest["predictions"]) == 4
    pinned = _classify(url, "fruit@1").json()
    assert pinned["model_version"] == 1 and {p["label"] for p in pinned["predictions"]} == {
        "apple", "banana", "cherry"}  # fmt: skip
    missing = _classify(url, "fruit@7")
    assert missing.status_code == 404 and "fruit@7" in missing.json()["error"]["message"]
    bad = _classify(url, "fruit@x")
    assert bad.status_code == 400 and "positive integer" in bad.json()["error"]["message"]

    # `config` is the card, as tritonclient sends it beside the files
    card = (builds["v1"] / "model.json").read_text()
    files = _files(builds["v1"])
    del files["file:model.json"]
    golden = files.pop("file:golden.npz")
    r = httpx.post(f"{url}/v2/repository/models/fruit/load",
                   json={"parameters": {"config": card, **files}}, timeout=60)  # fmt: skip
    assert r.status_code == 400  # the card names a golden example that was not sent
    assert r.json()["error"].endswith("golden: the card names golden.npz, which is missing")
    assert _classify(url, "fruit@2").json()["model_version"] == 2  # both versions still serve
    files["file:golden.npz"] = golden
    r = httpx.post(f"{url}/v2/repository/models/fruit/load",
                   json={"parameters": {"config": card, **files}}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    assert [v["version"] for v in r.json()["versions"]] == [1]  # the folder is what was sent
    assert _classify(url, "fruit@2").status_code == 404


def test_a_refused_reload_keeps_the_old_version_serving(server, builds):
    url, models = server
    shutil.copytree(builds["v1"], models / "fruit")
    assert httpx.post(f"{url}/v2/repository/models/fruit/load").status_code == 200
    before = _classify(url, "fruit").json()["predictions"]
    files = _files(builds["v2"])
    card = base64.b64decode(files["file:model.json"]).decode().replace('"softmax"', '"softmx"')
    files["file:model.json"] = base64.b64encode(card.encode()).decode()
    r = httpx.post(f"{url}/v2/repository/models/fruit/load", json={"parameters": files})
    assert r.status_code == 400 and r.json()["code"] == "load_failed"
    assert "postprocess.activation: 'softmx'" in r.json()["error"]
    assert _classify(url, "fruit").json()["predictions"] == before
    # and the folder on disk is still the one that serves
    assert '"softmx"' not in (models / "fruit" / "model.json").read_text()


def test_repository_changes_need_an_admin_key(tmp_path, builds):
    models = tmp_path / "models"
    shutil.copytree(builds["v1"], models / "fruit")
    env = {"IIS_API_KEYS": "infer-key", "IIS_ADMIN_API_KEYS": "admin-key"}
    for url in start_server(models, **env):
        host = url.removeprefix("http://")
        user = triton.InferenceServerClient(host)
        with pytest.raises(InferenceServerException, match="admin key"):
            user.unload_model("fruit", headers={"X-API-Key": "infer-key"})
        with pytest.raises(InferenceServerException, match="needs an admin key"):
            user.unload_model("fruit")
        answer = httpx.post(f"{url}/classify", files={"image": ("a.png", PHOTO)},
                            headers={"X-API-Key": "infer-key"})  # fmt: skip
        assert answer.status_code == 200  # the inference key still infers
        user.unload_model("fruit", headers={"Authorization": "Bearer admin-key"})
        assert httpx.post(f"{url}/classify", files={"image": ("a.png", PHOTO)},
                          headers={"X-API-Key": "admin-key"}).status_code == 404  # fmt: skip


def test_reload_under_load_drops_nothing(server, builds):
    """A steady stream on `fruit` while version 2 is loaded beside 1, then 1 is removed:
    every answer is 200 and comes from exactly one of the two versions."""
    url, models = server
    shutil.copytree(builds["v1"], models / "fruit" / "1")
    assert httpx.post(f"{url}/v2/repository/models/fruit/load").status_code == 200
    expected = {v: _classify(url, f"fruit@{v}").json()["predictions"] for v in (1,)}

    stop = threading.Event()
    answers: list[tuple[int, int, list[dict[str, object]] | None]] = []

    def stream() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                r = http.post(f"{url}/classify", params={"model": "fruit"},
                              files={"image": ("a.png", PHOTO)})  # fmt: skip
                body = r.json() if r.status_code == 200 else None
                answers.append((r.status_code, body["model_version"] if body else -1,
                                body["predictions"] if body else None))  # fmt: skip

    workers = [threading.Thread(target=stream) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        shutil.copytree(builds["v2"], models / "fruit" / "2")
        load = httpx.post(f"{url}/v2/repository/models/fruit/load", timeout=60)
        assert load.status_code == 200, load.text
        expected[2] = _classify(url, "fruit@2").json()["predictions"]
        shutil.rmtree(models / "fruit" / "1")
        load = httpx.post(f"{url}/v2/repository/models/fruit/load", timeout=60)
        assert [v["version"] for v in load.json()["versions"]] == [2]
        # and the stream goes on on version 2 alone for a while
        seen_after, deadline = len(answers), time.monotonic() + 30
        while len(answers) < seen_after + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for w in workers:
            w.join()
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {200: len(answers)}, statuses
    versions = Counter(version for _, version, _ in answers)
    assert set(versions) == {1, 2}, versions
    assert all(v == 2 for _, v, _ in answers[seen_after + 8 :])  # 1 is gone: only 2 answers
    for _, version, predictions in answers:
        assert predictions == expected[version]
