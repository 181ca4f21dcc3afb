"""MaxBoxAcc and MaxBoxAccV2, following the wsolevaluation protocol (Choe et al., CVPR 2020).

Per image, as in ``BoxEvaluator`` / ``compute_bboxes_from_scoremaps`` of wsolevaluation:

1. The heatmap is resized to 224x224 (``cv2.resize``, ``INTER_CUBIC``, in float64) and
   min-max normalized to [0, 1]; a constant map or one with a NaN becomes all zeros.
2. The GT boxes are given in the wsolkit edge convention (``x1 = x0 + width``, image-file
   pixels, as ``Sample.boxes``) and turned back into wsolevaluation's inclusive corners
   (``x1 - 1``, ``y1 - 1``; exact for the integer boxes of ``localization.txt``), then rescaled
   to 224x224 as ``int(x * 224 / width)``, ``int(y * 224 / height)``.
3. For each score-map threshold ``t`` (default ``np.arange(0, 1, 0.01)``), the uint8 map
   ``(map * 255).astype(uint8)`` is binarized at ``int(t * max)`` (pixels strictly above it),
   contours are found (``RETR_TREE``, ``CHAIN_APPROX_SIMPLE``) and each contour gives the box
   ``x, y, min(x + w, 223), min(y + h, 223)`` of its ``cv2.boundingRect``; no contour gives
   ``[0, 0, 0, 0]``.
4. IoU uses inclusive corners (``area = (x1 - x0 + 1) * (y1 - y0 + 1)``). The image counts as
   a hit at ``t`` when the best IoU over (predicted box, GT box) pairs is ``>= iou / 100``.

MaxBoxAcc (V1) uses only the contour of largest ``cv2.contourArea`` and IoU 50. MaxBoxAccV2
uses every contour and averages, over IoU 30/50/70, the best accuracy over thresholds.

For speed (about 100 contour searches per image are most of the cost), with results identical
to a plain per-threshold loop: thresholds whose uint8 levels keep the same pixels share one
contour search, made only in the bounding rectangle of the kept pixels; the boxes and areas of
all contours come from one vectorized pass over their points (``cv2.boundingRect`` and the
exact integer shoelace sum of ``cv2.contourArea``); IoUs are computed once per distinct binary
image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from wsolkit.checks import check_heatmap, normalize_minmax, to_numpy
from wsolkit.errors import InputError

__all__ = ["BoxAccuracy"]

RESIZE_LENGTH = 224
_V1_IOU = 50


def normalize_scoremap(scoremap: np.ndarray) -> np.ndarray:
    """Min-max normalize a map to [0, 1] (float64); constant or NaN-containing maps give zeros.

    Args:
        scoremap: ``(H, W)`` float array.

    Returns:
        A new ``(H, W)`` float64 array.
    """
    return normalize_minmax(np.asarray(scoremap, dtype=np.float64))


def resize_boxes(boxes: np.ndarray, image_size: tuple[int, int], length: int) -> np.ndarray:
    """Rescale inclusive-corner boxes from ``image_size`` (w, h) to ``length`` x ``length``.

    Coordinates are truncated to int after scaling, as wsolevaluation's ``resize_bbox`` does.

    Args:
        boxes: ``(K, 4)`` ``x0, y0, x1, y1``.
        image_size: ``(width, height)`` of the image the boxes refer to.
        length: Side of the square target size.

    Returns:
        ``(K, 4)`` int64 array.
    """
    width, height = (float(v) for v in image_size)
    scale = np.array([length, length, length, length], dtype=np.float64)
    denom = np.array([width, height, width, height], dtype=np.float64)
    return (np.asarray(boxes, dtype=np.float64) * scale / denom).astype(np.int64)


def _contour_boxes_and_areas(
    contours: Sequence[np.ndarray], width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Protocol boxes and doubled areas of many contours at once (no per-contour OpenCV call).

    The box is ``x, y, min(x + w, width - 1), min(y + h, height - 1)`` of
    ``cv2.boundingRect`` (``x = min x``, ``w = max x - min x + 1`` for integer points). The
    area is the shoelace sum that ``cv2.contourArea`` computes, kept as an exact integer and
    doubled (``|sum(prev.x * p.y - prev.y * p.x)|``): the same order, ties included, as
    ``cv2.contourArea``, whose float64 sum of these small integer terms is exact.

    Args:
        contours: ``cv2.findContours`` contours, each ``(n, 1, 2)`` int32 with ``n >= 1``.
        width: Image width.
        height: Image height.

    Returns:
        ``(C, 4)`` int64 boxes and ``(C,)`` int64 doubled areas.
    """
    lengths = np.fromiter(map(len, contours), dtype=np.intp, count=len(contours))
    starts = np.zeros(len(contours), dtype=np.intp)
    np.cumsum(lengths[:-1], out=starts[1:])
    points = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    x, y = points[:, 0], points[:, 1]

    boxes = np.empty((len(contours), 4), dtype=np.int64)
    boxes[:, 0] = np.minimum.reduceat(x, starts)
    boxes[:, 1] = np.minimum.reduceat(y, starts)
    boxes[:, 2] = np.minimum(np.maximum.reduceat(x, starts) + 1, width - 1)
    boxes[:, 3] = np.minimum(np.maximum.reduceat(y, starts) + 1, height - 1)

    # Each point's predecessor along its closed contour: the previous point, or the last one.
    prev = np.arange(-1, len(points) - 1)
    prev[starts] = starts + lengths - 1
    cross = x[prev] * y - y[prev] * x
    return boxes, np.abs(np.add.reduceat(cross, starts))


def _boxes_per_level(
    scoremap: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Contour boxes of each distinct binary image of a sweep (see ``boxes_from_scoremap``).

    The binary image at uint8 level ``L`` keeps the pixels ``> L``; these sets are nested, so
    two levels give the same binary image exactly when they keep the same number of pixels
    (no pixel value lies between them). Each distinct binary image is searched for contours
    once; one with no pixel has no contour and is not searched.

    Returns:
        ``boxes``: ``(B, 4)`` int64, the boxes of each distinct binary image in turn (contour
        order; a single ``[0, 0, 0, 0]`` for an empty image); ``counts``: ``(G,)`` boxes per
        binary image; ``largest``: ``(G,)`` index into ``boxes`` of the largest contour's box
        (the first one on ties); ``group``: ``(T,)`` the binary image of each threshold.
    """
    height, width = scoremap.shape
    image = (scoremap * 255).astype(np.uint8)
    peak = float(image.max())
    levels = (np.asarray(thresholds, dtype=np.float64) * peak).astype(np.int64)

    # kept[L] = number of pixels > L (cv2.threshold's THRESH_BINARY rule on uint8).
    above = image.size - np.cumsum(np.bincount(image.ravel(), minlength=256))
    kept = np.where(levels < 0, image.size, above[np.clip(levels, 0, 255)])
    distinct, first, group = np.unique(kept, return_index=True, return_inverse=True)

    contours: list[np.ndarray] = []
    found = np.zeros(len(distinct), dtype=np.intp)  # contours per binary image
    # Contours are searched in the bounding rectangle of the kept pixels only (found through
    # the row and column maxima), with ``offset`` giving back image coordinates: findContours
    # treats the outside of its input as 0, so the contours and their order are unchanged.
    representative = levels[first]  # a level giving each distinct binary image
    rows = image.max(axis=1)[None, :] > representative[:, None]  # (G, H): row keeps a pixel
    cols = image.max(axis=0)[None, :] > representative[:, None]
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    bottom = height - rows[:, ::-1].argmax(axis=1)
    right = width - cols[:, ::-1].argmax(axis=1)
    crops = np.stack([top, bottom, left, right, representative], axis=1).tolist()
    for index, pixels in enumerate(distinct.tolist()):
        if pixels == 0:
            continue
        y0, y1, x0, x1, level = crops[index]
        _, binary = cv2.threshold(image[y0:y1, x0:x1], level, 255, cv2.THRESH_BINARY)
        level_contours = cv2.findContours(
            binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE, offset=(x0, y0)
        )[-2]
        contours.extend(level_contours)
        found[index] = len(level_contours)

    counts = np.maximum(found, 1)  # an image without contours gets the box [0, 0, 0, 0]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    boxes = np.zeros((int(counts.sum()), 4), dtype=np.int64)
    largest = starts.copy()
    if contours:
        has = found > 0
        image_starts = np.concatenate([[0], np.cumsum(found[has])[:-1]])
        # slots[c]: where contour c (numbered over all images) goes in ``boxes``.
        slots = np.arange(len(contours)) + np.repeat(starts[has] - image_starts, found[has])
        boxes[slots], areas = _contour_boxes_and_areas(contours, width, height)
        # Largest contour per image, first on ties: the first contour equal to its image's max.
        image_max = np.maximum.reduceat(areas, image_starts)
        at_max = np.flatnonzero(areas == np.repeat(image_max, found[has]))
        first_max = at_max[np.searchsorted(at_max, image_starts)]
        largest[has] = slots[first_max]
    return boxes, counts, largest, group.reshape(-1)


def boxes_from_scoremap(
    scoremap: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All contour boxes of a [0, 1] score map at each threshold, wsolevaluation style.

    Thresholds that give the same binary image share one contour search.

    Args:
        scoremap: ``(H, W)`` float map in [0, 1].
        thresholds: ``(T,)`` score-map thresholds in [0, 1).

    Returns:
        ``boxes``: ``(B, 4)`` int64 inclusive-corner boxes, all thresholds concatenated in
        threshold order (at least one per threshold; ``[0, 0, 0, 0]`` when no contour);
        ``counts``: ``(T,)`` number of boxes per threshold;
        ``largest``: ``(T,)`` index into ``boxes`` of the box of the largest contour
        (first one on ties) at each threshold.
    """
    level_boxes, level_counts, level_largest, group = _boxes_per_level(scoremap, thresholds)
    level_starts = np.concatenate([[0], np.cumsum(level_counts)[:-1]])
    counts = level_counts[group]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    # Output box k of threshold t is box (k - starts[t]) of its binary image.
    shift = np.repeat(level_starts[group] - starts, counts)
    boxes = level_boxes[np.arange(int(counts.sum())) + shift]
    largest = starts + (level_largest - level_starts)[group]
    return boxes, counts.astype(np.int64), largest.astype(np.int64)


def box_iou_inclusive(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every pair of inclusive-corner boxes (``area = (x1-x0+1)*(y1-y0+1)``).

    Args:
        boxes_a: ``(A, 4)`` ``x0, y0, x1, y1``.
        boxes_b: ``(B, 4)`` ``x0, y0, x1, y1``.

    Returns:
        ``(A, B)`` float64 IoU; pairs with a non-positive union get 0.
    """
    a = np.asarray(boxes_a)[:, None, :]
    b = np.asarray(boxes_b)[None, :, :]
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    valid = union > 0
    return np.where(valid, inter / np.where(valid, union, 1), 0.0)


class BoxAccuracy:
    """Accumulating MaxBoxAcc / MaxBoxAccV2 (and top-1 localization) over images.

    Call ``update`` once per image, then ``compute``; ``reset`` starts over.

    Args:
        cam_curve_interval: Spacing of the score-map thresholds ``np.arange(0, 1, interval)``
            (wsolevaluation uses 0.01 in training logs and 0.001 for final numbers).
        iou_thresholds: IoU thresholds in percent for MaxBoxAccV2.
        multi_contour_v2: Use every contour for V2 (the wsolevaluation V2 protocol). V1
            always uses the largest contour only.

    Example (an 8 x 8 map whose blob covers the GT box):

    >>> import numpy as np
    >>> heat = np.zeros((8, 8))
    >>> heat[2:6, 2:6] = 1.0
    >>> metric = BoxAccuracy()
    >>> metric.update(heat, np.array([[2, 2, 6, 6]]), (8, 8))
    >>> result = metric.compute()
    >>> result["MaxBoxAcc"], result["max_box_acc_v2"]
    (100.0, {30: 100.0, 50: 100.0, 70: 0.0})
    """

    def __init__(
        self,
        cam_curve_interval: float = 0.01,
        iou_thresholds: Sequence[int] = (30, 50, 70),
        multi_contour_v2: bool = True,
    ) -> None:
        interval = float(cam_curve_interval)
        if not (np.isfinite(interval) and 0 < interval <= 1):
            raise InputError(f"cam_curve_interval must be in (0, 1]; got {cam_curve_interval!r}")
        ious = [int(v) for v in iou_thresholds]
        if not ious or any(not 0 < v <= 100 for v in ious) or len(set(ious)) != len(ious):
            raise InputError(
                f"iou_thresholds must be distinct percentages in (0, 100]; got "
                f"{list(iou_thresholds)!r}"
            )
        self.cam_curve_interval = interval
        self.thresholds = np.arange(0, 1, interval)
        self.iou_thresholds = tuple(ious)
        self.multi_contour_v2 = bool(multi_contour_v2)
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated image."""
        self._count = 0
        self._hits_v2 = np.zeros((len(self.iou_thresholds), len(self.thresholds)), np.int64)
        self._hits_v1: list[np.ndarray] = []
        self._correct: list[bool] = []

    def update(
        self,
        heatmap: np.ndarray,
        gt_boxes: np.ndarray,
        image_size: tuple[int, int],
        correct_class: bool | None = None,
    ) -> None:
        """Add one image.

        Args:
            heatmap: ``(H, W)`` float map in [0, 1] (numpy or torch), at any resolution; it is
                resized to 224x224 and min-max normalized as in wsolevaluation.
            gt_boxes: ``(K, 4)`` GT boxes ``x0, y0, x1, y1`` in wsolkit **edge** coordinates
                (``x1 = x0 + width``) in pixels of the image file, as ``Sample.boxes`` gives
                them; ``K >= 1``, ``x1 > x0``, ``y1 > y0``. A box from ``localization.txt``
                (inclusive corners) is ``x0, y0, x1 + 1, y1 + 1`` here.
            image_size: ``(width, height)`` of the image file the boxes refer to.
            correct_class: Whether the classifier's top-1 class was right, for top-1
                localization. Give it for every image or for none.

        Raises:
            InputError: A shape, value or size is invalid, or ``correct_class`` is given for
                some images but not others.
        """
        # NaN is allowed: normalization turns a map with a NaN into zeros, as wsolevaluation
        cam = check_heatmap(heatmap, array_like=True, allow_nan=True)

        boxes = to_numpy(gt_boxes, "gt_boxes", array_like=True)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or boxes.shape[0] < 1:
            raise InputError(f"gt_boxes must have shape (K, 4) with K >= 1; got {boxes.shape}")
        boxes = boxes.astype(np.float64)
        if (
            not np.isfinite(boxes).all()
            or (boxes < 0).any()
            or (boxes[:, 2] <= boxes[:, 0]).any()
            or (boxes[:, 3] <= boxes[:, 1]).any()
        ):
            raise InputError(
                "gt_boxes must be finite pixel-edge x0, y0, x1, y1 with 0 <= x0 < x1, "
                "0 <= y0 < y1"
            )
        boxes[:, 2:] -= 1.0  # edges -> wsolevaluation's inclusive corners

        try:
            width, height = (int(v) for v in image_size)
        except (TypeError, ValueError) as exc:
            raise InputError(f"image_size must be (width, height); got {image_size!r}") from exc
        if width <= 0 or height <= 0:
            raise InputError(f"image_size must be positive (width, height); got {image_size!r}")

        if self._count and (correct_class is None) != (not self._correct):
            raise InputError(
                "correct_class must be given for every image or for none "
                f"(image {self._count} differs from the earlier ones)"
            )

        side = RESIZE_LENGTH
        resized = cv2.resize(cam, (side, side), interpolation=cv2.INTER_CUBIC)
        scoremap = normalize_minmax(resized)
        gt = resize_boxes(boxes, (width, height), side)

        # Boxes per distinct binary image (G of them), then mapped to the T thresholds.
        pred, counts, largest, group = _boxes_per_level(scoremap, self.thresholds)
        best_iou_per_box = box_iou_inclusive(pred, gt).max(axis=1)  # (B,)

        v1_iou = best_iou_per_box[largest][group]  # (T,)
        if self.multi_contour_v2:
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            v2_iou = np.maximum.reduceat(best_iou_per_box, starts)[group]  # (T,)
        else:
            v2_iou = v1_iou
        iou_levels = np.array(self.iou_thresholds, dtype=np.float64)[:, None] / 100
        self._hits_v2 += v2_iou[None, :] >= iou_levels
        self._hits_v1.append(v1_iou >= _V1_IOU / 100)
        if correct_class is not None:
            self._correct.append(bool(correct_class))
        self._count += 1

    def per_image_hits(self, threshold: float) -> np.ndarray:
        """(N,) bool: each image's V1 hit (IoU >= 0.5) at the sweep threshold nearest ``threshold``.

        Used for top-k localization at the dataset's best threshold.

        Raises:
            InputError: No image was added.
        """
        if self._count == 0:
            raise InputError("BoxAccuracy.per_image_hits: no images were added with update()")
        index = int(np.argmin(np.abs(self.thresholds - threshold)))
        return np.stack(self._hits_v1)[:, index]

    def compute(self) -> dict[str, Any]:
        """Summarize the accumulated images.

        Returns:
            ``MaxBoxAcc`` (V1, %, largest contour, IoU 50), ``MaxBoxAccV2`` (%, mean over the
            IoU thresholds of the best accuracy), ``best_threshold`` (the score-map threshold
            of MaxBoxAcc; the first one on ties), ``curve`` (V2 accuracy in % per threshold,
            keyed by IoU percent), ``curve_v1`` (V1 accuracy in % per threshold),
            ``max_box_acc_v2`` (best V2 accuracy per IoU), ``thresholds``, ``count``; and,
            when ``correct_class`` was given, ``top1_loc`` (% of images with the right class
            and a V1 hit at ``best_threshold``) and ``gt_known_loc`` (= ``MaxBoxAcc``).

        Raises:
            InputError: No image was added.
        """
        if self._count == 0:
            raise InputError("BoxAccuracy.compute: no images were added with update()")
        n = float(self._count)
        hits_v1 = np.stack(self._hits_v1)  # (N, T)
        acc_v1 = hits_v1.sum(axis=0) * 100.0 / n
        best = int(np.argmax(acc_v1))
        acc_v2 = self._hits_v2 * 100.0 / n  # (I, T)
        max_v2 = acc_v2.max(axis=1)
        result: dict[str, Any] = {
            "MaxBoxAcc": float(acc_v1[best]),
            "MaxBoxAccV2": float(np.mean(max_v2)),
            "best_threshold": float(self.thresholds[best]),
            "curve": {iou: acc_v2[k].tolist() for k, iou in enumerate(self.iou_thresholds)},
            "curve_v1": acc_v1.tolist(),
            "max_box_acc_v2": {iou: float(max_v2[k]) for k, iou in enumerate(self.iou_thresholds)},
            "thresholds": self.thresholds.tolist(),
            "count": self._count,
        }
        if self._correct:
            correct = np.array(self._correct, dtype=bool)
            result["top1_loc"] = float((correct & hits_v1[:, best]).sum() * 100.0 / n)
            result["gt_known_loc"] = result["MaxBoxAcc"]
        return result
