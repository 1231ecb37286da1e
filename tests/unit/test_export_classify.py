"""The classifier exporter: ONNX graph valid, dynamic batch, onnxruntime == PyTorch, card right."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from scripts.export.classifier import build_classifier, export_classifier, load_checkpoint
from service.cards import read_card


@pytest.mark.parametrize(("arch", "head"), [("mobilenet_v2", "torchvision"), ("resnet18", "gap")])
def test_export_parity_and_card(tmp_path, arch, head):
    torch.manual_seed(0)
    model = build_classifier(arch, 4, head=head, hidden=16 if head == "gap" else 0).eval()
    pre = {
        "resize": "crop",
        "resize_short": 72,
        "size": [64, 64],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    folder = export_classifier(
        model, name="m", labels=list("abcd"), out_dir=tmp_path, preprocess=pre
    )
    loaded = read_card(folder)
    assert loaded.card.task == "classify" and loaded.card.labels == list("abcd")
    assert loaded.card.preprocess.size == (64, 64)
    parity = loaded.card.export["parity_vs_torch"]
    assert 0 <= parity["max_abs_diff"] < 1e-4

    # independent check, at a batch size the export never saw: the batch axis is dynamic
    session = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert session.get_inputs()[0].shape[0] == "batch"


def test_wrong_label_count_is_refused(tmp_path):
    model = build_classifier("mobilenet_v2", 3)
    with pytest.raises(ValueError, match="2 labels for a model with 3 outputs"):
        export_classifier(
            model,
            name="m",
            labels=["a", "b"],
            out_dir=tmp_path,
            preprocess={"resize": "stretch", "size": [32, 32]},
        )
    assert not (tmp_path / "m").exists()


def test_failed_export_keeps_the_previous_model(tmp_path):
    model = build_classifier("mobilenet_v2", 2)
    pre = {"resize": "stretch", "size": [32, 32]}
    export_classifier(model, name="m", labels=["a", "b"], out_dir=tmp_path, preprocess=pre)
    before = (tmp_path / "m" / "model.json").read_text()

    class Broken(torch.nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            return torch.zeros(x.shape[0], 2) + float(torch.rand(()))  # differs run to run

    with pytest.raises(RuntimeError, match="differs from torch"):
        export_classifier(
            Broken(), name="m", labels=["a", "b"], out_dir=tmp_path, preprocess=pre, tolerance=0.0
        )
    assert (tmp_path / "m" / "model.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp folders left


def test_cli_exports_a_finetune_style_checkpoint(tmp_path):
    from scripts.export.cli import main

    torch.manual_seed(0)
    model = build_classifier("resnet18", 2, head="gap")
    ckpt = {
        "arch": "resnet18",
        "labels": ["cat", "dog"],
        "head": {"type": "gap", "hidden": 0},
        "preprocess": {
            "resize": "crop",
            "resize_short": 40,
            "size": [32, 32],
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
        "state_dict": model.state_dict(),
        "source": {"training_data": "unit test"},
    }
    torch.save(ckpt, tmp_path / "best.pt")
    assert load_checkpoint(tmp_path / "best.pt")["arch"] == "resnet18"
    main(
        [
            "classify",
            "--checkpoint",
            str(tmp_path / "best.pt"),
            "--name",
            "pets",
            "--out",
            str(tmp_path / "models"),
        ]
    )
    card = json.loads((tmp_path / "models" / "pets" / "model.json").read_text())
    assert card["labels"] == ["cat", "dog"]
    assert card["preprocess"]["size"] == [32, 32]
    assert card["source"]["training_data"] == "unit test"
