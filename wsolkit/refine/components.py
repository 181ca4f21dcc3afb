"""Connected components of a mask: boxes, scores and component masks.

Components use 8-connectivity (``cv2.connectedComponentsWithStats``). Boxes follow the
package convention ``x0, y0, x1, y1`` in continuous edge coordinates (``x1 = x0 + width``),
as a ``(K, 4)`` float32 numpy array with a separate ``(K,)`` float32 score array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from wsolkit.checks import RANGE_TOLERANCE, check_heatmap, check_integer, to_numpy
from wsolkit.errors import InputError
from wsolkit.refine.threshold import threshold_map

MODES = ("largest", "all")
"""Names accepted by the ``mode`` argument."""


@dataclass(frozen=True)
class _Components:
    """Labelled components of a mask, ordered by rank (best first)."""

    labels: np.ndarray  # (H, W) int32, 0 = background, i = component i
    ids: np.ndarray  # (K,) component labels, best first
    boxes: np.ndarray  # (K, 4) float32
    scores: np.ndarray  # (K,) float32
    areas: np.ndarray  # (K,) int64


@dataclass(frozen=True)
class Localization:
    """Result of :func:`localize`.

    Attributes:
        boxes: (K, 4) float32 numpy array of ``x0, y0, x1, y1`` edge coordinates.
        scores: (K,) float32 numpy array, mean heat over each component, descending.
        mask: (H, W) bool mask, the union of the kept components, of the heatmap's type.
    """

    boxes: np.ndarray
    scores: np.ndarray
    mask: Any


def _check_mode(mode: str) -> None:
    if not isinstance(mode, str) or mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def _check_mask(mask: Any) -> np.ndarray:
    """Validate a 2-D mask and return it as a uint8 0/1 numpy array (nonzero = foreground)."""
    array = to_numpy(mask, "mask")
    if array.ndim != 2:
        raise InputError(f"mask must be 2-D (H, W), got shape {tuple(array.shape)}")
    if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer)
            or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"mask must be bool or numeric, got dtype {array.dtype}")
    return np.ascontiguousarray(array != 0, dtype=np.uint8)


def _components(
    mask: np.ndarray, heat: np.ndarray | None, mode: str, min_area: int = 0
) -> _Components:
    """Label ``mask`` (uint8 0/1) and rank its components.

    ``"largest"`` keeps the component with the most pixels (ties: first in raster order);
    ``"all"`` keeps every component sorted by score descending (ties: raster order).
    Components smaller than ``min_area`` pixels are dropped first.
    """
    height, width = mask.shape
    if mask.size == 0:
        count, labels = 1, np.zeros(mask.shape, np.int32)
        stats = np.zeros((1, 5), np.int32)
    else:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            mask, connectivity=8, ltype=cv2.CV_32S
        )
    ids = np.arange(1, count)
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    keep = areas >= min_area
    ids, areas = ids[keep], areas[keep]
    if heat is None:
        scores = areas / float(height * width) if ids.size else np.zeros(0)
    else:
        sums = np.bincount(labels.ravel(), weights=heat.ravel(), minlength=count)
        scores = sums[ids] / areas
    if mode == "largest":
        order = np.argsort(-areas, kind="stable")[:1]
    else:
        order = np.argsort(-scores, kind="stable")
    ids, areas, scores = ids[order], areas[order], scores[order]
    x0 = stats[ids, cv2.CC_STAT_LEFT]
    y0 = stats[ids, cv2.CC_STAT_TOP]
    boxes = np.stack(
        [x0, y0, x0 + stats[ids, cv2.CC_STAT_WIDTH], y0 + stats[ids, cv2.CC_STAT_HEIGHT]],
        axis=1,
    ).astype(np.float32).reshape(-1, 4)
    return _Components(labels, ids, boxes, scores.astype(np.float32), areas)


def _like(mask: np.ndarray, reference: Any) -> Any:
    """Return a bool numpy mask as the type of ``reference`` (torch: same device)."""
    if isinstance(reference, torch.Tensor):
        return torch.from_numpy(mask).to(reference.device)
    return mask


def boxes_from_mask(
    mask: Any, heatmap: Any = None, mode: str = "largest"
) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes and scores of the connected components of a mask.

    Args:
        mask: (H, W) bool mask, numpy or torch (nonzero counts as foreground).
        heatmap: Optional (H, W) finite float map, numpy or torch, used for the scores.
        mode: ``"largest"`` for the component with the most pixels only, ``"all"`` for
            every component sorted by score descending.

    Returns:
        ``(boxes, scores)`` as numpy arrays whatever the input type: boxes ``(K, 4)``
        float32 ``x0, y0, x1, y1`` edge coordinates, scores ``(K,)`` float32. A score is
        the mean heatmap value over the component's pixels, or without a heatmap the
        fraction of the image area the component covers. An empty mask gives ``(0, 4)``
        and ``(0,)`` arrays.

    Raises:
        InputError: Unknown mode, mask or heatmap not 2-D, shapes differ, NaN/inf in heatmap.
    """
    _check_mode(mode)
    binary = _check_mask(mask)
    heat = None
    if heatmap is not None:
        heat = check_heatmap(heatmap, unit_range=False)
        if heat.shape != binary.shape:
            raise InputError(
                f"heatmap shape {heat.shape} does not match mask shape {binary.shape}"
            )
    found = _components(binary, heat, mode)
    return found.boxes, found.scores


def component_masks(mask: Any, mode: str = "largest") -> list[Any]:
    """Split a mask into one bool mask per 8-connected component.

    Args:
        mask: (H, W) bool mask, numpy or torch.
        mode: ``"largest"`` for the component with the most pixels only (a list of at most
            one mask), ``"all"`` for every component sorted by pixel count descending.

    Returns:
        List of (H, W) bool masks of the input's type; empty for an empty mask.

    Raises:
        InputError: Unknown mode or mask not 2-D.
    """
    _check_mode(mode)
    found = _components(_check_mask(mask), None, mode)
    return [_like(found.labels == label, mask) for label in found.ids]


def largest_component(mask: Any) -> Any:
    """Keep only the 8-connected component with the most pixels.

    Args:
        mask: (H, W) bool mask, numpy or torch.

    Returns:
        (H, W) bool mask of the input's type; all False for an empty mask.

    Raises:
        InputError: Mask not 2-D.
    """
    found = _components(_check_mask(mask), None, "largest")
    return _like(np.isin(found.labels, found.ids), mask)


def localize(
    heatmap: Any,
    method: str = "fraction",
    value: float | None = None,
    mode: str = "largest",
    min_area: int = 0,
) -> Localization:
    """Threshold a heatmap and box its connected components.

    Composes :func:`~wsolkit.refine.threshold.threshold_map` and
    :func:`boxes_from_mask`, scoring each component by its mean heat.

    Args:
        heatmap: (H, W) float map in [0, 1], numpy or torch.
        method: Threshold method (``"fixed"``, ``"fraction"``, ``"mean"``, ``"otsu"``).
        value: Threshold parameter, ``None`` for the method default (fraction: 0.5).
        mode: ``"largest"`` or ``"all"`` (see :func:`boxes_from_mask`).
        min_area: Components with fewer pixels are dropped before ``mode`` applies.

    Returns:
        A :class:`Localization`; boxes and scores are numpy, the mask (union of the kept
        components) has the heatmap's type.

    Raises:
        InputError: As :func:`threshold_map` and :func:`boxes_from_mask`, or a negative
            or non-integer ``min_area``.

    Example (a 3 x 4 blob of heat 1 and a faint pixel below half the maximum):

    >>> import numpy as np
    >>> heat = np.zeros((6, 8))
    >>> heat[1:4, 2:6] = 1.0
    >>> heat[5, 0] = 0.3
    >>> found = localize(heat, method="fraction", value=0.5)
    >>> found.boxes, found.scores, int(found.mask.sum())
    (array([[2., 1., 6., 4.]], dtype=float32), array([1.], dtype=float32), 12)
    """
    _check_mode(mode)
    min_area = check_integer(min_area, "min_area", 0)
    heat = check_heatmap(heatmap, tolerance=RANGE_TOLERANCE)
    binary = _check_mask(threshold_map(heat, method, value))
    found = _components(binary, heat, mode, min_area)
    union = np.isin(found.labels, found.ids)
    return Localization(found.boxes, found.scores, _like(union, heatmap))


def localize_stack(maps: Any, thresholds: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Boxes and scores of every component of many maps, from one labelling pass.

    The same as ``localize(maps[i], "fixed", thresholds[i], mode="all")`` for each ``i``
    (boxes and scores only).

    Each thresholded map is cropped to the bounding rectangle of its foreground and the crops
    are stacked one above the other with an empty row between them (no 8-connected component
    crosses it), so one ``cv2.connectedComponentsWithStats`` call over the crops and one
    ``bincount`` of the foreground heat replace a call per map over whole maps.

    Args:
        maps: (K, H, W) finite float maps, numpy or torch (checked as :func:`localize` does).
        thresholds: (K,) thresholds (a sequence, numpy or torch); map ``i`` is foreground
            where ``maps[i] >= thresholds[i]`` (compared in float64, as
            :func:`~wsolkit.refine.threshold.threshold_map`).

    Returns:
        Per map, ``(boxes, scores)`` as :func:`localize` gives them: (n, 4) float32 edge
        boxes and (n,) float32 mean heat, by score descending (ties: raster order).

    Raises:
        InputError: ``maps`` not (K, H, W) with H, W > 0, non-finite values, or the number of
            thresholds differs from K.
    """
    heat = to_numpy(maps, "maps")
    if heat.ndim != 3 or heat.shape[1] == 0 or heat.shape[2] == 0:
        raise InputError(f"maps must be a (K, H, W) stack, got shape {tuple(heat.shape)}")
    if heat.size and not (np.isfinite(heat.min()) and np.isfinite(heat.max())):  # NaN spreads
        raise InputError("maps contain NaN or inf")
    if isinstance(thresholds, torch.Tensor):
        thresholds = thresholds.detach().cpu().numpy()
    levels = np.asarray(thresholds, np.float64).reshape(-1)
    count, height, width = heat.shape
    if len(levels) != count:
        raise InputError(f"thresholds has {len(levels)} values for {count} maps")
    if count == 0:
        return []
    foreground = heat >= _exact_levels(levels, heat.dtype)[:, None, None]
    # each map's foreground cropped to its bounding rectangle (components and their boxes do not
    # change), stacked one above the other with an empty row between them
    rows_hit, cols_hit = foreground.any(axis=2), foreground.any(axis=1)
    kept = np.flatnonzero(rows_hit.any(axis=1))
    if len(kept) == 0:
        return [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) for _ in range(count)]
    y0 = rows_hit[kept].argmax(axis=1)
    y1 = height - rows_hit[kept, ::-1].argmax(axis=1)
    x0 = cols_hit[kept].argmax(axis=1)
    x1 = width - cols_hit[kept, ::-1].argmax(axis=1)
    offsets = np.concatenate([[0], np.cumsum(y1 - y0 + 1)])  # first canvas row of each crop
    canvas = np.zeros((int(offsets[-1]), int((x1 - x0).max())), np.uint8)
    weights = np.zeros(canvas.shape, heat.dtype)
    for i, k in enumerate(kept.tolist()):
        top, bottom = offsets[i], offsets[i] + y1[i] - y0[i]
        canvas[top:bottom, : x1[i] - x0[i]] = foreground[k, y0[i]:y1[i], x0[i]:x1[i]]
        weights[top:bottom, : x1[i] - x0[i]] = heat[k, y0[i]:y1[i], x0[i]:x1[i]]
    labels_count, labels, stats, _ = cv2.connectedComponentsWithStats(
        canvas, connectivity=8, ltype=cv2.CV_32S)
    inside = canvas.view(bool)
    sums = np.bincount(labels[inside], weights=weights[inside].astype(np.float64),  # as localize
                       minlength=labels_count)[1:]
    stats = stats[1:]
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    scores = sums / np.maximum(areas, 1)
    crop = np.searchsorted(offsets, stats[:, cv2.CC_STAT_TOP], side="right") - 1
    tile = kept[crop]
    top = stats[:, cv2.CC_STAT_TOP] - offsets[crop] + y0[crop]
    left = stats[:, cv2.CC_STAT_LEFT] + x0[crop]
    boxes = np.stack([left, top, left + stats[:, cv2.CC_STAT_WIDTH],
                      top + stats[:, cv2.CC_STAT_HEIGHT]], axis=1).astype(np.float32)
    # labels follow raster order, so sorting by (map, -score) stably keeps localize's ties
    order = np.lexsort((-scores, tile))
    boxes, scores = boxes[order], scores[order].astype(np.float32)
    bounds = np.searchsorted(tile[order], np.arange(count + 1))
    return [(boxes[bounds[i]:bounds[i + 1]].reshape(-1, 4), scores[bounds[i]:bounds[i + 1]])
            for i in range(count)]


def box_means(heat: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(K,) mean of ``heat`` inside each box (integer pixel-edge ``x0, y0, x1, y1``).

    The box score of Bency et al. (ECCV 2016, sec. 3.4): every pixel of the rectangle counts,
    also those of it below the threshold that made the box. An empty box scores 0.
    """
    heat = np.asarray(heat, np.float64)
    boxes = np.asarray(boxes).reshape(-1, 4)
    height, width = heat.shape
    table = np.zeros((height + 1, width + 1))
    table[1:, 1:] = heat.cumsum(0).cumsum(1)
    x0, y0, x1, y1 = np.round(boxes).astype(np.int64).T
    x0, x1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
    y0, y1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
    sums = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    return np.where(areas > 0, sums / np.maximum(areas, 1), 0.0)


def _exact_levels(levels: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Thresholds in the maps' float type with ``v >= level`` unchanged for every value ``v``.

    A float32 map compared with float64 thresholds (as :func:`localize` compares, in float64)
    gives the same mask as comparing with the smallest float32 at or above each threshold, and
    that comparison needs no float64 copy of the maps.
    """
    if not np.issubdtype(dtype, np.floating) or np.dtype(dtype).itemsize >= 8:
        return levels
    rounded = levels.astype(dtype)
    low = rounded.astype(np.float64) < levels
    rounded[low] = np.nextafter(rounded[low], np.array(np.inf, dtype))
    return rounded
