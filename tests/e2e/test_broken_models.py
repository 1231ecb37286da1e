"""A corpus of broken model folders, driven through one real server over real HTTP.

Every case is a copy of the tiny classifier (or the tiny detector) with one thing wrong. The
server starts with all of them beside a healthy `tiny-cls` (IIS_MODEL_CONTROL=explicit); each
must show as failed with the exact reason naming the field, be refused again by the repository
API (by name, and with its files in the load body), answer 409 to inference, and leave the
healthy model serving the same answer. No response in the module may be a 5xx.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import re
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest

from tests.support.app import start_server
from tests.support.images import encode, noise_image

MAX_UPLOAD = 256 * 1024
HEALTHY = "tiny-cls"
IMAGE = encode(noise_image(80, 60, seed=3), "PNG")

Mutate = Callable[[Path, Path], None]  # (the version folder, a folder outside the models dir)


@dataclass(frozen=True)
class Case:
    name: str  # the model's folder (and the test id)
    reason: str | re.Pattern[str]  # the exact "field: reason" (a pattern where ORT's words follow)
    mutate: Mutate
    base: str = "cls"  # "cls": a copy of tiny-cls; "det": of tiny-yolo
    version_dir: int | None = None  # files under <name>/<n>/ instead of flat
    # A load with the folder's files in its body: None = the same load_failed as by name;
    # a string = refused before anything is written (400 invalid_request, with these words).
    sent_refusal: str | None = None
    sendable: bool = True  # False: no request body can carry what is wrong (a symlink)

    @property
    def version(self) -> int:
        return self.version_dir or 1

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def route(self) -> str:
        return "/classify" if self.base == "cls" else "/detect"


# --- ways to break a model folder -------------------------------------------------------------


def edit_card(change: Callable[[dict[str, Any]], object]) -> Mutate:
    def mutate(folder: Path, outside: Path) -> None:
        path = folder / "model.json"
        card = json.loads(path.read_text())
        change(card)
        path.write_text(json.dumps(card, indent=2))

    return mutate


def write(file: str, data: bytes) -> Mutate:
    def mutate(folder: Path, outside: Path) -> None:
        (folder / file).write_bytes(data)

    return mutate


def remove(file: str) -> Mutate:
    def mutate(folder: Path, outside: Path) -> None:
        (folder / file).unlink()

    return mutate


def truncate(file: str) -> Mutate:
    def mutate(folder: Path, outside: Path) -> None:
        data = (folder / file).read_bytes()
        (folder / file).write_bytes(data[: len(data) // 2])

    return mutate


def both(*steps: Mutate) -> Mutate:
    def mutate(folder: Path, outside: Path) -> None:
        for step in steps:
            step(folder, outside)

    return mutate


def symlink_outside(file: str) -> Mutate:
    """Move the (good) file out of the models folder and leave a symlink to it."""

    def mutate(folder: Path, outside: Path) -> None:
        target = outside / f"{folder.name}-{file}"
        shutil.move(folder / file, target)
        (folder / file).symlink_to(target)

    return mutate


def edit_golden(change: Callable[[dict[str, np.ndarray]], object]) -> Mutate:
    def mutate(folder: Path, outside: Path) -> None:
        with np.load(folder / "golden.npz") as data:
            arrays = {k: data[k] for k in data.files}
        change(arrays)
        np.savez(folder / "golden.npz", **arrays)

    return mutate


def _shift_logits(arrays: dict[str, np.ndarray]) -> None:
    arrays["output:logits"] = arrays["output:logits"] + np.float32(1.0)


def _small_input(arrays: dict[str, np.ndarray]) -> None:
    arrays["input"] = np.zeros((1, 3, 16, 16), np.float32)


def golden_pickle() -> bytes:
    return pickle.dumps({"input": np.zeros((1, 3, 32, 32), np.float32)})


def golden_npy() -> bytes:
    """A plain .npy (one array) under the .npz name."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, 3, 32, 32), np.float32))
    return buf.getvalue()


def rezip_golden(damage: Callable[[bytearray], None]) -> Mutate:
    """golden.npz rewritten with np.savez_compressed, then its zip bytes damaged."""

    def mutate(folder: Path, outside: Path) -> None:
        with np.load(folder / "golden.npz") as data:
            arrays = {k: data[k] for k in data.files}
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        raw = bytearray(buf.getvalue())
        damage(raw)
        (folder / "golden.npz").write_bytes(bytes(raw))

    return mutate


def _members(raw: bytearray) -> list[tuple[int, int]]:
    """(local header offset, central directory header offset) of each zip member."""
    end = raw.rfind(b"PK\x05\x06")
    count, _, directory = struct.unpack_from("<HII", raw, end + 10)
    out = []
    for _ in range(count):
        assert raw[directory : directory + 4] == b"PK\x01\x02"
        name, extra, comment = struct.unpack_from("<HHH", raw, directory + 28)
        (local,) = struct.unpack_from("<I", raw, directory + 42)
        out.append((local, directory))
        directory += 46 + name + extra + comment
    return out


def damage_deflate(raw: bytearray) -> None:
    """The first deflate block of the first member gets block type 3, which does not exist."""
    local, _ = _members(raw)[0]
    name, extra = struct.unpack_from("<HH", raw, local + 26)
    raw[local + 30 + name + extra] = 0xFF


def unknown_compression(raw: bytearray) -> None:
    """Every member claims compression method 99 (AES: zipfile cannot read it)."""
    for local, directory in _members(raw):
        struct.pack_into("<H", raw, local + 8, 99)
        struct.pack_into("<H", raw, directory + 10, 99)


def nonfinite_onnx(op: str) -> bytes:
    """input (N, 3, 32, 32) -> global average pool -> (N, 3) -> `op`: Div(x, x) is 0/0 = NaN
    and Reciprocal is 1/0 = inf on the warm-up input, which is all zeros."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    last = (
        helper.make_node("Div", ["flat", "flat"], ["logits"])
        if op == "nan"
        else helper.make_node("Reciprocal", ["flat"], ["logits"])
    )
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            last,
        ],
        f"{op}-logits",
        [x],
        [y],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def external_data_onnx(location: str) -> bytes:
    """A graph whose weight lives in an external data file at `location`: ONNX Runtime reads
    such files relative to the model, so "../..." would read outside the model's folder."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((3, 3), np.float32), "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "36")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("MatMul", ["flat", "W"], ["logits"]),
        ],
        "external-data",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _no_golden(card: dict[str, Any]) -> None:
    card.pop("golden")


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """card[a][b][...] = value, for a dotted path whose numbers index lists."""

    def change(card: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = card
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value

    return change


def _rename_key(block: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def change(card: dict[str, Any]) -> None:
        card[block][new] = card[block].pop(old)

    return change


def _as_detect(card: dict[str, Any]) -> None:
    card["task"] = "detect"
    card["postprocess"] = {"layout": "yolov5"}


def _as_classify(card: dict[str, Any]) -> None:
    card["task"] = "classify"
    card["postprocess"] = {"activation": "softmax"}


def _schema_v1_version(card: dict[str, Any]) -> None:
    card["schema_version"] = 1
    card["version"] = "one"


ORT_REFUSES = "model.onnx: onnxruntime cannot load it: "
NOT_NPZ = "golden: golden.npz is not a readable .npz: "

CASES = [
    Case(
        "bad-activation",
        "postprocess.activation: 'softmx' is not one of 'softmax', 'sigmoid' or 'none'",
        edit_card(_set("postprocess.activation", "softmx")),
    ),
    Case(
        "bad-postprocess-key",
        "postprocess.activaton: is not a setting this card's schema knows (misspelt?)",
        edit_card(_rename_key("postprocess", "activation", "activaton")),
    ),
    Case(
        "bad-preprocess-key",
        "preprocess.resize_shortest: is not a setting this card's schema knows (misspelt?)",
        edit_card(_rename_key("preprocess", "resize_short", "resize_shortest")),
    ),
    Case(
        "bad-task",
        "task: 'classification' is not one of classify, detect, segment, face-detect, face-embed",
        edit_card(_set("task", "classification")),
    ),
    Case("bad-no-task", "task: is missing", edit_card(lambda card: card.pop("task"))),
    Case(
        "bad-detect-card",
        "outputs[0].shape: detect needs a rank-3 output, got (1, 3)",
        edit_card(_as_detect),
    ),
    Case(
        "bad-labels",
        "labels: 4 labels for 3 output classes",
        edit_card(_set("labels", ["apple", "banana", "cherry", "durian"])),
    ),
    Case(
        "bad-input-shape",
        "inputs[0].shape: axis 2 is 64; the graph says 32",
        edit_card(_set("inputs.0.shape", ["batch", 3, 64, 64])),
    ),
    Case(
        "bad-input-name",
        "inputs[0].name: 'image' but the graph calls it 'input'",
        edit_card(_set("inputs.0.name", "image")),
    ),
    Case(
        "bad-output-name",
        "outputs[0].name: 'probs' is not an output of the graph (['logits'])",
        edit_card(_set("outputs.0.name", "probs")),
    ),
    Case(
        "bad-output-rank",
        "outputs[0].shape: ['batch', 3, 1] has rank 3; the graph's logits is ['batch', 3] (rank 2)",
        edit_card(_set("outputs.0.shape", ["batch", 3, 1])),
    ),
    Case(
        "bad-no-onnx",
        "model.onnx: is missing beside the card (or is not a regular file)",
        remove("model.onnx"),
        sent_refusal="the files sent hold no model.onnx",
    ),
    Case(
        "bad-not-onnx",
        re.compile(re.escape(ORT_REFUSES) + r".*\bProtobuf parsing failed\b.*"),
        write("model.onnx", b"this is not an ONNX graph, just some text\n" * 8),
    ),
    Case(
        "bad-truncated-onnx",
        re.compile(re.escape(ORT_REFUSES) + r".*\bProtobuf parsing failed\b.*"),
        truncate("model.onnx"),
    ),
    Case(
        "bad-card-not-json",
        "model.json: is not valid JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 22 (char 21)",
        write("model.json", b'{"task": "classify", }'),
    ),
    Case(
        "bad-card-list",
        "card: must be a JSON object, got list",
        write("model.json", b'[{"task": "classify"}]'),
    ),
    Case(
        "bad-name",
        "name: 'someone-else' differs from the model's folder 'bad-name'",
        edit_card(_set("name", "someone-else")),
    ),
    Case(
        "bad-schema-newer",
        "schema_version: 3 is newer than this server understands (2); upgrade it",
        edit_card(_set("schema_version", 3)),
    ),
    Case(
        "bad-v1-version",
        "version: 'one' is not a version number (1, 2, ...)",
        edit_card(_schema_v1_version),
    ),
    Case(
        "bad-golden-altered",
        "golden: output logits differs from the exporter's by up to 1 (rtol 0.001, atol 0.001): "
        "not the model the card was written for",
        edit_golden(_shift_logits),
    ),
    Case(
        "bad-golden-missing",
        "golden: the card names golden.npz, which is missing",
        remove("golden.npz"),
    ),
    Case(
        "bad-golden-pickle",
        re.compile(re.escape(NOT_NPZ) + r".*\bpickled\b.*"),  # numpy's words: never unpickled
        write("golden.npz", golden_pickle()),
    ),
    Case(
        "bad-golden-npy",
        NOT_NPZ + "it holds one array (a .npy file), not the named arrays of an .npz",
        write("golden.npz", golden_npy()),
    ),
    Case(
        "bad-golden-truncated",
        NOT_NPZ + "File is not a zip file",
        truncate("golden.npz"),
    ),
    Case(
        "bad-golden-deflate",
        NOT_NPZ + "Error -3 while decompressing data: invalid block type",
        rezip_golden(damage_deflate),
    ),
    Case(
        "bad-golden-compression",
        NOT_NPZ + "That compression method is not supported",
        rezip_golden(unknown_compression),
    ),
    Case(
        "bad-golden-no-input",
        "golden: golden.npz has no 'input' array",
        edit_golden(lambda arrays: arrays.pop("input")),
    ),
    Case(
        "bad-golden-input-shape",
        "golden: input [1, 3, 16, 16] does not fit the graph's ['batch', 3, 32, 32]",
        edit_golden(_small_input),
        version_dir=3,
    ),
    Case(
        "bad-nan-output",
        "model.onnx: output logits is not finite on the warm-up input",
        both(write("model.onnx", nonfinite_onnx("nan")), edit_card(_no_golden)),
    ),
    Case(
        "bad-inf-output",
        "model.onnx: output logits is not finite on the warm-up input",
        both(write("model.onnx", nonfinite_onnx("inf")), edit_card(_no_golden)),
    ),
    Case(
        "bad-external-data-escapes",
        re.compile(
            r"model\.onnx: onnxruntime cannot load it: .*External data path escapes model "
            r"directory.*"
        ),
        both(
            write("model.onnx", external_data_onnx("../../../../etc/hostname")),
            edit_card(_no_golden),
        ),  # fmt: skip
    ),
    Case(
        "bad-external-data-absolute",
        re.compile(
            r"model\.onnx: onnxruntime cannot load it: .*Absolute path not allowed for "
            r"external data location"
        ),
        both(write("model.onnx", external_data_onnx("/etc/hostname")), edit_card(_no_golden)),
    ),
    Case(
        "bad-onnx-symlink",
        "model.onnx: is missing beside the card (or is not a regular file)",
        symlink_outside("model.onnx"),
        sendable=False,
    ),
    Case(
        "bad-golden-symlink",
        "golden: the card names golden.npz, which is missing",
        symlink_outside("golden.npz"),
        sendable=False,
    ),
    Case(
        "bad-det-labels",
        "labels: 2 labels but the yolov5 output (1, 960, 8) has 3 classes",
        edit_card(_set("labels", ["apple", "banana"])),
        base="det",
    ),
    Case(
        "bad-det-layout",
        "labels: 3 labels but the yolov8 output (1, 960, 8) has 956 classes",
        edit_card(_set("postprocess.layout", "yolov8")),
        base="det",
    ),
    Case(
        "bad-det-layout-typo",
        "postprocess.layout: 'yolo5' is not one of 'yolov5' or 'yolov8'",
        edit_card(_set("postprocess.layout", "yolo5")),
        base="det",
    ),
    Case(
        "bad-det-classify-card",
        "outputs[0].shape: classify needs (N, K) logits, got (1, 960, 8)",
        edit_card(_as_classify),
        base="det",
    ),
]


def case_id(case: Case) -> str:
    return case.name


def build(case: Case, models: Path, bases: dict[str, Path], outside: Path) -> None:
    folder = models / case.name
    if case.version_dir is not None:
        folder = folder / str(case.version_dir)
    shutil.copytree(bases[case.base], folder)
    edit_card(_set("name", case.name))(folder, outside)
    case.mutate(folder, outside)


def version_folder(models: Path, case: Case) -> Path:
    folder = models / case.name
    return folder / str(case.version_dir) if case.version_dir is not None else folder


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every file under a model folder: its bytes, or where a symlink points."""
    return {
        str(p.relative_to(folder)): (f"-> {p.readlink()}" if p.is_symlink() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_symlink() or p.is_file()
    }


# --- the server ------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    models: Path
    client: httpx.Client
    statuses: list[tuple[str, str, int]]
    first_answer: dict[str, Any]


@pytest.fixture(scope="module")
def server(
    tiny_classifier_dir: Path, tiny_detector_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("broken-models")
    outside = tmp_path_factory.mktemp("outside-the-models")
    bases = {"cls": tiny_classifier_dir / HEALTHY, "det": tiny_detector_dir / "tiny-yolo"}
    shutil.copytree(bases["cls"], models / HEALTHY)
    for case in CASES:
        build(case, models, bases, outside)
    statuses: list[tuple[str, str, int]] = []

    def record(response: httpx.Response) -> None:
        statuses.append((response.request.method, str(response.request.url), response.status_code))

    for url in start_server(
        models,
        IIS_MODEL_CONTROL="explicit",
        IIS_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        # the server's output goes to a pipe nobody reads: keep it short (dozens of failures)
        IIS_LOG_LEVEL="critical",
        IIS_WARMUP_RUNS="1",
        IIS_INTRA_OP_THREADS="1",
    ):
        with httpx.Client(base_url=url, timeout=30, event_hooks={"response": [record]}) as client:
            first = client.post("/classify?top_k=3", files={"image": ("x.png", IMAGE)})
            assert first.status_code == 200, first.text
            yield Server(url, models, client, statuses, first.json())


@pytest.fixture(scope="module")
def at_start(server: Server) -> dict[str, Any]:
    """/v1/models as the server reported it right after start-up."""
    r = server.client.get("/v1/models")
    assert r.status_code == 200, r.text
    return r.json()


def matches(reason: str | re.Pattern[str], text: str) -> bool:
    if isinstance(reason, re.Pattern):
        return reason.fullmatch(text) is not None
    return text == reason


def assert_v2_error(r: httpx.Response, status: int, code: str) -> str:
    """A /v2 error (Open Inference Protocol shape); returns its message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "code", "request_id"}, body
    assert body["code"] == code, body
    assert body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    return str(body["error"])


def assert_error(r: httpx.Response, status: int, code: str) -> str:
    """An error in the service's own shape; returns its message."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    return str(body["error"]["message"])


def load_files(case: Case, folder: Path) -> dict[str, str]:
    """The load request's parameters carrying a version folder's files (the card as `config`)."""
    prefix = f"{case.version_dir}/" if case.version_dir is not None else ""
    parameters = {}
    for file in ("model.onnx", "golden.npz"):
        if (folder / file).is_file():
            data = base64.b64encode((folder / file).read_bytes()).decode()
            parameters[f"file:{prefix}{file}"] = data
    parameters["config"] = (folder / "model.json").read_text()
    return parameters


def leftovers(models: Path) -> list[str]:
    """Staging, set-aside and refused folders a load may leave behind: none expected."""
    return sorted(p.name for p in models.iterdir() if p.name.startswith("."))


# --- (a) start-up ----------------------------------------------------------------------------


def test_corpus_has_enough_distinct_cases():
    assert len(CASES) >= 15
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_startup_shows_it_failed_with_the_field(at_start: dict[str, Any], case: Case):
    entries = [v for v in at_start["versions"] if v["name"] == case.name]
    assert len(entries) == 1, entries
    (entry,) = entries
    assert entry["state"] == "failed"
    assert entry["version"] == case.version
    assert matches(case.reason, entry["reason"]), entry["reason"]
    assert entry["task"] is None  # it never loaded: no runtime says what it is
    assert at_start["failed"][case.ref] == entry["reason"]
    assert case.name not in {m["card"]["name"] for m in at_start["models"]}
    assert "/tmp/" not in entry["reason"] and str(Path.home()) not in entry["reason"]


def test_startup_serves_only_the_healthy_model(server: Server, at_start: dict[str, Any]):
    assert [m["card"]["name"] for m in at_start["models"]] == [HEALTHY]
    assert at_start["defaults"] == {"classify": HEALTHY}
    healthy = [v for v in at_start["versions"] if v["name"] == HEALTHY]
    assert [(v["state"], v["reason"]) for v in healthy] == [("ready", "")]
    assert sorted(at_start["failed"]) == sorted(c.ref for c in CASES)
    ready = server.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["failed"] == at_start["failed"]


def test_repository_index_lists_them_unavailable(server: Server):
    r = server.client.post("/v2/repository/index")
    assert r.status_code == 200, r.text
    rows = {(row["name"], row["version"]): row for row in r.json()}
    assert rows[(HEALTHY, "1")]["state"] == "READY"
    for case in CASES:
        row = rows[(case.name, str(case.version))]
        assert row["state"] == "UNAVAILABLE", row
        assert matches(case.reason, row["reason"]), row


# --- (b) the repository API refuses them -----------------------------------------------------


def assert_load_failed(r: httpx.Response, case: Case) -> None:
    """400 load_failed, saying "model <ref>: " and then the case's reason."""
    message = assert_v2_error(r, 400, "load_failed")
    prefix = f"model {case.ref}: "
    assert message.startswith(prefix), message
    assert matches(case.reason, message[len(prefix) :]), message


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_load_by_name_is_refused_with_the_reason(server: Server, case: Case):
    before = snapshot(server.models / case.name)
    r = server.client.post(f"/v2/repository/models/{case.name}/load")
    assert_load_failed(r, case)
    assert snapshot(server.models / case.name) == before
    assert leftovers(server.models) == []


@pytest.mark.parametrize("case", [c for c in CASES if c.sendable], ids=case_id)
def test_load_with_its_files_is_refused_and_the_folder_kept(server: Server, case: Case):
    folder = version_folder(server.models, case)
    before = snapshot(server.models / case.name)
    r = server.client.post(
        f"/v2/repository/models/{case.name}/load",
        json={"parameters": load_files(case, folder)},
    )
    if case.sent_refusal is not None:
        assert case.sent_refusal in assert_v2_error(r, 400, "invalid_request")
    else:
        assert_load_failed(r, case)
    # the refused files never replace what was there, and nothing is left half-way
    assert snapshot(server.models / case.name) == before
    assert leftovers(server.models) == []
    models = server.client.get("/v1/models").json()
    assert matches(case.reason, models["failed"][case.ref]), models["failed"]


def test_the_card_sent_as_a_file_is_read_as_config_is(server: Server):
    """file:model.json instead of `config`: the same refusal."""
    case = next(c for c in CASES if c.name == "bad-activation")
    parameters = load_files(case, version_folder(server.models, case))
    card = parameters.pop("config")
    parameters["file:model.json"] = base64.b64encode(card.encode()).decode()
    r = server.client.post(
        f"/v2/repository/models/{case.name}/load", json={"parameters": parameters}
    )
    assert assert_v2_error(r, 400, "load_failed") == f"model {case.ref}: {case.reason}"


GOOD_ONNX = base64.b64encode(b"stand-in bytes; never written").decode()
GOOD_CARD = json.dumps({"name": "sneaky", "task": "classify"})


def load_body(*names: str, content: object = GOOD_ONNX, config: object = GOOD_CARD) -> object:
    """A load request sending `content` as each `file:<name>`, and the card as `config`."""
    return {"parameters": {**{f"file:{name}": content for name in names}, "config": config}}


def refused_file(name: str, words: str = "files are", *, id: str) -> Any:
    """A load request sending the file `name`, refused with "'file:<name>': <words>"."""
    return pytest.param(load_body(name), f"'file:{name}': {words}", id=id)


REQUEST_REFUSALS = [
    refused_file(
        "../x/model.onnx", "files are model.onnx, model.json or golden.npz", id="path-up-and-out"
    ),
    refused_file("/etc/passwd", "files are model.onnx", id="absolute-path"),
    pytest.param(
        load_body("1/../../x/model.onnx"),
        "no path may leave the model's folder",
        id="version-then-up",
    ),
    refused_file("latest/model.onnx", id="non-numeric-version-folder"),
    # no version 0: the folder would be written, then never loaded
    refused_file("0/model.onnx", id="version-folder-0"),
    refused_file("2147483648/model.onnx", id="version-folder-2**31"),
    pytest.param(
        load_body("model.onnx", "run.sh"), "'file:run.sh': files are", id="not-a-model-file"
    ),
    refused_file(".model.onnx", id="hidden-file"),
    pytest.param(
        load_body("model.onnx", content="not base64 !!"),
        "'file:model.onnx': not valid base64",
        id="bad-base64",
    ),
    pytest.param(
        load_body("model.onnx", content=12345),
        "'file:model.onnx': the file's content must be a base64 string",
        id="content-not-a-string",
    ),
    pytest.param(
        load_body("model.onnx", config={"task": "classify"}),
        "'config' must be the card (model.json) as a JSON string",
        id="config-not-a-string",
    ),
    pytest.param(
        load_body("model.onnx", "model.json"),
        "both 'config' and 'file:model.json' were sent; send one",
        id="two-cards",
    ),
    pytest.param(
        {"parameters": {"file:model.onnx": GOOD_ONNX}},
        "the files sent hold no card: send 'config' or 'file:model.json'",
        id="no-card",
    ),
    pytest.param(
        {"parameters": ["file:model.onnx"]},
        "'parameters' must be a JSON object",
        id="parameters-a-list",
    ),
    pytest.param([1, 2], "the request body must be a JSON object", id="body-a-list"),
    pytest.param(b"{not json", "the request body is not JSON: ", id="body-not-json"),
]


@pytest.mark.parametrize(("body", "words"), REQUEST_REFUSALS)
def test_load_request_refused_before_writing(server: Server, body: object, words: str):
    outside = server.models.parent
    before = sorted(p.name for p in outside.iterdir()), sorted(server.models.iterdir())
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = server.client.post("/v2/repository/models/sneaky/load", **kwargs)
    assert words in assert_v2_error(r, 400, "invalid_request")
    assert (sorted(p.name for p in outside.iterdir()), sorted(server.models.iterdir())) == before
    assert not (server.models / "sneaky").exists() and not (outside / "x").exists()
    assert "sneaky" not in {v["name"] for v in server.client.get("/v1/models").json()["versions"]}


def test_a_refused_load_of_the_healthy_model_leaves_it_serving(server: Server):
    """Files for a version that could never load (0) must not replace a serving model's folder
    (nor unload it): refused before anything is written."""
    before = snapshot(server.models / HEALTHY)
    parameters = {"file:0/model.onnx": GOOD_ONNX, "config": GOOD_CARD}
    r = server.client.post(f"/v2/repository/models/{HEALTHY}/load", json={"parameters": parameters})
    assert "'file:0/model.onnx': files are" in assert_v2_error(r, 400, "invalid_request")
    assert snapshot(server.models / HEALTHY) == before
    r = server.client.post("/classify?top_k=3", files={"image": ("x.png", IMAGE)})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == server.first_answer["predictions"]


def test_load_of_a_model_with_no_folder_and_no_files_is_404(server: Server):
    r = server.client.post("/v2/repository/models/nothing-here/load")
    assert "no model folder nothing-here/" in assert_v2_error(r, 404, "model_not_found")


def test_load_with_an_unusable_name_is_refused(server: Server):
    r = server.client.post("/v2/repository/models/.hidden/load")
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_parameter"
    assert "name" in r.json()["error"]


def test_oversized_load_body_is_413(server: Server):
    big = base64.b64encode(bytes(MAX_UPLOAD)).decode()
    body = json.dumps({"parameters": {"file:model.onnx": big, "config": GOOD_CARD}})
    assert len(body) > MAX_UPLOAD
    r = server.client.post(
        "/v2/repository/models/sneaky/load",
        content=body,
        headers={"content-type": "application/json"},
    )
    message = assert_v2_error(r, 413, "payload_too_large")
    assert message == f"request body is larger than the {MAX_UPLOAD}-byte upload limit"
    assert not (server.models / "sneaky").exists()


# --- (c) inference on them -------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_inference_on_it_is_409_with_the_reason(server: Server, case: Case):
    for ref in (case.name, case.ref):
        r = server.client.post(f"{case.route}?model={ref}", files={"image": ("x.png", IMAGE)})
        message = assert_error(r, 409, "model_failed")
        prefix = f"model {case.ref} failed to load: "
        assert message.startswith(prefix), message
        assert matches(case.reason, message[len(prefix) :]), message
    r = server.client.post(
        f"{case.route}?model={case.name}@{case.version + 1}", files={"image": ("x.png", IMAGE)}
    )
    assert "no " in assert_error(r, 404, "model_not_found")


@pytest.mark.parametrize("name", ["sneaky", "nothing-here", "bad-activation-2"])
def test_inference_on_a_model_never_installed_is_404(server: Server, name: str):
    r = server.client.post(f"/classify?model={name}", files={"image": ("x.png", IMAGE)})
    message = assert_error(r, 404, "model_not_found")
    assert message == f"no classify model {name!r}; available: {HEALTHY}"


# --- (d) and the healthy one is untouched ----------------------------------------------------


def test_zz_healthy_model_still_answers_the_same_and_nothing_was_5xx(server: Server):
    """Named to run last: after every case above."""
    r = server.client.post("/classify?top_k=3", files={"image": ("x.png", IMAGE)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == HEALTHY and body["model_version"] == 1
    first = server.first_answer["predictions"]
    assert body["predictions"][0]["label"] == first[0]["label"]
    assert [p["class_id"] for p in body["predictions"]] == [p["class_id"] for p in first]
    np.testing.assert_allclose(
        [p["score"] for p in body["predictions"]], [p["score"] for p in first], rtol=1e-5
    )
    models = server.client.get("/v1/models").json()
    assert [m["card"]["name"] for m in models["models"]] == [HEALTHY]
    assert sorted(models["failed"]) == sorted(c.ref for c in CASES)
    assert server.client.get("/readyz").status_code == 200
    assert leftovers(server.models) == []
    assert server.statuses  # every response of the module, this one's included
    errors = [s for s in server.statuses if s[2] >= 500]
    assert errors == []
