"""The GPU path without a GPU: run strategy, provider options, TensorRT profiles, warm-up sizes,
and the IO-binding runner (against a recording fake, and for real with host-memory binding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.cards import ModelCard, Preprocess, TensorSpec, read_card
from service.runtime import (
    CPU,
    CUDA,
    TENSORRT,
    load_model,
    make_runner,
    provider_options,
    run_strategy,
    run_with_io_binding,
    trt_profile,
    warmup_batch_sizes,
)
from tests.support.app import serve, settings_for
from tests.support.images import encode, noise_image

ON_TRT = [TENSORRT, CUDA, CPU]
ON_CUDA = [CUDA, CPU]
ON_CPU = [CPU]


def settings(**overrides: object):
    return settings_for(Path("models"), **overrides)


@pytest.mark.parametrize(
    ("io_binding", "active", "expected"),
    [
        ("auto", ON_CPU, "run"),
        ("auto", ON_CUDA, "iobinding"),
        ("auto", ON_TRT, "iobinding"),
        ("auto", [CPU, CUDA], "run"),  # only the provider running the graph counts
        ("on", ON_CPU, "iobinding"),
        ("on", ON_CUDA, "iobinding"),
        ("off", ON_CUDA, "run"),
        ("off", ON_TRT, "run"),
    ],
)
def test_run_strategy(io_binding, active, expected):
    assert run_strategy(active, settings(io_binding=io_binding)) == expected


@pytest.mark.parametrize(
    ("active", "max_batch", "expected"),
    [
        (ON_CPU, 8, [1, 8]),
        (ON_CPU, 1, [1]),
        (ON_CUDA, 1, [1]),
        (ON_CUDA, 2, [1, 2]),
        (ON_CUDA, 8, [1, 2, 4, 8]),
        (ON_TRT, 12, [1, 2, 4, 8, 12]),
        (ON_TRT, 16, [1, 2, 4, 8, 16]),
    ],
)
def test_warmup_batch_sizes(active, max_batch, expected):
    assert warmup_batch_sizes(active, max_batch) == expected


def card(shape: list[int | str], name: str = "input", **preprocess: object) -> ModelCard:
    spec = {"resize": "stretch", "size": (224, 224), **preprocess}
    return ModelCard(
        name="m",
        task="classify",
        inputs=[TensorSpec(name=name, shape=shape)],
        outputs=[TensorSpec(name="logits", shape=["batch", 10])],
        preprocess=Preprocess.model_validate(spec),
    )


@pytest.mark.parametrize(
    ("model", "max_batch", "expected"),
    [
        (card(["batch", 3, 224, 224]), 8, ("input:1x3x224x224", "input:8x3x224x224")),
        (
            card(["N", 3, 112, 96], name="data", size=(112, 96)),
            4,
            ("data:1x3x112x96", "data:4x3x112x96"),
        ),
        # symbolic H/W in the graph, but the card always feeds 320x256
        (
            card(["batch", 3, "h", "w"], size=(320, 256)),
            2,
            ("input:1x3x320x256", "input:2x3x320x256"),
        ),
        (
            card(["batch", 416, 416, 3], size=(416, 416), layout="NHWC"),
            16,
            ("input:1x416x416x3", "input:16x416x416x3"),
        ),
        (card([1, 3, 640, 640], size=(640, 640)), 8, None),  # static: nothing to profile
        (card([1, 3, "height", "width"], resize="none-in-graph", size=None), 1, None),  # Mask R-CNN
        (card(["batch", 3, "height", "width"], resize="none-in-graph", size=None), 8, None),
    ],
)
def test_trt_profile(model, max_batch, expected):
    profile = trt_profile(model, max_batch)
    if expected is None:
        assert profile == {}
    else:
        low, high = expected
        assert profile == {
            "trt_profile_min_shapes": low,
            "trt_profile_opt_shapes": high,
            "trt_profile_max_shapes": high,
        }


@pytest.mark.real_weights
def test_trt_profile_of_the_default_classifier_card(default_models: Path):
    loaded = read_card(default_models / "mobilenet_v2-imagenet")
    assert trt_profile(loaded.card, 8)["trt_profile_max_shapes"] == "input:8x3x224x224"


def test_provider_options():
    cache = Path("/m/.trt-cache")
    profile = trt_profile(card(["batch", 3, 224, 224]), 8)
    s = settings(device_id=1, trt_fp16=True, cudnn_conv_algo_search="EXHAUSTIVE", max_batch=8)
    assert provider_options(TENSORRT, s, cache, profile) == {
        "device_id": 1,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": "/m/.trt-cache/fp16-b8",
        "trt_fp16_enable": True,
        "trt_profile_min_shapes": "input:1x3x224x224",
        "trt_profile_opt_shapes": "input:8x3x224x224",
        "trt_profile_max_shapes": "input:8x3x224x224",
    }
    assert provider_options(CUDA, s, cache, profile) == {
        "device_id": 1,
        "cudnn_conv_algo_search": "EXHAUSTIVE",
    }
    assert provider_options(CPU, s, cache, profile) == {}


def test_provider_options_defaults_and_no_profile():
    trt = provider_options(TENSORRT, settings(), Path("/c"), {})
    assert trt == {
        "device_id": 0,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": "/c/fp32",  # engines of another precision live elsewhere
        "trt_fp16_enable": False,
    }
    assert provider_options(CUDA, settings(), Path("/c")) == {
        "device_id": 0,
        "cudnn_conv_algo_search": "HEURISTIC",
    }


class FakeBinding:
    def __init__(self, calls: list[tuple], outputs: list[np.ndarray]) -> None:
        self.calls = calls
        self.outputs = outputs

    def bind_ortvalue_input(self, name, value):
        self.calls.append(("bind_input", name, value))

    def bind_output(self, name, device, device_id=0):
        self.calls.append(("bind_output", name, device, device_id))

    def copy_outputs_to_cpu(self):
        self.calls.append(("copy_outputs_to_cpu",))
        return self.outputs


class FakeSession:
    """Records the IO-binding calls a CUDA session would get; `run` must not be used."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self.calls: list[tuple] = []
        self.binding = FakeBinding(self.calls, outputs)

    def io_binding(self):
        self.calls.append(("io_binding",))
        return self.binding

    def run_with_iobinding(self, binding):
        assert binding is self.binding
        self.calls.append(("run_with_iobinding",))

    def run(self, *args):
        raise AssertionError("plain run used on the IO-binding path")


def test_io_binding_runner_binds_input_and_outputs_on_the_gpu(monkeypatch):
    made: list[tuple] = []

    def fake_from_numpy(array, device_type="cpu", device_id=0):
        made.append((array.shape, array.flags.c_contiguous, device_type, device_id))
        return "ortvalue"

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(fake_from_numpy))
    outputs = [np.ones((2, 10), np.float32), np.zeros((2,), np.int64)]
    session = FakeSession(outputs)
    run = make_runner(session, "input", ["logits", "ids"], "iobinding", ON_CUDA, device_id=1)
    x = np.zeros((2, 224, 224, 3), np.float32).transpose(0, 3, 1, 2)  # not C-contiguous

    got = run(x)

    assert made == [((2, 3, 224, 224), True, "cuda", 1)]
    assert session.calls == [
        ("io_binding",),
        ("bind_input", "input", "ortvalue"),
        ("bind_output", "logits", "cuda", 1),
        ("bind_output", "ids", "cuda", 1),
        ("run_with_iobinding",),
        ("copy_outputs_to_cpu",),
    ]
    assert got == outputs


def test_plain_runner_on_the_cpu():
    class Session:
        def run(self, names, feeds):
            return [feeds["input"] + 1]

    run = make_runner(Session(), "input", ["out"], "run", ON_CPU, device_id=0)
    np.testing.assert_array_equal(run(np.zeros((1, 2), np.float32))[0], [[1.0, 1.0]])


def test_io_binding_on_host_memory_matches_plain_run(tiny_classifier_dir):
    """The real ORT IO-binding calls, bound to "cpu": the same answers as session.run."""
    loaded = read_card(tiny_classifier_dir / "tiny-cls")
    session = ort.InferenceSession(str(loaded.onnx_path), providers=[CPU])
    names = [o.name for o in session.get_outputs()]
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    (expected,) = session.run(names, {"input": x})
    (got,) = run_with_io_binding(session, "input", names, "cpu", 0, x)
    assert got.shape == (3, 3)
    np.testing.assert_array_equal(got, expected)


def test_load_model_with_io_binding_forced_on(tiny_classifier_dir):
    loaded = read_card(tiny_classifier_dir / "tiny-cls")
    runtime = load_model(loaded, settings_for(tiny_classifier_dir, io_binding="on", max_batch=4))
    assert runtime.active_providers == [CPU] and runtime.io_binding
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    (expected,) = runtime.session.run(None, {"input": x})
    np.testing.assert_array_equal(runtime.run(x)[0], expected)
    default = load_model(loaded, settings_for(tiny_classifier_dir))
    assert not default.io_binding  # auto on a CPU: plain run


@pytest.mark.parametrize("io_binding", ["on", "auto"])
def test_models_endpoint_reports_io_binding(tiny_classifier_dir, io_binding):
    with serve(tiny_classifier_dir, io_binding=io_binding) as client:
        r = client.post("/classify", files={"image": ("a.png", encode(noise_image(), "PNG"))})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3
        (model,) = client.get("/v1/models").json()["models"]
    providers = model["providers"]
    assert providers["io_binding"] is (io_binding == "on")
    assert "trt_fp16" not in providers  # TensorRT is not active here


@pytest.mark.parametrize(("spinning", "entry"), [(False, "0"), (True, "1")])
def test_ort_spinning_setting_reaches_the_session(tiny_classifier_dir, spinning, entry):
    loaded = read_card(tiny_classifier_dir / "tiny-cls")
    runtime = load_model(loaded, settings_for(tiny_classifier_dir, ort_spinning=spinning))
    options = runtime.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == entry
