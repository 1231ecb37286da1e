"""Triplet loss with semi-hard mining, and the threshold calibration on held-out pairs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

# --- loss and mining --------------------------------------------------------------------


def pairwise_distances(emb: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) euclidean distances; the sqrt is kept differentiable at 0."""
    sq = (emb * emb).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T).clamp_min(0.0)
    return torch.sqrt(d2 + 1e-12)


def semi_hard_triplet_loss(
    emb: torch.Tensor, labels: torch.Tensor, margin: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over anchor-positive pairs of max(0, d(a,p) - d(a,n) + margin), the negative n
    mined per pair: the closest one with d(a,n) > d(a,p) (semi-hard), or if none is, the
    farthest. Pairs whose anchor has no negative in the batch are skipped.
    -> (loss, {"active": fraction of pairs with loss > 0, "pairs": count})."""
    d = pairwise_distances(emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos = same & ~eye
    neg = ~same
    d_ap = d[:, :, None]  # (a, p, 1)
    d_an = d[:, None, :]  # (a, 1, n)
    inf = torch.tensor(float("inf"), device=emb.device)
    farther = neg[:, None, :] & (d_an > d_ap)
    semi_hard = torch.where(farther, d_an, inf).amin(dim=2)
    hardest_fallback = torch.where(neg[:, None, :], d_an, -inf).amax(dim=2)
    chosen = torch.where(torch.isfinite(semi_hard), semi_hard, hardest_fallback)
    valid = pos & neg.any(dim=1)[:, None]
    if not bool(valid.any()):
        return emb.sum() * 0.0, {"active": 0.0, "pairs": 0.0}
    losses = torch.relu(d[valid] - chosen[valid] + margin)
    stats = {"active": float((losses > 0).float().mean()), "pairs": float(valid.sum())}
    return losses.mean(), stats


# --- calibration ------------------------------------------------------------------------


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive pair scores above a random negative one (ties
    count half): the area under the ROC curve, by ranks (Mann-Whitney U)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        raise ValueError("ROC AUC needs both positive and negative pairs")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average rank within runs of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def accuracy_threshold(scores: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """The threshold t maximising accuracy of `score >= t` -> (t, accuracy); t lies halfway
    between the two scores it separates."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positive[order]
    n = len(s)
    tp = np.r_[0, np.cumsum(p)]  # accepting the top k pairs, k = 0..n
    fp = np.r_[0, np.cumsum(~p)]
    accuracy = (tp + (fp[-1] - fp)) / n
    # only cut where the score changes, so equal scores fall on one side
    cuttable = np.r_[True, s[1:] < s[:-1], True]
    k = int(np.argmax(np.where(cuttable, accuracy, -1.0)))
    if k == 0:
        t = s[0] + 1e-6
    elif k == n:
        t = s[-1] - 1e-6
    else:
        t = (s[k - 1] + s[k]) / 2.0
    return float(t), float(accuracy[k])


def far_threshold(scores: np.ndarray, positive: np.ndarray, far: float) -> tuple[float, float]:
    """The lowest threshold whose false-accept rate on these pairs is <= far -> (t, TAR)."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    negatives = np.sort(scores[~positive])[::-1]
    allowed = int(math.floor(far * len(negatives)))
    t = float(np.nextafter(negatives[allowed], np.inf)) if allowed < len(negatives) else -1.0
    return t, float((scores[positive] >= t).mean())


def pair_scores(
    emb: np.ndarray, labels: np.ndarray, max_negatives: int = 20000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of every same-identity pair and of (up to max_negatives sampled)
    different-identity pairs of unit embeddings. -> (scores, is_same)."""
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    keep = np.flatnonzero(same)
    negatives = np.flatnonzero(~same)
    if len(negatives) > max_negatives:
        negatives = np.random.default_rng(seed).choice(negatives, max_negatives, replace=False)
    idx = np.r_[keep, negatives]
    return np.einsum("nd,nd->n", emb[i[idx]], emb[j[idx]]), same[idx]


def calibrate(scores: np.ndarray, positive: np.ndarray, target_far: float) -> dict[str, Any]:
    t_acc, acc = accuracy_threshold(scores, positive)
    t_far, tar = far_threshold(scores, positive, target_far)
    return {
        "pairs": int(len(scores)),
        "positive_pairs": int(positive.sum()),
        "negative_pairs": int((~positive).sum()),
        "roc_auc": roc_auc(scores, positive),
        "threshold_accuracy": t_acc,
        "accuracy": acc,
        "target_far": target_far,
        "threshold_at_far": t_far,
        "tar_at_far": tar,
    }
