"""Greedy non-maximum suppression and the box utilities proposals and cleaning need.

Boxes are ``(K, 4)`` ``x0, y0, x1, y1`` pixel-edge coordinates (``x1 = x0 + width``), numpy
arrays or torch tensors; results are numpy. IoU is ``inter / union`` with
``area = (x1 - x0) * (y1 - y0)`` (no ``+ 1``), as :func:`wsolkit.eval.detection.box_iou`.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import numpy as np

from wsolkit.checks import check_boxes, check_scores
from wsolkit.errors import InputError

__all__ = ["box_areas", "clip_boxes", "expand_boxes", "nms", "valid_boxes"]


def _check_size(size: Any) -> tuple[float, float]:
    try:
        height, width = size
    except (TypeError, ValueError):
        raise InputError(f"size must be a pair (H, W), got {size!r}") from None
    for item in (height, width):
        if isinstance(item, bool) or not isinstance(item, Real) or not item > 0:
            raise InputError(f"size must be a pair of positive numbers (H, W), got {size!r}")
    return float(height), float(width)


def box_areas(boxes: Any) -> np.ndarray:
    """Areas ``max(x1 - x0, 0) * max(y1 - y0, 0)`` of ``(K, 4)`` boxes as ``(K,)`` float64."""
    array = check_boxes(boxes)
    return np.clip(array[:, 2] - array[:, 0], 0, None) * np.clip(array[:, 3] - array[:, 1], 0,
                                                                 None)


def clip_boxes(boxes: Any, size: tuple[int, int]) -> np.ndarray:
    """Clip boxes to an image of ``size`` ``(H, W)``: x into ``[0, W]``, y into ``[0, H]``.

    A box entirely outside the image becomes an empty box on the border (zero width or
    height); use :func:`valid_boxes` to find those.

    Returns:
        ``(K, 4)`` float32 numpy array.

    Raises:
        InputError: Boxes not finite ``(K, 4)`` or a bad size.
    """
    array = check_boxes(boxes)
    height, width = _check_size(size)
    array[:, 0::2] = np.clip(array[:, 0::2], 0.0, width)
    array[:, 1::2] = np.clip(array[:, 1::2], 0.0, height)
    return array.astype(np.float32)


def expand_boxes(boxes: Any, margin: float, size: tuple[int, int] | None = None) -> np.ndarray:
    """Grow (or, with a negative margin, shrink) each box by a fraction of its own size.

    Each side moves outwards by ``margin * width`` (left, right) or ``margin * height``
    (top, bottom), so ``margin=0.1`` makes a box 1.2 times as wide and high, about the same
    centre. A shrinking margin never inverts a box (``margin >= -0.5`` keeps at least a point).

    Args:
        boxes: ``(K, 4)`` boxes, numpy or torch.
        margin: Fraction of the box's width/height added on each side, ``>= -0.5``.
        size: Optional ``(H, W)`` to clip the result to.

    Returns:
        ``(K, 4)`` float32 numpy array.

    Raises:
        InputError: Bad boxes, margin not a finite number ``>= -0.5``, or a bad size.
    """
    array = check_boxes(boxes)
    if isinstance(margin, bool) or not isinstance(margin, Real) or not np.isfinite(margin) \
            or margin < -0.5:
        raise InputError(f"margin must be a finite number >= -0.5, got {margin!r}")
    width = array[:, 2] - array[:, 0]
    height = array[:, 3] - array[:, 1]
    grow = np.stack([-width, -height, width, height], axis=1) * float(margin)
    out = array + grow
    if size is not None:
        return clip_boxes(out, size)
    return out.astype(np.float32)


def valid_boxes(boxes: Any, size: tuple[int, int] | None = None, min_size: float = 1.0
                ) -> np.ndarray:
    """Which boxes have width and height ``>= min_size`` (inside the image when ``size``).

    With ``size``, the test applies to the part of each box inside the image.

    Returns:
        ``(K,)`` bool numpy array.
    """
    array = check_boxes(boxes)
    if size is not None:
        array = clip_boxes(array, size).astype(np.float64)
    return ((array[:, 2] - array[:, 0]) >= min_size) & ((array[:, 3] - array[:, 1]) >= min_size)


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
