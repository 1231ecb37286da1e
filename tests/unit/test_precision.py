"""train/classification/precision.py: which precision `auto` picks, and what autocast does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scripts.train.classification import FinetuneError, precision


def test_auto_follows_the_cpus_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "bf16_native", lambda: True)
    assert precision.resolve("auto") == "bf16"
    monkeypatch.setattr(precision, "bf16_native", lambda: False)
    assert precision.resolve("auto") == "fp32"
    assert precision.resolve("bf16") == "bf16" and precision.resolve("fp32") == "fp32"


def test_unknown_precision_is_a_sentence() -> None:
    with pytest.raises(FinetuneError, match="unknown precision 'fp16': fp32 | bf16 | auto"):
        precision.resolve("fp16")


def test_bf16_native_reads_torchs_cpu_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert precision.bf16_native() is True
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert precision.bf16_native() is False


def test_autocast_lowers_convolutions_only_for_bf16() -> None:
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with precision.autocast("fp32"):
        assert conv(x).dtype == torch.float32
    with precision.autocast("bf16"):
        y = conv(x)
    assert y.dtype == torch.bfloat16
    assert conv.weight.dtype == torch.float32  # parameters stay float32
    torch.testing.assert_close(y.float(), conv(x), atol=0.05, rtol=0.05)
