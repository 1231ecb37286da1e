"""Siamese tower training: triplet loss and semi-hard mining on tiny tensors, calibration
maths, and the training script end to end on a tiny generated dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from scripts.train.similarity.cli import main
from scripts.train.similarity.metrics import (
    accuracy_threshold,
    calibrate,
    far_threshold,
    pair_scores,
    pairwise_distances,
    roc_auc,
    semi_hard_triplet_loss,
)
from service.cards import read_card
from service.tasks.faces import EmbedderSettings


def points(*xy: tuple[float, float]) -> torch.Tensor:
    return torch.tensor(xy, dtype=torch.float32)


def test_pairwise_distances():
    d = pairwise_distances(points((0, 0), (3, 4), (0, 1)))
    expected = [[0, 5, 1], [5, 0, math.sqrt(18)], [1, math.sqrt(18), 0]]
    np.testing.assert_allclose(d.numpy(), expected, atol=1e-5)


def test_semi_hard_negative_is_the_closest_one_farther_than_the_positive():
    # anchor 0 at x=0, positive 1 at x=1 (d_ap = 1); negatives at 0.5 (hard: closer than the
    # positive), 1.1 (semi-hard, inside the margin) and 3 (easy).
    emb = points((0, 0), (1, 0), (0.5, 0), (1.1, 0), (3, 0))
    labels = torch.tensor([0, 0, 1, 2, 3])
    loss, stats = semi_hard_triplet_loss(emb, labels, margin=0.5)
    # pair (0,1): d_ap 1, semi-hard n at 1.1 -> 1 - 1.1 + 0.5 = 0.4
    # pair (1,0): d_ap 1, negatives at 0.5, 0.1, 2 from anchor 1 -> semi-hard 2 -> 0 loss
    assert loss.item() == pytest.approx((0.4 + 0.0) / 2, abs=1e-5)
    assert stats == {"active": 0.5, "pairs": 2.0}


def test_without_a_semi_hard_negative_the_farthest_negative_is_used():
    emb = points((0, 0), (2, 0), (0.5, 0), (1.0, 0))  # both negatives closer than the positive
    labels = torch.tensor([0, 0, 1, 1])
    loss, stats = semi_hard_triplet_loss(emb, labels, margin=0.2)
    # pair (0,1): farthest negative from 0 is at 1.0 -> 2 - 1 + 0.2 = 1.2
    # pair (1,0): negatives at 1.5, 1.0 from anchor 1, none beyond d_ap = 2 -> 2 - 1.5 + 0.2
    # pairs (2,3) and (3,2) (d_ap 0.5) have negatives 1.5 and 1.0 away: no loss
    assert loss.item() == pytest.approx((1.2 + 0.7 + 0 + 0) / 4, abs=1e-5)
    assert stats == {"active": 0.5, "pairs": 4.0}


def test_well_separated_identities_have_zero_loss_and_a_batch_of_one_identity_is_skipped():
    emb = points((0, 0), (0.1, 0), (5, 5), (5.1, 5))
    loss, stats = semi_hard_triplet_loss(emb, torch.tensor([0, 0, 1, 1]), margin=0.2)
    assert loss.item() == 0.0 and stats["active"] == 0.0
    loss, stats = semi_hard_triplet_loss(emb, torch.tensor([0, 0, 0, 0]), margin=0.2)
    assert loss.item() == 0.0 and stats["pairs"] == 0.0


def test_loss_gradient_pulls_positives_together():
    emb = points((0, 0), (1, 0), (1.1, 0)).requires_grad_()
    loss, _ = semi_hard_triplet_loss(emb, torch.tensor([0, 0, 1]), margin=0.5)
    loss.backward()
    assert emb.grad is not None
    assert emb.grad[1, 0] > 0  # descent moves the positive (x=1) towards the anchor (x=0)
    assert emb.grad[2, 0] < 0  # and the negative (x=1.1) away from it


@pytest.mark.parametrize(
    ("scores", "positive", "auc"),
    [
        ([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], 1.0),
        ([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], 0.0),
        ([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0], 0.5),  # ties count half
        ([0.9, 0.3, 0.5, 0.1], [1, 1, 0, 0], 0.75),
    ],
)
def test_roc_auc(scores, positive, auc):
    assert roc_auc(np.array(scores), np.array(positive, bool)) == pytest.approx(auc)


def test_accuracy_threshold_separates_halfway():
    t, acc = accuracy_threshold(np.array([0.9, 0.7, 0.4, 0.2]), np.array([1, 1, 0, 0], bool))
    assert (t, acc) == (pytest.approx(0.55), 1.0)
    t, acc = accuracy_threshold(np.array([0.9, 0.6, 0.5, 0.2]), np.array([1, 0, 1, 0], bool))
    assert acc == 0.75 and 0.2 < t <= 0.9


def test_far_threshold():
    scores = np.array([0.95, 0.9, 0.6, 0.85, 0.5, 0.3, 0.1, 0.05])
    positive = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    t, tar = far_threshold(scores, positive, far=0.0)  # no negative may pass
    assert 0.85 < t < 0.86 and tar == pytest.approx(2 / 3)
    t, tar = far_threshold(scores, positive, far=0.2)  # one of five may
    assert 0.5 < t <= 0.85 and tar == 1.0


def test_pair_scores_and_calibrate():
    emb = np.array([[1, 0], [0.99, 0.14], [0, 1], [0.1, 0.99]], np.float32)
    scores, same = pair_scores(emb, np.array([0, 0, 1, 1]))
    assert same.sum() == 2 and len(scores) == 6
    cal = calibrate(scores, same, target_far=0.0)
    assert cal["roc_auc"] == 1.0 and cal["accuracy"] == 1.0
    assert cal["positive_pairs"] == 2 and cal["negative_pairs"] == 4


def test_training_script_end_to_end(tmp_path: Path, capsys):
    data = tmp_path / "toy"
    main(["toy", str(data), "--identities", "10", "--per-identity", "6", "--size", "32"])
    assert len(list(data.iterdir())) == 10
    result = main(
        [
            "train", str(data), "--name", "toy-faces", "--out", str(tmp_path / "models"),
            "--checkpoint", str(tmp_path / "run" / "tower.pt"), "--size", "32", "--dim", "32",
            "--width", "8", "--epochs", "6", "--pk", "4", "4", "--val-fraction", "0.3",
            "--threads", "1", "--quiet",
        ]
    )  # fmt: skip
    assert result is not None
    first, last = result.epoch_losses[0], result.epoch_losses[-1]
    assert first > 0 and last < 0.5 * first, result.epoch_losses
    assert 0.0 <= result.calibration["roc_auc"] <= 1.0
    assert result.calibration["positive_pairs"] == 3 * 15  # 3 held-out identities x C(6, 2)
    assert "ROC AUC" in capsys.readouterr().out

    loaded = read_card(result.model_dir)
    card = loaded.card
    assert card.task == "face-embed" and card.preprocess.size == (32, 32)
    cos = card.postprocess.thresholds["cosine"]
    assert cos == pytest.approx(result.calibration["threshold_accuracy"])
    assert "calibrated" in card.postprocess.threshold_source
    settings = EmbedderSettings.from_card(card)  # the service accepts the card
    assert settings.thresholds["euclidean"] == pytest.approx(math.sqrt(2 - 2 * cos))
    sess = ort.InferenceSession(str(loaded.onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0]
    assert out.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)

    # scripts/export/cli.py face re-exports the checkpoint with the same calibration
    from scripts.export.cli import main as export_main

    export_main(["face", "--checkpoint", str(result.checkpoint), "--name", "again",
                 "--out", str(tmp_path / "models")])  # fmt: skip
    again = json.loads((tmp_path / "models" / "again" / "model.json").read_text())
    assert again["postprocess"]["thresholds"]["cosine"] == pytest.approx(cos)
    assert again["export"]["parity_vs_torch"]["max_abs_diff"] < 1e-4
