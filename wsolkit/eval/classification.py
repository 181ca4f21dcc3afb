"""Classification mAP of multi-label scores (fine-tuning validation, co-occurrence tuning)."""

from __future__ import annotations

import numpy as np

from wsolkit.errors import InputError
from wsolkit.eval.detection import average_precision

__all__ = ["multilabel_map"]


def multilabel_map(scores: np.ndarray, targets: np.ndarray) -> tuple[float | None, list]:
    """Mean over classes of the average precision of ranking the images by class score.

    Args:
        scores: (N, C) scores (e.g. sigmoid probabilities).
        targets: (N, C) bool, True where the image shows the class.

    Returns:
        ``(mAP, per_class)``: mAP over the classes with at least one positive image (None if
        there is none) and, per class, its AP or None (no positive image).
    """
    scores = np.asarray(scores, np.float64)
    targets = np.asarray(targets, bool)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise InputError(f"scores {scores.shape} and targets {targets.shape} must be (N, C)")
    per_class: list[float | None] = []
    for c in range(scores.shape[1]):
        positives = int(targets[:, c].sum())
        per_class.append(
            average_precision(scores[:, c], targets[:, c], positives) if positives else None
        )
    values = [ap for ap in per_class if ap is not None]
    return (float(np.mean(values)) if values else None), per_class
