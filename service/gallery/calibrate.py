"""A gallery's threshold for a target false-accept rate, from its own enrolled faces.

Genuine pairs: two faces of one subject; impostor pairs: faces of different subjects. The
threshold is the lowest cosine similarity at which at most target_far of the impostor pairs
pass (similarity >= threshold); the true-accept rate is the share of genuine pairs that pass
there, and the ROC AUC is P(genuine > impostor) (ties count half; Mann-Whitney).

Large galleries are sampled, with a fixed seed so a calibration can be repeated: at most
MAX_FACES_PER_SUBJECT faces of a subject form its genuine pairs, and beyond EXACT_FACES faces
the impostor pairs are max_pairs random ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from service.gallery.errors import TooFewPairs

MIN_GENUINE_PAIRS = 10
MAX_FACES_PER_SUBJECT = 300
EXACT_FACES = 2000
MAX_PAIRS = 2_000_000


@dataclass(frozen=True)
class Calibration:
    target_far: float
    threshold: float
    far: float  # the false-accept rate reached on the impostor pairs at `threshold`
    tar: float
    auc: float
    genuine_pairs: int
    impostor_pairs: int
    sampled: bool

    def report(self) -> dict[str, Any]:
        return asdict(self)


def pair_scores(
    matrix: np.ndarray, subject_ids: np.ndarray, max_pairs: int = MAX_PAIRS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, bool]:
    """matrix: (N, D) unit rows; subject_ids: (N,). -> (genuine, impostor, sampled): the
    cosine similarities of the pairs, float64."""
    rng = np.random.default_rng(seed)
    sampled = False
    genuine = []
    for subject in np.unique(subject_ids):
        rows = np.flatnonzero(subject_ids == subject)
        if len(rows) > MAX_FACES_PER_SUBJECT:
            rows = rng.choice(rows, MAX_FACES_PER_SUBJECT, replace=False)
            sampled = True
        if len(rows) > 1:
            sims = matrix[rows].astype(np.float64) @ matrix[rows].T.astype(np.float64)
            genuine.append(sims[np.triu_indices(len(rows), 1)])
    n = len(matrix)
    if n <= EXACT_FACES:
        i, j = np.triu_indices(n, 1)
    else:
        i = rng.integers(0, n, max_pairs)
        j = rng.integers(0, n, max_pairs)
        sampled = True
    keep = subject_ids[i] != subject_ids[j]
    i, j = i[keep], j[keep]
    impostor = np.einsum("ij,ij->i", matrix[i].astype(np.float64), matrix[j].astype(np.float64))
    return (np.concatenate(genuine) if genuine else np.zeros(0)), impostor, sampled


def auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """P(a genuine pair scores above an impostor pair), ties counted half."""
    imp = np.sort(impostor)
    below = np.searchsorted(imp, genuine, "left").astype(np.float64)
    ties = np.searchsorted(imp, genuine, "right") - below
    return float((below + 0.5 * ties).sum() / (len(genuine) * len(imp)))


def calibrate(
    genuine: np.ndarray, impostor: np.ndarray, target_far: float, sampled: bool = False
) -> Calibration:
    """The threshold for target_far; TooFewPairs when the pairs cannot resolve that rate."""
    needed = math.ceil(1.0 / target_far)
    if len(impostor) < needed or len(genuine) < MIN_GENUINE_PAIRS:
        raise TooFewPairs(
            f"target_far {target_far:g} needs at least {needed} impostor pairs (faces of "
            f"different subjects; fewer cannot resolve that rate) and {MIN_GENUINE_PAIRS} "
            f"genuine pairs (two faces of one subject); this gallery has {len(impostor)} and "
            f"{len(genuine)}. Enrol more subjects, and several faces of each"
        )
    ordered = np.sort(impostor)[::-1]
    allowed = int(math.floor(target_far * len(ordered)))  # impostor pairs that may pass
    # the smallest threshold above the (allowed+1)-th best impostor score: at most `allowed`
    # impostor pairs reach it (fewer where scores tie)
    threshold = float(np.nextafter(ordered[allowed], np.inf)) if allowed < len(ordered) else -1.0
    # rounded up to 6 decimals (what JSON shows): rounding up never lets another impostor in
    threshold = min(max(math.ceil(threshold * 1e6) / 1e6, -1.0), 1.0)
    return Calibration(
        target_far=target_far,
        threshold=threshold,
        far=float((impostor >= threshold).mean()),
        tar=float((genuine >= threshold).mean()),
        auc=auc(genuine, impostor),
        genuine_pairs=int(len(genuine)),
        impostor_pairs=int(len(impostor)),
        sampled=sampled,
    )
