"""Pointing metrics: the pointing game and pointing-based localization AP.

* ``PointingGame`` (Zhang et al., "Top-down neural attention by excitation backprop", ECCV
  2016): the maximum of a class heatmap is a hit when it lies within ``tolerance`` (15) pixels
  of a GT box of that class.
* ``PointingAP`` (Oquab et al., "Is object localization for free?", CVPR 2015; used by Bency
  et al., ECCV 2016): for every image and class, the maximum of the class map is a scored
  point; it is a TP when the image has the class and the point is within ``tolerance`` (18)
  pixels of a box of the class, and a FP otherwise. AP per class over the images, VOC style.

**Points and the acceptance region.** A point ``(x, y)`` is a pixel index (column, row) of the
heatmap, as given by :func:`peak`; the pixel covers ``[x, x + 1) x [y, y + 1)`` in wsolkit's
pixel-edge box coordinates and its center is ``(x + 0.5, y + 0.5)``. Boxes are ``x0, y0, x1,
y1`` pixel edges in the heatmap's coordinates (rescale image-file boxes to the heatmap size
first). With ``region="box"`` (the default) a point hits a box when its pixel center lies
strictly inside the box grown by ``tolerance`` on every side::

    x0 - tolerance < x + 0.5 < x1 + tolerance   and the same for y

For integer boxes and tolerance: the columns ``x0 - tolerance .. x1 - 1 + tolerance``, i.e.
up to ``tolerance`` whole pixels beyond the box's first/last column; ``tolerance=0`` keeps
exactly the pixels inside the box. With ``region="disk"`` the region is the one of TorchRay's
``PointingGame`` (Fong & Vedaldi's reference implementation of the EBP benchmark): the
Euclidean distance from the point's pixel to the nearest pixel of the box is **strictly** less
than ``tolerance`` (so at most 14 whole pixels straight out for 15, and rounded corners);
``tolerance`` must then be positive.

**Ties.** :func:`peak` returns the first maximum in raster order (row by row, left to right),
as ``np.argmax`` on the flattened map.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsolkit.checks import check_heatmap, check_labels, check_scores, to_numpy
from wsolkit.errors import InputError
from wsolkit.eval.detection import average_precision, check_boxes, check_num_classes

__all__ = ["PointingAP", "PointingGame", "peak", "peaks", "point_hits"]

REGIONS = ("box", "disk")
"""Names accepted by the ``region`` argument."""


def _check_maps(heatmaps: Any, name: str, ndim: int) -> np.ndarray:
    """Validate a non-empty real map stack of ``ndim`` dimensions without NaN (inf is fine)."""
    return check_heatmap(heatmaps, name, ndim=ndim, array_like=True, allow_inf=True,
                         unit_range=False)


def _check_tolerance(tolerance: Any, region: str) -> float:
    if region not in REGIONS:
        raise InputError(f"region must be one of {REGIONS}; got {region!r}")
    try:
        value = float(tolerance)
    except (TypeError, ValueError) as exc:
        raise InputError(f"tolerance must be a number of pixels; got {tolerance!r}") from exc
    if not np.isfinite(value) or value < 0 or (region == "disk" and value == 0):
        bound = "> 0 for region='disk'" if region == "disk" else ">= 0"
        raise InputError(f"tolerance must be finite and {bound}; got {tolerance!r}")
    return value


def peak(heatmap: Any) -> tuple[float, int, int]:
    """Value and location of the maximum of a map (the first one in raster order on ties).

    Args:
        heatmap: ``(H, W)`` real map (numpy or torch), without NaN.

    Returns:
        ``(value, x, y)``: the maximum and its column and row.

    Raises:
        InputError: Not a non-empty 2-D real map, or it contains NaN.
    """
    cam = _check_maps(heatmap, "heatmap", 2)
    index = int(np.argmax(cam))
    y, x = divmod(index, cam.shape[1])
    return float(cam.flat[index]), x, y


def peaks(heatmaps: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`peak` of every map of a ``(C, H, W)`` stack, in the form ``PointingAP`` takes.

    Args:
        heatmaps: ``(C, H, W)`` real maps (numpy or torch), without NaN.

    Returns:
        ``values`` ``(C,)`` float64 maxima and ``points`` ``(C, 2)`` int64 ``x, y``.

    Raises:
        InputError: Not a non-empty 3-D real stack, or it contains NaN.
    """
    maps = _check_maps(heatmaps, "heatmaps", 3)
    flat = maps.reshape(maps.shape[0], -1)
    index = np.argmax(flat, axis=1)
    values = flat[np.arange(flat.shape[0]), index].astype(np.float64)
    points = np.stack([index % maps.shape[2], index // maps.shape[2]], axis=1).astype(np.int64)
    return values, points


def point_hits(points: Any, boxes: Any, tolerance: float, region: str = "box") -> np.ndarray:
    """Whether each point lies within ``tolerance`` of each box (see the module docstring).

    Args:
        points: ``(N, 2)`` pixel indices ``x, y``.
        boxes: ``(K, 4)`` pixel-edge boxes ``x0, y0, x1, y1``.
        tolerance: Margin in pixels.
        region: ``"box"`` (grown box) or ``"disk"`` (TorchRay's distance rule).

    Returns:
        ``(N, K)`` bool.

    Raises:
        InputError: A shape or value is invalid.
    """
    tol = _check_tolerance(tolerance, region)
    pts = to_numpy(points, "points", array_like=True)
    if pts.ndim != 2 or pts.shape[1] != 2 or (pts.size and pts.dtype.kind not in "fiu"):
        raise InputError(f"points must be a real (N, 2) array of x, y; got shape {pts.shape}")
    pts = pts.astype(np.float64)
    if not np.isfinite(pts).all():
        raise InputError("points must be finite")
    box = check_boxes(boxes, "boxes")
    center = pts[:, None, :] + 0.5  # (N, 1, 2)
    low, high = box[None, :, :2], box[None, :, 2:]  # (1, K, 2)
    if region == "box":
        return ((center > low - tol) & (center < high + tol)).all(axis=2)
    # Distance between the point's pixel center and the box's pixel centers
    # [x0 + 0.5, x1 - 0.5] x [y0 + 0.5, y1 - 0.5].
    gap = np.maximum(np.maximum(low + 0.5 - center, center - (high - 0.5)), 0.0)
    return (gap**2).sum(axis=2) < tol**2


class PointingGame:
    """Accumulating pointing-game accuracy (see the module docstring for the hit rule).

    Call ``update`` once per (image, class) pair with the class heatmap and the GT boxes of
    that class; pairs without a GT box are skipped and not counted. ``reset`` starts over.

    Args:
        tolerance: Margin in pixels of the heatmap (15 in Zhang et al.).
        region: ``"box"`` (box grown by ``tolerance``) or ``"disk"`` (TorchRay's rule).

    Example (the peak lies in the box; another map peaks 20 pixels away from it):

    >>> import numpy as np
    >>> game = PointingGame()
    >>> heat = np.zeros((64, 64))
    >>> heat[4, 4] = 1.0
    >>> game.update(heat, np.array([[2, 2, 6, 6]]))  # a hit
    True
    >>> heat = np.zeros((64, 64))
    >>> heat[4, 30] = 1.0
    >>> game.update(heat, np.array([[2, 2, 6, 6]]))
    False
    >>> game.compute()
    {'accuracy': 50.0, 'hits': 1, 'count': 2}
    """

    def __init__(self, tolerance: float = 15, region: str = "box") -> None:
        self.tolerance = _check_tolerance(tolerance, region)
        self.region = region
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated image."""
        self._hits = 0
        self._count = 0
        self._class_hits: dict[int, int] = {}
        self._class_count: dict[int, int] = {}

    def update(self, heatmap: Any, gt_boxes: Any, class_id: int | None = None) -> bool | None:
        """Score one (image, class) pair.

        Args:
            heatmap: ``(H, W)`` real map of the class (numpy or torch; any range, no NaN).
            gt_boxes: ``(K, 4)`` GT boxes of that class, ``x0, y0, x1, y1`` pixel edges in the
                heatmap's pixel coordinates. ``K = 0`` skips the pair.
            class_id: The class, to also get per-class accuracies (TorchRay and EBP report
                their mean). Give it for every pair or for none.

        Returns:
            True for a hit, False for a miss, None when the pair is skipped.

        Raises:
            InputError: A shape or value is invalid, or ``class_id`` is given for some pairs
                but not others.
        """
        _, x, y = peak(heatmap)
        boxes = check_boxes(gt_boxes, "gt_boxes")
        if class_id is not None and (
            isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer))
        ):
            raise InputError(f"class_id must be an int or None; got {class_id!r}")
        if self._count and (class_id is None) != (not self._class_count):
            raise InputError(
                "class_id must be given for every pair or for none "
                f"(pair {self._count} differs from the earlier ones)"
            )
        if len(boxes) == 0:
            return None
        hit = bool(point_hits([[x, y]], boxes, self.tolerance, self.region).any())
        self._hits += hit
        self._count += 1
        if class_id is not None:
            key = int(class_id)
            self._class_hits[key] = self._class_hits.get(key, 0) + hit
            self._class_count[key] = self._class_count.get(key, 0) + 1
        return hit

    def compute(self) -> dict[str, Any]:
        """Summarize the scored pairs.

        Returns:
            ``accuracy`` (% hits over the scored pairs), ``hits``, ``count`` (scored pairs);
            with ``class_id``: ``class_accuracy`` (``{class: %}`` for the classes seen) and
            ``mean_class_accuracy`` (their mean, TorchRay's ``accuracy``).

        Raises:
            InputError: No pair was scored.
        """
        if self._count == 0:
            raise InputError("PointingGame.compute: no image with a GT box was added")
        result: dict[str, Any] = {
            "accuracy": 100.0 * self._hits / self._count,
            "hits": self._hits,
            "count": self._count,
        }
        if self._class_count:
            per_class = {
                c: 100.0 * self._class_hits[c] / n for c, n in sorted(self._class_count.items())
            }
            result["class_accuracy"] = per_class
            result["mean_class_accuracy"] = float(np.mean(list(per_class.values())))
        return result


class PointingAP:
    """Accumulating pointing-based localization AP (Oquab et al., CVPR 2015).

    For each image and each class ``c``, the class map's maximum is the confidence and its
    location the point (use :func:`peaks`). The prediction is a TP when the image has a GT box
    of class ``c`` and the point hits one of them (module docstring), else a FP; the number of
    positives of ``c`` is the number of images with a box of class ``c``. AP per class ranks
    all images by confidence (stable sort: ties keep the order of ``update`` calls) with the
    all-points VOC2010+ interpolation; mAP averages the classes with at least one positive.

    Args:
        num_classes: Number of classes ``C``.
        tolerance: Margin in pixels of the heatmap (18 in Oquab et al.).
        region: ``"box"`` (box grown by ``tolerance``) or ``"disk"``.
    """

    def __init__(self, num_classes: int, tolerance: float = 18, region: str = "box") -> None:
        self.num_classes = check_num_classes(num_classes)
        self.tolerance = _check_tolerance(tolerance, region)
        self.region = region
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated image."""
        self._scores: list[np.ndarray] = []
        self._tp: list[np.ndarray] = []
        self._positive: list[np.ndarray] = []

    def update(self, class_scores: Any, points: Any, gt_boxes: Any, gt_labels: Any) -> None:
        """Add one image (numpy arrays or torch tensors; they are not modified).

        Args:
            class_scores: ``(C,)`` confidence of each class (the maximum of its map).
            points: ``(C, 2)`` pixel ``x, y`` of each class map's maximum.
            gt_boxes: ``(K, 4)`` GT boxes, pixel edges in the heatmaps' coordinates, ``K >= 0``.
            gt_labels: ``(K,)`` integer class of each box.

        Raises:
            InputError: A shape or value is invalid.
        """
        c = self.num_classes
        scores = check_scores(class_scores, "class_scores", c)
        pts = to_numpy(points, "points", array_like=True)
        if pts.shape != (c, 2):
            raise InputError(f"points must have shape ({c}, 2); got {pts.shape}")
        boxes = check_boxes(gt_boxes, "gt_boxes")
        labels = check_labels(gt_labels, "gt_labels", len(boxes), c)
        hits = point_hits(pts, boxes, self.tolerance, self.region)  # (C, K)
        own_class = labels[None, :] == np.arange(c)[:, None]  # (C, K)
        self._scores.append(scores)
        self._tp.append((hits & own_class).any(axis=1))
        self._positive.append(own_class.any(axis=1))

    def compute(self) -> dict[str, Any]:
        """Summarize the accumulated images.

        Returns:
            ``mAP`` (%, over the classes present in at least one image), ``AP``
            (``{class: %}`` for those classes), ``count`` (images).

        Raises:
            InputError: No image was added, or no image has a GT box.
        """
        if not self._scores:
            raise InputError("PointingAP.compute: no images were added with update()")
        scores = np.stack(self._scores)  # (N, C)
        tp = np.stack(self._tp)
        num_pos = np.stack(self._positive).sum(axis=0)
        classes = np.flatnonzero(num_pos > 0).tolist()
        if not classes:
            raise InputError("PointingAP.compute: no image with a GT box was added")
        ap = {
            k: 100.0 * average_precision(scores[:, k], tp[:, k], int(num_pos[k])) for k in classes
        }
        return {"mAP": float(np.mean(list(ap.values()))), "AP": ap, "count": len(self._scores)}
