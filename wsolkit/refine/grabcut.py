"""GrabCut foreground extraction seeded by a heatmap (MASON, sections 3.1 and 3.2).

:func:`stratify` turns a [0, 1] heatmap into GrabCut's four labels (OpenCV's values):

- ``BGD = 0`` sure background, ``FGD = 1`` sure foreground,
- ``PR_BGD = 2`` probable background, ``PR_FGD = 3`` probable foreground.

:func:`grabcut` runs ``cv2.grabCut`` from such a label map (or from a box) and returns a bool
mask; :func:`grabcut_box` is plain GrabCut from a box with a margin, the usual baseline.

Rules of :func:`stratify` (``v`` = heatmap value, thresholds computed from the values inside
``region``; pixels outside ``region`` are ``BGD``):

- ``"paper"``: MASON's rule as written in the paper: ``v > mean -> FGD``,
  ``0 < v <= mean -> PR_FGD``, ``v == 0 -> PR_BGD`` (no sure background). The authors'
  released code takes the mean over the nonzero values only (``mean="nonzero"``). A min-max
  normalized map is exactly zero at its minimum only, so on such maps this rule leaves almost
  no background seed and GrabCut keeps nearly everything.
- ``"quantile"``: thresholds at quantiles of the values: ``v >= Q(fg) -> FGD``,
  ``Q(split) <= v < Q(fg) -> PR_FGD``, ``Q(bg) <= v < Q(split) -> PR_BGD``,
  ``v < Q(bg) -> BGD``. A threshold equal to the smallest value compares strictly
  (``v > t``), so a flat lower part (exact zeros) is never promoted to foreground.
- ``"otsu"``: ``t`` = Otsu's threshold of the values (:func:`~wsolkit.refine.threshold_value`),
  ``v >= t -> PR_FGD`` (``>= t + fg (max - t) -> FGD``), ``v < t -> PR_BGD``
  (``< bg t -> BGD``).

``fg=None`` / ``bg=None`` give no sure foreground / background. ``border`` (a fraction of the
shorter side, or whole pixels when >= 1) marks a frame along the image edges as sure background,
except for pixels labelled sure foreground (an object cut by the image edge keeps its seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import cv2
import numpy as np

from wsolkit.checks import RANGE_TOLERANCE, check_heatmap, check_integer
from wsolkit.errors import InputError
from wsolkit.refine.threshold import threshold_value

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

BGD, FGD, PR_BGD, PR_FGD = int(cv2.GC_BGD), int(cv2.GC_FGD), int(cv2.GC_PR_BGD), int(cv2.GC_PR_FGD)

RULES = ("paper", "quantile", "otsu")
"""Names accepted by the ``rule`` argument of :func:`stratify`."""

STRATIFY_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quantile": {"fg": 0.99, "split": 0.85, "bg": 0.7},
    "otsu": {"fg": 0.5, "bg": 0.5},
}
"""Parameters each rule uses when they are not given (see the module docstring). The quantile
levels are those chosen for whole-image segmentation on davis (objects cover ~7% of a frame)."""

MIN_SEEDS = 5
"""Fewest foreground and background pixels GrabCut needs: its colour models are mixtures of five
Gaussians initialized by k-means, which OpenCV refuses with fewer samples than components."""


def _fraction(value: Any, name: str, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{name} must be a number in [0, 1]{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return float(value)


def _border_width(border: Any, shape: tuple[int, int]) -> int:
    if isinstance(border, bool) or not isinstance(border, Real) or not math.isfinite(border) \
            or border < 0:
        raise InputError(f"border must be a number >= 0, got {border!r}")
    if border >= 1:
        return int(round(border))
    return int(round(float(border) * min(shape))) if border > 0 else 0


def _check_region(region: Any, shape: tuple[int, int]) -> np.ndarray | None:
    if region is None:
        return None
    if not isinstance(region, np.ndarray) or region.dtype != np.bool_ or region.shape != shape:
        raise InputError(f"region must be a bool numpy array of shape {shape}")
    return region


def stratify(
    heatmap: Any,
    rule: str = "quantile",
    *,
    fg: float | None | str = "default",
    split: float | None | str = "default",
    bg: float | None | str = "default",
    border: float = 0.0,
    region: np.ndarray | None = None,
    mean: str = "all",
) -> np.ndarray:
    """Stratify a heatmap into GrabCut's four labels.

    Args:
        heatmap: (H, W) map in [0, 1], numpy or torch (not modified).
        rule: ``"paper"``, ``"quantile"`` or ``"otsu"`` (see the module docstring).
        fg: ``quantile``: quantile of the sure-foreground threshold; ``otsu``: fraction of the
            way from Otsu's threshold to the maximum. None: no sure foreground.
            ``"default"``: :data:`STRATIFY_DEFAULTS`.
        split: ``quantile`` only: quantile separating probable foreground from probable
            background.
        bg: ``quantile``: quantile of the sure-background threshold; ``otsu``: fraction of
            Otsu's threshold. None: no sure background.
        border: width of a sure-background frame along the image edges, as a fraction of the
            shorter side (< 1) or in pixels (>= 1); sure-foreground pixels keep their label.
        region: optional (H, W) bool mask; thresholds use the values inside it and every pixel
            outside it is sure background (e.g. the inside of a box).
        mean: ``paper`` only: ``"all"`` (the paper's text) or ``"nonzero"`` (the authors' code).

    Returns:
        (H, W) uint8 label map with values in ``{BGD, FGD, PR_BGD, PR_FGD}``.

    Raises:
        InputError: unknown rule, parameter out of range or not used by the rule, heatmap not a
            2-D finite [0, 1] map, bad region.
    """
    if not isinstance(rule, str) or rule not in RULES:
        raise InputError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    values = check_heatmap(heatmap, tolerance=RANGE_TOLERANCE)
    shape = values.shape
    inside = _check_region(region, shape)
    given = {"fg": fg, "split": split, "bg": bg}
    params = dict(STRATIFY_DEFAULTS[rule])
    for name, value in given.items():
        if isinstance(value, str) and value == "default":
            continue
        if name not in params:
            raise InputError(f"rule {rule!r} takes no {name!r} parameter")
        params[name] = _fraction(value, name)
    width = _border_width(border, shape)

    labels = np.full(shape, BGD, np.uint8)
    pool = values if inside is None else values[inside]
    if pool.size:
        if rule == "paper":
            labels = _paper(values, pool, mean)
        elif rule == "quantile":
            labels = _quantile(values, pool, params)
        else:
            labels = _otsu(values, pool, params)
    if inside is not None:
        labels[~inside] = BGD
    if width > 0:
        frame = np.ones(shape, bool)
        frame[width:-width, width:-width] = False
        labels[frame & (labels != FGD)] = BGD
    return labels


def _paper(values: np.ndarray, pool: np.ndarray, mean: str) -> np.ndarray:
    if mean not in ("all", "nonzero"):
        raise InputError(f"mean must be 'all' or 'nonzero', got {mean!r}")
    nonzero = pool[pool != 0]
    if mean == "all":
        level = float(pool.mean())
    else:
        level = float(nonzero.mean()) if nonzero.size else 0.0
    labels = np.full(values.shape, PR_BGD, np.uint8)
    labels[values > 0] = PR_FGD
    labels[values > level] = FGD
    return labels


def _by_thresholds(
    values: np.ndarray, low: float | None, mid: float, high: float | None, floor: float
) -> np.ndarray:
    """Labels from three thresholds; a threshold at the minimum ``floor`` compares strictly.

    ``v >= t`` with ``t`` equal to the smallest value would put every pixel above it (a map
    with a flat lower part, e.g. exact zeros after a ReLU), so there ``v > t`` is used instead.
    """

    def above(level: float) -> np.ndarray:
        return values > level if level <= floor else values >= level

    labels = np.where(above(mid), PR_FGD, PR_BGD).astype(np.uint8)
    if high is not None:
        labels[above(high)] = FGD
    if low is not None:
        labels[~above(low)] = BGD
    return labels


def _quantile(values: np.ndarray, pool: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    fg, split, bg = params["fg"], params["split"], params["bg"]
    if split is None:
        raise InputError("split must be a number in [0, 1] for rule 'quantile'")
    if fg is not None and fg < split:
        raise InputError(f"fg ({fg}) must be >= split ({split})")
    if bg is not None and bg > split:
        raise InputError(f"bg ({bg}) must be <= split ({split})")
    wanted = [q for q in (bg, split, fg) if q is not None]
    found = dict(zip(wanted, np.quantile(pool, wanted), strict=True))
    high = None if fg is None else float(found[fg])
    low = None if bg is None else float(found[bg])
    mid = float(found[split])
    if low is not None and low >= mid:  # a flat lower part: keep its pixels probable
        low = None
    return _by_thresholds(values, low, mid, high, float(pool.min()))


def _otsu(values: np.ndarray, pool: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    fg, bg = params["fg"], params["bg"]
    level = threshold_value(pool.reshape(1, -1), "otsu")
    top = float(pool.max())
    if not math.isfinite(level):  # all values in one bin: nothing separates the classes
        return np.full(values.shape, PR_FGD, np.uint8)
    high = None if fg is None else level + fg * (top - level)
    low = None if bg is None else bg * level
    return _by_thresholds(values, low, level, high, float(pool.min()))


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


def box_rect(box: Sequence[float] | np.ndarray, shape: tuple[int, int]) -> tuple[int, ...]:
    """Pixel rectangle ``(x0, y0, x1, y1)`` covered by an edge-coordinate box, clipped.

    A pixel is inside when any part of it is (``floor`` of the low edges, ``ceil`` of the high
    ones), then the rectangle is clipped to the image ``shape`` (H, W). An empty result
    (``x1 <= x0`` or ``y1 <= y0``) means the box is degenerate or outside the image.

    Raises:
        InputError: ``box`` is not four finite numbers.
    """
    try:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise InputError(f"box must be four numbers x0, y0, x1, y1, got {box!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise InputError(f"box must hold finite numbers, got {box!r}")
    height, width = shape
    left, top = max(0, math.floor(x0)), max(0, math.floor(y0))
    right, bottom = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    return left, top, max(left, right), max(top, bottom)


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


def expand_box(box: Sequence[float] | np.ndarray, margin: float) -> np.ndarray:
    """Grow an ``x0, y0, x1, y1`` box by ``margin`` times its width / height on each side."""
    if isinstance(margin, bool) or not isinstance(margin, Real) or not math.isfinite(margin) \
            or margin < 0:
        raise InputError(f"margin must be a finite number >= 0, got {margin!r}")
    try:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise InputError(f"box must be four numbers x0, y0, x1, y1, got {box!r}") from None
    dx, dy = margin * max(x1 - x0, 0.0), margin * max(y1 - y0, 0.0)
    return np.array([x0 - dx, y0 - dy, x1 + dx, y1 + dy], np.float64)


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
