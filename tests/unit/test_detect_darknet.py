"""The Darknet reader and exporter against a tiny cfg (tests/support/darknet.py): every layer
type, weights round trip, YOLO decode by hand, onnxruntime vs PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from scripts.export.darknet import (
    Darknet,
    MaxPool,
    YoloHead,
    export_darknet,
    load_darknet_weights,
    override_yolo_masks,
    parse_cfg,
    save_darknet_weights,
)
from tests.support.darknet import LABELS, TINY_CFG, conv, randomized, section


@pytest.fixture(scope="module")
def tiny_darknet(tmp_path_factory) -> tuple[Path, Path, Darknet]:
    root = tmp_path_factory.mktemp("darknet")
    cfg = root / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    model = randomized()
    weights = root / "tiny.weights"
    save_darknet_weights(model, weights, seen=1234)
    return cfg, weights, model


def test_parse_cfg_sections_and_comments():
    blocks = parse_cfg("[net]\n# c\nwidth=32 # trailing\n\n[yolo]\nmask = 0, 1\n")
    assert blocks == [{"type": "net", "width": "32"}, {"type": "yolo", "mask": "0, 1"}]
    with pytest.raises(ValueError, match="must start with a \\[net\\]"):
        parse_cfg("[convolutional]\nfilters=3\n")
    with pytest.raises(ValueError, match="line 2"):
        parse_cfg("[net]\nnonsense\n")


def test_shapes_of_the_tiny_network():
    model = Darknet(parse_cfg(TINY_CFG)).eval()
    assert model.num_classes == 3 and model.input_hw == (64, 64)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 3 * (8 * 8 + 16 * 16), 5 + 3)


def test_unsupported_layers_and_wrong_head_width_are_refused():
    with pytest.raises(ValueError, match="unsupported Darknet section \\[dropout\\]"):
        Darknet(parse_cfg(TINY_CFG.replace("[upsample]", "[dropout]")))
    with pytest.raises(ValueError, match="expects 24 input channels"):
        Darknet(parse_cfg(TINY_CFG.replace("filters=24", "filters=21", 1)))


def test_weights_round_trip(tiny_darknet):
    _, weights, source = tiny_darknet
    fresh = Darknet(parse_cfg(TINY_CFG))
    header = load_darknet_weights(fresh, weights)
    assert header == {"major": 0, "minor": 2, "revision": 0, "seen": 1234}
    for (key, want), have in zip(
        source.state_dict().items(), fresh.state_dict().values(), strict=True
    ):
        if want.is_floating_point():
            torch.testing.assert_close(have, want, rtol=0, atol=0, msg=key)


def test_weights_for_another_cfg_are_refused(tiny_darknet, tmp_path):
    _, weights, _ = tiny_darknet
    data = weights.read_bytes()
    short, long = tmp_path / "short.weights", tmp_path / "long.weights"
    short.write_bytes(data[:-4])
    long.write_bytes(data + b"\0\0\0\0")
    model = Darknet(parse_cfg(TINY_CFG))
    with pytest.raises(ValueError, match="needs more"):
        load_darknet_weights(model, short)
    with pytest.raises(ValueError, match="1 floats left over"):
        load_darknet_weights(model, long)


def test_weights_order_bn_beta_gamma_mean_var_then_kernel(tmp_path):
    """Darknet's file order, written by hand for a single conv layer."""
    cfg = (  # one conv of 5 filters on 1 channel: a [yolo] head of 1 anchor and 0 classes
        "[net]\nwidth=8\nheight=8\nchannels=1\n[convolutional]\nbatch_normalize=1\nfilters=5\n"
        "size=1\nstride=1\npad=1\nactivation=linear\n"
        "[yolo]\nmask=0\nanchors=1,1\nclasses=0\nnum=1\n"
    )
    model = Darknet(parse_cfg(cfg))
    values = np.arange(5 * 4 + 5 * 1, dtype=np.float32)  # beta, gamma, mean, var, kernel
    path = tmp_path / "w.weights"
    path.write_bytes(np.array([0, 1, 0, 7], np.int32).tobytes() + values.tobytes())
    header = load_darknet_weights(model, path)
    assert header["seen"] == 7  # major*10+minor < 2: a 32-bit "seen"
    conv, norm = model.convs[0]
    assert norm is not None
    assert norm.bias.tolist() == [0, 1, 2, 3, 4]
    assert norm.weight.tolist() == [5, 6, 7, 8, 9]
    assert norm.running_mean.tolist() == [10, 11, 12, 13, 14]
    assert norm.running_var.tolist() == [15, 16, 17, 18, 19]
    assert conv.weight.flatten().tolist() == [20, 21, 22, 23, 24]


def test_yolo_decode_by_hand():
    """One cell, one anchor, 2 classes: cx = (sigmoid(tx) + col) * stride, w = exp(tw) * anchor."""
    head = YoloHead([(10.0, 20.0)], classes=2, input_hw=(32, 64))
    raw = torch.zeros(1, 7, 2, 4)  # (N, A*(5+C), H, W): stride 16 in both directions
    raw[0, :, 1, 2] = torch.tensor([0.5, -1.0, np.log(2.0), np.log(0.5), 2.0, -3.0, 0.0])
    out = head(raw)
    assert out.shape == (1, 8, 7)
    row = out[0, 1 * 4 + 2]  # cells in row-major order
    sig = torch.sigmoid
    expected = [
        (sig(torch.tensor(0.5)) + 2) * 16,
        (sig(torch.tensor(-1.0)) + 1) * 16,
        20.0,
        10.0,
        sig(torch.tensor(2.0)),
        sig(torch.tensor(-3.0)),
        0.5,
    ]
    torch.testing.assert_close(row, torch.tensor([float(v) for v in expected]))
    # an all-zero cell: centre of the cell, anchor size, probabilities 0.5
    torch.testing.assert_close(out[0, 0], torch.tensor([8.0, 8.0, 10.0, 20.0, 0.5, 0.5, 0.5]))


def test_stride_one_maxpool_pads_right_and_bottom():
    x = torch.tensor([[[[1.0, 5.0, 2.0], [0.0, 3.0, 9.0], [4.0, 0.0, 0.0]]]])
    got = MaxPool(2, 1, 1)(x)
    assert got[0, 0].tolist() == [[5, 9, 9], [4, 9, 9], [4, 0, 0]]


def test_export_parity_and_card(tiny_darknet, tmp_path):
    cfg, weights, model = tiny_darknet
    folder = export_darknet(cfg, weights, name="tiny-yolo", labels=LABELS, out_dir=tmp_path)
    card = json.loads((folder / "model.json").read_text())
    assert card["task"] == "detect" and card["labels"] == LABELS
    assert card["inputs"][0]["shape"] == ["batch", 3, 64, 64]
    assert card["outputs"][0]["shape"] == ["batch", 960, 8]
    assert card["preprocess"]["resize"] == "letterbox" and card["preprocess"]["size"] == [64, 64]
    assert card["postprocess"]["layout"] == "yolov5"
    assert card["source"]["darknet_header"]["seen"] == 1234
    assert card["export"]["parity_vs_torch"]["max_abs_diff"] < 1e-3
    # the file on disk, batch 3 (dynamic axis), against the weights loaded into torch
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    (got,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert np.ptp(got[..., 4]) > 0.1  # not a constant output: the weights matter


def test_export_refuses_a_wrong_label_count(tiny_darknet, tmp_path):
    cfg, weights, _ = tiny_darknet
    with pytest.raises(ValueError, match="2 labels for a cfg with 3 classes"):
        export_darknet(cfg, weights, name="x", labels=LABELS[:2], out_dir=tmp_path)
    assert not (tmp_path / "x").exists()


V4_TINY_STYLE = "\n".join(
    [
        section("net", width=32, height=32, channels=3),
        conv(16, stride=2),
        section("route", layers=-1, groups=2, group_id=1),
        conv(8, activation="mish"),
        section("route", layers="-1,-2"),
        section("maxpool", size=2, stride=2),
        conv(21, size=1, bn=False, activation="linear"),
        section("yolo", mask="0,1,2", anchors="3,4, 6,8, 9,9", classes=2, num=3, scale_x_y=1.05),
    ]
)


def test_yolov4_tiny_features_route_groups_mish_scale_xy(tmp_path):
    cfg = tmp_path / "v4.cfg"
    cfg.write_text(V4_TINY_STYLE)
    model = Darknet(parse_cfg(V4_TINY_STYLE))
    assert [layer.out_channels for layer in model.layers[:4]] == [16, 8, 8, 16]
    folder = export_darknet(cfg, None, name="v4ish", labels=["a", "b"], out_dir=tmp_path)
    card = json.loads((folder / "model.json").read_text())
    assert card["outputs"][0]["shape"] == ["batch", 8 * 8 * 3, 7]
    assert card["export"]["parity_vs_torch"]["max_abs_diff"] < 1e-3
    # scale_x_y: x = (sigmoid(t) * s - (s - 1) / 2 + col) * stride
    head = YoloHead([(1.0, 1.0)], classes=0, input_hw=(8, 8), scale_xy=1.05)
    raw = torch.zeros(1, 5, 1, 1)
    raw[0, 0] = 2.0
    expected = (torch.sigmoid(torch.tensor(2.0)) * 1.05 - 0.025) * 8
    torch.testing.assert_close(head(raw)[0, 0, 0], expected)


def test_yolo_masks_override_picks_the_anchors_each_head_decodes_with(tmp_path):
    """The cfg's masks are 3,4,5 and 0,1,2; the override sets the second head to 1,2,3, as
    pjreddie's yolov3-tiny.weights were trained, and the card says what changed."""
    blocks = parse_cfg(TINY_CFG)
    note = override_yolo_masks(blocks, [(3, 4, 5), (1, 2, 3)])
    assert note == "[yolo] 1: mask 0,1,2 -> 1,2,3"
    heads = [m for m in Darknet(blocks).blocks if isinstance(m, YoloHead)]
    pairs = [(4, 5), (8, 10), (12, 14), (20, 24), (30, 28), (50, 60)]
    assert heads[0].anchors.tolist() == [list(map(float, pairs[i])) for i in (3, 4, 5)]
    assert heads[1].anchors.tolist() == [list(map(float, pairs[i])) for i in (1, 2, 3)]
    assert override_yolo_masks(parse_cfg(TINY_CFG), [(3, 4, 5), (0, 1, 2)]) == "as in the cfg"
    with pytest.raises(ValueError, match="1 masks for a cfg with 2"):
        override_yolo_masks(parse_cfg(TINY_CFG), [(0, 1, 2)])

    cfg, weights = tmp_path / "tiny.cfg", tmp_path / "tiny.weights"
    cfg.write_text(TINY_CFG)
    save_darknet_weights(randomized(seed=2), weights)
    folder = export_darknet(
        cfg, weights, name="m", labels=LABELS, out_dir=tmp_path, yolo_masks=[(3, 4, 5), (1, 2, 3)]
    )
    card = json.loads((folder / "model.json").read_text())
    assert card["source"]["yolo_masks"] == "[yolo] 1: mask 0,1,2 -> 1,2,3"
