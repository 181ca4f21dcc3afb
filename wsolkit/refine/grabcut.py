"""GrabCut foreground extraction seeded by a heatmap (MASON, sections 3.1 and 3.2).

:func:`grabcut` runs ``cv2.grabCut`` from a label map of :func:`~wsolkit.refine.stratify.stratify`
(or from a box) and returns a bool mask; :func:`grabcut_box` is plain GrabCut from a box with a
margin, the usual baseline; :func:`box_prior` is a Gaussian "object in the middle of its box"
seed map.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Any

import cv2
import numpy as np

from wsolkit.checks import check_integer
from wsolkit.errors import InputError
from wsolkit.refine.boxes import box_rect, expand_box

# The labels and stratify lived here before wsolkit.refine.stratify; old imports keep working.
from wsolkit.refine.stratify import (
    BGD,
    FGD,
    PR_BGD,
    PR_FGD,
    RULES,
    STRATIFY_DEFAULTS,
    stratify,
)

__all__ = [
    "BGD",
    "FGD",
    "MIN_SEEDS",
    "PR_BGD",
    "PR_FGD",
    "RULES",
    "STRATIFY_DEFAULTS",
    "box_prior",
    "box_rect",
    "expand_box",
    "grabcut",
    "grabcut_box",
    "stratify",
]

MIN_SEEDS = 5
"""Fewest foreground and background pixels GrabCut needs: its colour models are mixtures of five
Gaussians initialized by k-means, which OpenCV refuses with fewer samples than components."""


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
            or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise InputError(
            f"image must be an (H, W, 3) uint8 RGB numpy array, got {type(image).__name__} "
            f"of shape {shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image must not be empty, got shape {image.shape}")
    return np.ascontiguousarray(image)



def box_prior(
    shape: tuple[int, int], box: Sequence[float] | np.ndarray, sigma: float = 1 / 3
) -> np.ndarray:
    """Gaussian "object in the middle of its box" prior, 1 at the box centre.

    ``exp(-((x - cx) / (sigma w))^2 - ((y - cy) / (sigma h))^2)`` at pixel centres, for a box
    of centre ``(cx, cy)`` and size ``(w, h)`` (edge coordinates): a Gaussian whose standard
    deviation is ``sigma w / sqrt(2)`` across and ``sigma h / sqrt(2)`` down (``sigma`` is
    the 1/e half-width, not the standard deviation).

    Args:
        shape: (H, W) of the map.
        box: ``x0, y0, x1, y1`` in pixel edges (may extend past the map).
        sigma: 1/e half-width as a fraction of the box size (std = ``sigma / sqrt(2)``), > 0.

    Returns:
        (H, W) float32 map in (0, 1].
    """
    if isinstance(sigma, bool) or not isinstance(sigma, Real) or not sigma > 0:
        raise InputError(f"sigma must be a number > 0, got {sigma!r}")
    x0, y0, x1, y1 = expand_box(box, 0.0)
    width, height = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    ys = (np.arange(shape[0]) + 0.5 - (y0 + y1) / 2) / (sigma * height)
    xs = (np.arange(shape[1]) + 0.5 - (x0 + x1) / 2) / (sigma * width)
    return np.exp(-(ys[:, None] ** 2) - xs[None, :] ** 2).astype(np.float32)


def _rect_labels(rect: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """GrabCut labels of a box: ``PR_FGD`` inside, ``BGD`` outside (clipped to the image)."""
    x0, y0, x1, y1 = box_rect(rect, shape)
    labels = np.full(shape, BGD, np.uint8)
    labels[y0:y1, x0:x1] = PR_FGD
    return labels


def _ring(labels: np.ndarray, value: int) -> None:
    """Set the outermost pixel ring of a label map to ``value`` where it is not ``FGD``."""
    ring = np.zeros(labels.shape, bool)
    ring[[0, -1], :] = True
    ring[:, [0, -1]] = True
    labels[ring & (labels != FGD)] = value


def grabcut(
    image: np.ndarray,
    labels_or_rect: np.ndarray | Sequence[float],
    iterations: int = 5,
    converge: bool = False,
) -> np.ndarray:
    """Run OpenCV GrabCut from a label map or a box; never fails on degenerate seeds.

    ``cv2.grabCut`` needs at least :data:`MIN_SEEDS` foreground (``FGD``/``PR_FGD``) and
    background (``BGD``/``PR_BGD``) pixels to initialize its colour models. The cases where
    that does not hold are handled without calling it:

    - a box that is empty after clipping to the image (zero size, outside the image) or a label
      map without foreground pixels: an all-False mask;
    - no background pixels (a box covering the whole image, a map that is all foreground): the
      outermost pixel ring that is not sure foreground becomes probable background; if that
      still leaves fewer than :data:`MIN_SEEDS` background pixels, the foreground pixels of
      the label map are returned as they are (GrabCut has nothing to contrast them with);
    - fewer than :data:`MIN_SEEDS` foreground pixels (a box of a few pixels): those pixels
      are returned;
    - only sure labels (no ``PR_*`` pixel): the sure foreground is returned (nothing to
      decide);
    - any ``cv2.error`` from GrabCut itself: the label map's foreground pixels.

    The random generator of OpenCV's k-means is seeded (``cv2.setRNGSeed(0)``) before each
    call, so results do not depend on what ran before.

    Args:
        image: (H, W, 3) uint8 RGB image (not modified).
        labels_or_rect: (H, W) uint8 label map with values in ``{BGD, FGD, PR_BGD, PR_FGD}``
            (not modified), or a box ``x0, y0, x1, y1`` in pixel-edge coordinates
            (GrabCut's rectangle initialization: probable foreground inside, sure background
            outside; the box is clipped to the image).
        iterations: GrabCut iterations, >= 1 (with ``converge``: the most run).
        converge: iterate until an iteration after the first changes no pixel's label
            (MASON: "iterated until the GMM converges"), at most ``iterations`` times. Run one
            iteration at a time, each resuming from the colour models of the previous one:
            the same computation as one call with that many iterations.

    Returns:
        (H, W) bool mask of the pixels labelled (probable) foreground.

    Raises:
        InputError: image not (H, W, 3) uint8, label map of another size or with other values,
            box not four finite numbers, bad iterations.
    """
    image = _check_image(image)
    iterations = check_integer(iterations, "iterations", 1)
    shape = image.shape[:2]
    labels = _as_labels(labels_or_rect, shape)
    foreground = (labels == FGD) | (labels == PR_FGD)
    n_fg = int(np.count_nonzero(foreground))
    if n_fg == 0:
        return np.zeros(shape, bool)
    if n_fg < MIN_SEEDS:
        return foreground
    if foreground.size - n_fg < MIN_SEEDS:
        labels = labels.copy()
        _ring(labels, PR_BGD)
        n_ring_fg = int(np.count_nonzero((labels == FGD) | (labels == PR_FGD)))
        if labels.size - n_ring_fg < MIN_SEEDS or n_ring_fg < MIN_SEEDS:
            return foreground
    if not np.any((labels == PR_FGD) | (labels == PR_BGD)):
        return labels == FGD
    work = np.array(labels, dtype=np.uint8, copy=True)
    background_model = np.zeros((1, 65), np.float64)
    foreground_model = np.zeros((1, 65), np.float64)
    try:
        cv2.setRNGSeed(0)
        if not converge:
            cv2.grabCut(image, work, None, background_model, foreground_model, iterations,
                        cv2.GC_INIT_WITH_MASK)
        for index in range(iterations if converge else 0):
            before = work.copy()
            cv2.grabCut(image, work, None, background_model, foreground_model, 1,
                        cv2.GC_EVAL if index else cv2.GC_INIT_WITH_MASK)
            if index and np.array_equal(work, before):
                break
    except cv2.error:
        return (labels == FGD) | (labels == PR_FGD)
    return (work == FGD) | (work == PR_FGD)


def _as_labels(labels_or_rect: Any, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(labels_or_rect, np.ndarray) and labels_or_rect.ndim == 2:
        labels = labels_or_rect
        if labels.shape != shape:
            raise InputError(
                f"label map shape {labels.shape} does not match image shape {shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"label map must hold integers, got dtype {labels.dtype}")
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 3):
            raise InputError("label map values must be GrabCut labels 0, 1, 2 or 3")
        return labels.astype(np.uint8, copy=False)
    return _rect_labels(labels_or_rect, shape)


def grabcut_box(
    image: np.ndarray,
    box: Sequence[float] | np.ndarray,
    margin: float = 0.05,
    iterations: int = 5,
) -> np.ndarray:
    """Plain GrabCut from a box (rectangle initialization), the box-to-mask baseline.

    The box is grown by ``margin`` times its width and height on each side, clipped to the
    image, and GrabCut runs on the whole image with sure background outside the rectangle.
    Degenerate cases are handled as in :func:`grabcut` (empty box: empty mask; box covering
    the whole image: its outer pixel ring is probable background).

    Args:
        image: (H, W, 3) uint8 RGB image (not modified).
        box: ``x0, y0, x1, y1`` in pixel-edge coordinates.
        margin: growth of the box on each side, as a fraction of its size (>= 0).
        iterations: GrabCut iterations, >= 1.

    Returns:
        (H, W) bool mask.
    """
    return grabcut(image, expand_box(box, margin), iterations)
