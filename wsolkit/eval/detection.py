"""VOC-style detection average precision (``DetectionAP``), ``box_iou`` and ``average_precision``.

The protocol follows the PASCAL VOC devkit (``VOCevaldet.m``; ``voc_eval.py`` of
py-faster-rcnn / Detectron), per class:

1. All detections of the class over the whole dataset are ranked by descending score. The
   sort is stable: equal scores keep the order of ``update`` calls, then the order within the
   image (the devkit's ``np.argsort`` leaves ties in an unspecified order).
2. Each detection, in rank order, takes the GT box of its class in its image with the highest
   IoU (the first one on ties), **over all GT boxes of that class, matched, unmatched and
   ignored alike**, as the devkit does. If that IoU is ``>= iou_threshold`` (the MATLAB
   devkit's ``>=``; ``voc_eval.py`` uses ``>``): an ignored GT (VOC ``difficult``, COCO
   ``iscrowd``) makes the detection neither TP nor FP; an unmatched GT makes it a TP and marks
   the GT matched; an already matched GT makes it a FP (duplicate). Below the threshold, or
   with no GT of the class in the image, it is a FP. So a second detection whose best GT is
   already taken is a FP even if it also overlaps another, unmatched GT above the threshold
   (unlike COCO's matching, which would try the next GT).
3. Recall is divided by the number of non-ignored GT boxes of the class; AP is the area under
   the precision envelope ("all points", VOC2010+) or the mean of the 11 precisions at recall
   ``np.arange(0.0, 1.1, 0.1)`` (VOC2007, ``use_07_metric``; those float thresholds are the
   devkit's, e.g. the fourth one is ``0.30000000000000004``).

**Box convention.** wsolkit boxes are continuous pixel-edge coordinates (``x1 = x0 + width``),
so IoU uses ``area = (x1 - x0) * (y1 - y0)``, without the devkit's ``+ 1``: VOC annotations
are inclusive corners (``xmax`` is the last pixel column). Convert VOC boxes to edges
(``x1 = xmax + 1``; see ``wsolkit.data``) and the two IoUs agree exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsolkit.checks import check_boxes as _check_boxes
from wsolkit.checks import check_labels, check_scores, to_numpy
from wsolkit.errors import InputError

__all__ = ["DetectionAP", "average_precision", "box_iou"]

_VOC07_RECALLS = np.arange(0.0, 1.1, 0.1)


def check_boxes(value: Any, name: str) -> np.ndarray:
    """Validate ``(K, 4)`` ``x0, y0, x1, y1`` boxes with ``x0 <= x1``, ``y0 <= y1``; float64 copy.

    :func:`wsolkit.checks.check_boxes` with ``ordered=True``, array-likes accepted.
    """
    return _check_boxes(value, name, array_like=True, ordered=True)


def check_num_classes(num_classes: Any) -> int:
    """Validate a positive integer class count.

    Raises:
        InputError: Not a positive integer.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise InputError(f"num_classes must be a positive int; got {num_classes!r}")
    if num_classes < 1:
        raise InputError(f"num_classes must be a positive int; got {num_classes!r}")
    return int(num_classes)


def box_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """IoU of every pair of pixel-edge boxes (``area = (x1 - x0) * (y1 - y0)``, no ``+ 1``).

    Args:
        boxes_a: ``(N, 4)`` ``x0, y0, x1, y1``.
        boxes_b: ``(M, 4)`` ``x0, y0, x1, y1``.

    Returns:
        ``(N, M)`` float64 IoU; pairs with a zero union (two empty boxes) get 0.

    Raises:
        InputError: A box array is not a valid ``(K, 4)`` array.
    """
    a = check_boxes(boxes_a, "boxes_a")[:, None, :]
    b = check_boxes(boxes_b, "boxes_b")[None, :, :]
    inter_w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    inter_h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    valid = union > 0
    return np.where(valid, inter / np.where(valid, union, 1.0), 0.0)


def average_precision(
    scores: Any, true_positive: Any, num_positives: int, use_07_metric: bool = False
) -> float:
    """VOC average precision of ranked predictions, as a fraction in [0, 1].

    Args:
        scores: ``(N,)`` confidences; ranked by descending score with a stable sort (ties keep
            the given order).
        true_positive: ``(N,)`` bool, True for a TP, False for a FP (leave out the predictions
            that count as neither).
        num_positives: Recall denominator (> 0), e.g. the number of non-ignored GT boxes.
        use_07_metric: The VOC2007 11-point metric instead of the all-points area.

    Returns:
        AP in [0, 1]; 0 when there is no prediction.

    Raises:
        InputError: Shapes differ, or ``num_positives`` is not positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    tp = np.asarray(true_positive, dtype=bool)
    if scores.ndim != 1 or tp.shape != scores.shape:
        raise InputError(
            f"scores and true_positive must be (N,) arrays of one length; got {scores.shape} "
            f"and {tp.shape}"
        )
    if num_positives <= 0:
        raise InputError(f"num_positives must be positive; got {num_positives}")
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = tp[order]
    cum_tp = np.cumsum(tp)
    precision = cum_tp / np.arange(1, tp.size + 1)
    recall = cum_tp / float(num_positives)
    if use_07_metric:
        reached = recall[None, :] >= _VOC07_RECALLS[:, None]  # (11, N)
        best = np.where(reached, precision[None, :], 0.0).max(axis=1)
        return float(best.sum() / _VOC07_RECALLS.size)
    # Recall grows by 1 / num_positives at each TP, where the envelope (the best precision
    # at this rank or later) is taken: the devkit's sum over recall changes.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(envelope[tp].sum() / num_positives)


class DetectionAP:
    """Accumulating VOC-style detection AP per class and mAP (see the module docstring).

    Call ``update`` once per image, then ``compute``; ``reset`` starts over. Matching is done
    in ``update`` (it only depends on the order of the image's own detections), so only one
    score and one TP flag per non-ignored detection are kept.

    Args:
        num_classes: Number of classes; labels are indices in ``[0, num_classes)``.
        iou_threshold: A detection can match a GT box with ``IoU >= iou_threshold``.
        use_07_metric: Use the VOC2007 11-point AP instead of the all-points area.

    Example (one right detection of class 0, one false one of class 1 without GT):

    >>> import numpy as np
    >>> metric = DetectionAP(num_classes=2)
    >>> metric.update(np.array([[0, 0, 4, 4], [5, 5, 8, 8]]), np.array([0.9, 0.8]),
    ...               np.array([0, 1]), np.array([[0, 0, 4, 4]]), np.array([0]))
    >>> metric.compute()
    {'mAP': 100.0, 'AP': {0: 100.0}, 'count': 1}
    """

    def __init__(
        self, num_classes: int, iou_threshold: float = 0.5, use_07_metric: bool = False
    ) -> None:
        self.num_classes = check_num_classes(num_classes)
        iou = float(iou_threshold)
        if not (np.isfinite(iou) and 0 < iou <= 1):
            raise InputError(f"iou_threshold must be in (0, 1]; got {iou_threshold!r}")
        self.iou_threshold = iou
        self.use_07_metric = bool(use_07_metric)
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated image."""
        self._count = 0
        self._num_gt = np.zeros(self.num_classes, np.int64)
        self._scores: list[list[np.ndarray]] = [[] for _ in range(self.num_classes)]
        self._tp: list[list[np.ndarray]] = [[] for _ in range(self.num_classes)]

    def update(
        self,
        pred_boxes: Any,
        pred_scores: Any,
        pred_labels: Any,
        gt_boxes: Any,
        gt_labels: Any,
        gt_ignore: Any = None,
    ) -> None:
        """Add one image (numpy arrays or torch tensors; they are not modified).

        Args:
            pred_boxes: ``(P, 4)`` detections ``x0, y0, x1, y1`` (pixel edges), ``P >= 0``.
            pred_scores: ``(P,)`` finite confidences.
            pred_labels: ``(P,)`` integer classes in ``[0, num_classes)``.
            gt_boxes: ``(K, 4)`` GT boxes in the same coordinates, ``K >= 0``.
            gt_labels: ``(K,)`` integer classes.
            gt_ignore: ``(K,)`` bool, GT boxes that are neither to be found nor to be
                penalized (VOC ``difficult``, COCO ``iscrowd``); None means none.

        Raises:
            InputError: A shape, dtype or value is invalid.
        """
        boxes = check_boxes(pred_boxes, "pred_boxes")
        scores = check_scores(pred_scores, "pred_scores", len(boxes))
        labels = check_labels(pred_labels, "pred_labels", len(boxes), self.num_classes)
        gt = check_boxes(gt_boxes, "gt_boxes")
        gt_cls = check_labels(gt_labels, "gt_labels", len(gt), self.num_classes)
        if gt_ignore is None:
            ignore = np.zeros(len(gt), bool)
        else:
            ignore = to_numpy(gt_ignore, "gt_ignore", array_like=True)
            if ignore.shape != (len(gt),):
                raise InputError(f"gt_ignore must have shape ({len(gt)},); got {ignore.shape}")
            valid = ignore.dtype.kind in "biu" and np.isin(ignore, (0, 1)).all()
            if ignore.size and not valid:
                raise InputError("gt_ignore must hold booleans (or 0/1)")
            ignore = ignore.astype(bool)

        self._num_gt += np.bincount(gt_cls[~ignore], minlength=self.num_classes)
        for c in np.unique(labels).tolist():
            in_class = np.flatnonzero(labels == c)
            order = in_class[np.argsort(-scores[in_class], kind="stable")]
            det_scores = scores[order]
            tp = np.zeros(order.size, bool)
            keep = np.ones(order.size, bool)
            gt_in_class = gt_cls == c
            if gt_in_class.any():
                iou = box_iou(boxes[order], gt[gt_in_class])  # (D, G)
                best = iou.argmax(axis=1)  # first max on ties, as MATLAB's max
                overlaps = iou[np.arange(order.size), best] >= self.iou_threshold
                hit_ignored = overlaps & ignore[gt_in_class][best]
                candidate = np.flatnonzero(overlaps & ~hit_ignored)
                # The first (highest-ranked) candidate of each GT is its TP; later ones are
                # duplicates (FP).
                _, first = np.unique(best[candidate], return_index=True)
                tp[candidate[first]] = True
                keep = ~hit_ignored
            self._scores[c].append(det_scores[keep])
            self._tp[c].append(tp[keep])
        self._count += 1

    def compute(self) -> dict[str, Any]:
        """Summarize the accumulated images.

        Returns:
            ``mAP`` (%, mean AP over the classes with at least one non-ignored GT box),
            ``AP`` (``{class index: AP %}`` for those classes only; classes without GT have
            no defined AP and are left out even if they have detections), ``count`` (images).

        Raises:
            InputError: No image was added, or no class has a non-ignored GT box.
        """
        if self._count == 0:
            raise InputError("DetectionAP.compute: no images were added with update()")
        classes = np.flatnonzero(self._num_gt > 0).tolist()
        if not classes:
            raise InputError("DetectionAP.compute: no non-ignored ground-truth box was added")
        ap: dict[int, float] = {}
        for c in classes:
            scores = np.concatenate(self._scores[c]) if self._scores[c] else np.zeros(0)
            tp = np.concatenate(self._tp[c]) if self._tp[c] else np.zeros(0, bool)
            value = average_precision(scores, tp, int(self._num_gt[c]), self.use_07_metric)
            ap[c] = 100.0 * value
        return {"mAP": float(np.mean(list(ap.values()))), "AP": ap, "count": self._count}
