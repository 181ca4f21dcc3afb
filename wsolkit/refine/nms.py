"""Greedy non-maximum suppression of boxes (box geometry: :mod:`wsolkit.refine.boxes`).

Boxes are ``(K, 4)`` ``x0, y0, x1, y1`` pixel-edge coordinates (``x1 = x0 + width``), numpy
arrays or torch tensors; results are numpy. IoU is ``inter / union`` with
``area = (x1 - x0) * (y1 - y0)`` (no ``+ 1``), as :func:`wsolkit.eval.detection.box_iou`.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np

from wsolkit.errors import InputError

# The box utilities lived here before wsolkit.refine.boxes; old imports keep working.
from wsolkit.refine.boxes import (  # noqa: F401
    box_areas,
    check_boxes,
    check_scores,
    clip_boxes,
    expand_boxes,
    valid_boxes,
)

__all__ = ["box_areas", "clip_boxes", "expand_boxes", "nms", "valid_boxes"]


def _iou_one(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box with ``(M, 4)`` boxes; a zero union gives 0."""
    inter_w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0,
                      None)
    inter_h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0,
                      None)
    inter = inter_w * inter_h
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    areas = np.clip(others[:, 2] - others[:, 0], 0, None) * np.clip(
        others[:, 3] - others[:, 1], 0, None)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: Any, scores: Any, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy non-maximum suppression.

    Boxes are visited by descending score (a stable sort: equal scores keep their input
    order); each kept box removes every later box whose IoU with it is ``> iou_threshold``.
    This is the rule of ``cv2.dnn.NMSBoxes`` (with ``eta=1``, no score threshold) and
    ``torchvision.ops.nms``. Two empty boxes have IoU 0 here (OpenCV counts them as 1).

    Args:
        boxes: ``(K, 4)`` ``x0, y0, x1, y1`` boxes, numpy or torch.
        scores: ``(K,)`` finite scores, numpy, torch or a sequence.
        iou_threshold: In ``[0, 1]``; 1 keeps every box, 0 keeps only boxes that do not
            overlap a better one.

    Returns:
        ``(N,)`` int64 indices of the kept boxes, by descending score.

    Raises:
        InputError: Bad boxes or scores, lengths differ, or a threshold outside ``[0, 1]``.
    """
    array = check_boxes(boxes)
    values = check_scores(scores, "scores", array.shape[0])  # one per box
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, Real) \
            or not 0.0 <= float(iou_threshold) <= 1.0:
        raise InputError(f"iou_threshold must lie in [0, 1], got {iou_threshold!r}")
    order = np.argsort(-values, kind="stable")
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        if not rest.size:
            break
        overlap = _iou_one(array[best], array[rest])
        order = rest[overlap <= float(iou_threshold)]
    return np.asarray(keep, dtype=np.int64)
