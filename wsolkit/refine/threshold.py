"""Thresholding a heatmap into a foreground mask.

Every method reduces to one number ``t`` (see :func:`threshold_value`) and the mask is
``heatmap >= t``, compared in float64 so numpy and torch inputs give identical masks.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import cv2
import numpy as np
import torch

from wsolkit.checks import RANGE_TOLERANCE, check_heatmap
from wsolkit.errors import InputError

METHODS = ("fixed", "fraction", "mean", "otsu")
"""Names accepted by the ``method`` argument."""

_DEFAULT_VALUES = {"fixed": 0.5, "fraction": 0.5, "mean": 1.0, "otsu": None}
_OTSU_BINS = 256


def _check_method_value(method: str, value: float | None) -> float | None:
    """Validate ``method`` and ``value``; return the value to use (method default if None)."""
    if not isinstance(method, str) or method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "otsu":
        return None
    if value is None:
        return _DEFAULT_VALUES[method]
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)):
        raise InputError(f"value must be a real number, got {value!r}")
    value = float(value)
    if method in ("fixed", "fraction") and not 0.0 <= value <= 1.0:
        raise InputError(f"value must lie in [0, 1] for method {method!r}, got {value}")
    if method == "mean" and not (0.0 <= value < math.inf):
        raise InputError(f"value must be finite and >= 0 for method 'mean', got {value}")
    return value


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of a [0, 1] map on 256 equal-width bins ``[k/256, (k+1)/256)``.

    The bin index is computed exactly (``floor(v * 256)``, a power-of-two product), Otsu's
    bin ``k`` comes from ``cv2.threshold`` (class 0 = bins ``<= k``) and the returned value
    is ``(k + 1) / 256``, so ``values >= result`` equals ``bins > k``. Maps whose values all
    fall in one bin have no threshold and give ``inf`` (empty mask).
    """
    bins = np.clip(np.floor(values * _OTSU_BINS), 0, _OTSU_BINS - 1).astype(np.uint8)
    if int(bins.min()) == int(bins.max()):
        return math.inf
    level, _ = cv2.threshold(bins, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return (float(level) + 1.0) / _OTSU_BINS


def _threshold(values: np.ndarray, method: str, value: float | None) -> float:
    """Numeric threshold for an already validated float64 map."""
    if method == "fixed":
        return float(value)
    if method == "fraction":
        return float(value) * float(values.max())
    if method == "mean":
        return float(value) * float(values.mean())
    return _otsu(values)


def threshold_value(heatmap: Any, method: str = "fraction", value: float | None = None) -> float:
    """Return the numeric threshold ``t`` that :func:`threshold_map` compares against.

    Args:
        heatmap: (H, W) float map in [0, 1], numpy array or torch tensor.
        method: ``"fixed"`` (``t = value``), ``"fraction"`` (``t = value * max``),
            ``"mean"`` (``t = value * mean``) or ``"otsu"`` (Otsu's threshold on 256
            equal-width bins over [0, 1]; ``value`` is ignored).
        value: Method parameter; ``None`` picks the method default (fixed 0.5, fraction
            0.5, mean 1.0). Must lie in [0, 1] for fixed/fraction and be finite and >= 0
            for mean.

    Returns:
        The threshold as a Python float; ``math.inf`` for Otsu on a map whose values all
        fall in one bin (e.g. a constant map), which yields an empty mask.

    Raises:
        InputError: Unknown method, value out of range, heatmap not 2-D, empty, NaN/inf or
            outside [0, 1].
    """
    value = _check_method_value(method, value)
    values = check_heatmap(heatmap, tolerance=RANGE_TOLERANCE)
    return _threshold(values, method, value)


def threshold_map(heatmap: Any, method: str = "fraction", value: float | None = None) -> Any:
    """Threshold a heatmap into a bool foreground mask ``heatmap >= t``.

    See :func:`threshold_value` for the methods and the meaning of ``value``.

    Args:
        heatmap: (H, W) float map in [0, 1], numpy array or torch tensor (not modified).
        method: ``"fixed"``, ``"fraction"``, ``"mean"`` or ``"otsu"``.
        value: Method parameter, ``None`` for the method default.

    Returns:
        (H, W) bool mask of the input's type: numpy bool array, or torch bool tensor on the
        input's device.

    Raises:
        InputError: As :func:`threshold_value`.
    """
    value = _check_method_value(method, value)
    values = check_heatmap(heatmap, tolerance=RANGE_TOLERANCE)
    mask = values >= _threshold(values, method, value)
    if isinstance(heatmap, torch.Tensor):
        return torch.from_numpy(mask).to(heatmap.device)
    return mask
