"""Stratifying a heatmap into GrabCut's seed labels (MASON, sections 3.1 and 3.2).

:func:`stratify` turns a [0, 1] heatmap into GrabCut's four labels (OpenCV's values):

- ``BGD = 0`` sure background, ``FGD = 1`` sure foreground,
- ``PR_BGD = 2`` probable background, ``PR_FGD = 3`` probable foreground.

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
from numbers import Real
from typing import Any

import cv2
import numpy as np

from wsolkit.checks import RANGE_TOLERANCE, check_heatmap
from wsolkit.errors import InputError
from wsolkit.refine.threshold import threshold_value

__all__ = ["BGD", "FGD", "PR_BGD", "PR_FGD", "RULES", "STRATIFY_DEFAULTS", "stratify"]

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
