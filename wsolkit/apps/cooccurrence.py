"""Label co-occurrence rescoring of class scores (Bency et al., ECCV 2016, eq. 2-4).

``s_comb(b_i) = s_unary(b_i) + alpha * sum_{j != i} p(b_i | b_j) s_unary(b_j)`` with
``p(b_i | b_j) = |b_i and b_j| / |b_j|`` counted over the image labels of a training set.
Pure numpy functions; ``alpha`` is chosen on a validation set with :func:`choose_alpha`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from wsolkit.checks import check_integer
from wsolkit.errors import InputError
from wsolkit.eval.classification import multilabel_map


def cooccurrence_counts(label_sets: Iterable[Iterable[int]], num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: ``[i, j]`` images labelled with both i and j, ``[i, i]`` with i.

    Args:
        label_sets: the classes of each training image (repeats within an image count once).
        num_classes: C.

    Raises:
        InputError: a class index outside ``0 .. C - 1``.
    """
    num_classes = check_integer(num_classes, "num_classes", 1)
    counts = np.zeros((num_classes, num_classes), np.int64)
    for labels in label_sets:
        present = np.unique(np.asarray(list(labels), dtype=np.int64))
        if present.size and (present[0] < 0 or present[-1] >= num_classes):
            bad = present[0] if present[0] < 0 else present[-1]
            raise InputError(f"class index {bad} out of range for {num_classes} classes")
        counts[np.ix_(present, present)] += 1
    return counts


def pair_probabilities(counts: np.ndarray) -> np.ndarray:
    """(C, C) ``p[i, j] = p(b_i | b_j) = counts[i, j] / counts[j, j]`` (eq. 4), 0 on the diagonal.

    A class never seen (``counts[j, j] == 0``) gives a zero column.

    Raises:
        InputError: ``counts`` not a square matrix.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise InputError(f"co-occurrence counts must be a (C, C) matrix, got {counts.shape}")
    seen = np.diag(counts).copy()
    safe = np.where(seen > 0, seen, 1.0)
    probabilities = np.where(seen[None, :] > 0, counts / safe[None, :], 0.0)
    np.fill_diagonal(probabilities, 0.0)
    return probabilities


def rescore(unary: np.ndarray, probabilities: np.ndarray, alpha: float) -> np.ndarray:
    """Combined scores ``s_unary + alpha * s_unary @ p.T`` (eq. 2-3) of (C,) or (N, C) scores.

    Args:
        unary: class scores of one image (C,) or of N images (N, C).
        probabilities: (C, C) from :func:`pair_probabilities` (zero diagonal, so ``j != i``).
        alpha: weight of the pairwise term.

    Raises:
        InputError: shapes that do not match or a non-finite ``alpha``.
    """
    unary = np.asarray(unary, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not np.isfinite(alpha):
        raise InputError(f"alpha must be finite, got {alpha!r}")
    if probabilities.ndim != 2 or unary.shape[-1:] != probabilities.shape[:1] or (
            probabilities.shape[0] != probabilities.shape[1]):
        raise InputError(
            f"scores {unary.shape} do not match the (C, C) probabilities {probabilities.shape}"
        )
    # s_pair(b_i | b_j) = p(b_i | b_j) s(b_j), summed over j: (s @ p.T)[i]
    return unary + alpha * unary @ probabilities.T


def choose_alpha(unary: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                 alphas: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
                 ) -> tuple[float, dict[float, float]]:
    """The ``alpha`` whose rescored scores give the best classification mAP on validation data.

    mAP as :func:`wsolkit.eval.multilabel_map` (VOC AP per class with a positive image).

    Args:
        unary: (N, C) class scores (e.g. probabilities) of the validation images.
        labels: (N, C) bool image labels.
        probabilities: (C, C) from :func:`pair_probabilities` of a training set.
        alphas: candidates; ties go to the smallest.

    Returns:
        ``(best_alpha, {alpha: mAP})``.

    Raises:
        InputError: no class has a positive validation image.
    """
    results = {}
    for alpha in sorted(alphas):
        value, _ = multilabel_map(rescore(unary, probabilities, alpha), labels)
        if value is None:
            raise InputError("no class has a positive image: cannot compute mAP")
        results[float(alpha)] = value
    best = max(results, key=lambda a: (results[a], -a))
    return best, results


__all__ = [
    "choose_alpha",
    "cooccurrence_counts",
    "pair_probabilities",
    "rescore",
]
