"""Empirical variogram of an image and the Gaussian variogram fit that sizes the guided filter.

The rCAM paper (Section 3.3) picks the guided filter window from the shape map ``S``: the
empirical variogram ``gamma_hat(h) = 1 / (2 |N(h)|) * sum_{N(h)} (S(x_i) - S(x_j))^2`` is fitted
by ``gamma(h) = c1 * exp(-h^2 / (2 sigma^2)) + c2`` and ``sigma`` becomes the window radius.
Here ``N(h)`` holds the horizontal and vertical pixel pairs ``h`` apart (pooled), and a
multi-channel image averages over its channels.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from wsolkit.errors import InputError

FALLBACK_SIGMA = 1.0
"""``sigma`` returned for a flat empirical variogram (e.g. a constant image)."""

MIN_SIGMA = 0.1
"""Lower bound of the fitted ``sigma``; the upper bound is ``4 * max(lags)``."""

_MIN_POINTS = 3
_FLAT_TOLERANCE = 1e-12
_GRID_SIZE = 64


@dataclass(frozen=True)
class VariogramFit:
    """Parameters of ``gamma(h) = c1 * exp(-h^2 / (2 sigma^2)) + c2``.

    For an increasing variogram ``c1`` is negative: ``c1 + c2`` is the nugget (value at
    ``h = 0``) and ``c2`` the sill.

    Attributes:
        c1: Amplitude of the Gaussian term.
        c2: Constant term (the sill).
        sigma: Range parameter in pixels, ``> 0``.
    """

    c1: float
    c2: float
    sigma: float

    def __call__(self, lags: Any) -> np.ndarray:
        """Evaluate the model at ``lags`` (float64 array)."""
        return _model(np.asarray(lags, dtype=np.float64), self.c1, self.c2, self.sigma)


def _model(h: np.ndarray, c1: float, c2: float, sigma: float) -> np.ndarray:
    return c1 * np.exp(-(h * h) / (2.0 * sigma * sigma)) + c2


def _check_image(image: Any) -> np.ndarray:
    """Validate an (H, W) or (H, W, C) real image; return it as (H, W, C) float64."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3):
        raise InputError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)
            or image.dtype == np.bool_):
        raise InputError(f"image must hold real numbers, got dtype {image.dtype}")
    if image.size == 0:
        raise InputError(f"image must not be empty, got shape {image.shape}")
    values = image.astype(np.float64)
    if not np.isfinite(values).all():
        raise InputError("image contains NaN or inf")
    if values.ndim == 2:
        values = values[:, :, None]
    if max(values.shape[:2]) < 2:
        raise InputError(f"image must have at least 2 pixels along H or W, got {image.shape}")
    return values


def _default_max_lag(height: int, width: int) -> int:
    return max(1, min(height, width) // 2)


def empirical_variogram(
    image: np.ndarray, max_lag: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Empirical variogram over horizontal and vertical pixel offsets ``h = 1 .. max_lag``.

    ``gamma[h - 1] = sum (Z(x + h) - Z(x))^2 / (2 * n(h))`` over every horizontal and
    vertical pair ``h`` pixels apart (pooled, ``n(h)`` pairs), averaged over channels.

    Args:
        image: (H, W) or (H, W, C) real array (not modified).
        max_lag: Largest offset, ``1 <= max_lag < max(H, W)``; ``None`` for
            ``max(1, min(H, W) // 2)``.

    Returns:
        ``(lags, gamma)``: ``lags`` (L,) float64 ``1 .. max_lag``, ``gamma`` (L,) float64.

    Raises:
        InputError: Not a numpy array, wrong rank, non-numeric, empty, NaN/inf, fewer than
            two pixels along both axes, or ``max_lag`` out of range.
    """
    values = _check_image(image)
    height, width = values.shape[:2]
    if max_lag is None:
        max_lag = _default_max_lag(height, width)
    if (isinstance(max_lag, bool) or not isinstance(max_lag, (int, np.integer))
            or not 1 <= max_lag < max(height, width)):
        raise InputError(
            f"max_lag must be an integer in [1, {max(height, width) - 1}], got {max_lag!r}"
        )
    channels = values.shape[2]
    lags = np.arange(1, int(max_lag) + 1, dtype=np.float64)
    gamma = np.empty_like(lags)
    for index, lag in enumerate(range(1, int(max_lag) + 1)):
        total, pairs = 0.0, 0
        if lag < width:
            diff = values[:, lag:] - values[:, :-lag]
            total += float(np.einsum("ijk,ijk->", diff, diff))
            pairs += height * (width - lag)
        if lag < height:
            diff = values[lag:] - values[:-lag]
            total += float(np.einsum("ijk,ijk->", diff, diff))
            pairs += (height - lag) * width
        gamma[index] = total / (2.0 * pairs * channels)
    return lags, gamma


def _check_curve(lags: Any, gamma: Any) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(lags, dtype=np.float64) if isinstance(lags, np.ndarray) else None
    g = np.asarray(gamma, dtype=np.float64) if isinstance(gamma, np.ndarray) else None
    if h is None or g is None:
        raise InputError("lags and gamma must be numpy arrays")
    if h.ndim != 1 or g.shape != h.shape:
        raise InputError(
            f"lags and gamma must be 1-D of equal length, got shapes {h.shape} and {g.shape}"
        )
    if h.size < _MIN_POINTS:
        raise InputError(f"need at least {_MIN_POINTS} lags to fit 3 parameters, got {h.size}")
    if not (np.isfinite(h).all() and np.isfinite(g).all()):
        raise InputError("lags and gamma must be finite")
    if (h <= 0).any():
        raise InputError("lags must be > 0")
    return h, g


def _linear_fit(h: np.ndarray, g: np.ndarray, sigma: float) -> tuple[float, float, float]:
    """Least-squares ``c1, c2`` for a fixed ``sigma``; returns ``(c1, c2, residual)``."""
    design = np.stack([np.exp(-(h * h) / (2.0 * sigma * sigma)), np.ones_like(h)], axis=1)
    coef, *_ = np.linalg.lstsq(design, g, rcond=None)
    residual = float(np.sum((design @ coef - g) ** 2))
    return float(coef[0]), float(coef[1]), residual


def fit_gaussian_variogram(lags: np.ndarray, gamma: np.ndarray) -> VariogramFit:
    """Least-squares fit of ``gamma(h) = c1 * exp(-h^2 / (2 sigma^2)) + c2``.

    Starting values come from a log-spaced grid over ``sigma`` (``c1, c2`` solved linearly
    per ``sigma``); ``scipy.optimize.curve_fit`` then refines all three with ``sigma``
    bounded to ``[MIN_SIGMA, 4 * max(lags)]``. If the refinement fails the grid optimum is
    kept.

    Fallback: a flat empirical variogram (spread ``<= 1e-12`` times its magnitude, e.g. a
    constant image) carries no range information and gives
    ``VariogramFit(c1=0, c2=mean(gamma), sigma=FALLBACK_SIGMA)`` (``sigma = 1``).

    Args:
        lags: (L,) positive lags, L >= 3.
        gamma: (L,) empirical variogram values.

    Returns:
        A :class:`VariogramFit`.

    Raises:
        InputError: Not numpy arrays, not 1-D of equal length, fewer than 3 points,
            NaN/inf, or a lag <= 0.
    """
    h, g = _check_curve(lags, gamma)
    magnitude = float(np.max(np.abs(g)))
    if float(np.ptp(g)) <= _FLAT_TOLERANCE * max(magnitude, 1.0):
        return VariogramFit(0.0, float(np.mean(g)), FALLBACK_SIGMA)
    scale = magnitude  # > 0 because g is not flat
    gs = g / scale
    upper = 4.0 * float(h.max())
    grid = np.geomspace(MIN_SIGMA, upper, _GRID_SIZE)
    best = min((_linear_fit(h, gs, s) + (s,) for s in grid), key=lambda item: item[2])
    c1, c2, _, sigma = best
    sigma = float(np.clip(sigma, MIN_SIGMA * (1 + 1e-9), upper * (1 - 1e-9)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(
                _model, h, gs, p0=[c1, c2, sigma],
                bounds=([-np.inf, -np.inf, MIN_SIGMA], [np.inf, np.inf, upper]),
                maxfev=2000,
            )
        if np.all(np.isfinite(params)):
            c1, c2, sigma = (float(v) for v in params)
    except (RuntimeError, ValueError):
        pass
    return VariogramFit(c1 * scale, c2 * scale, sigma)


def variogram_radius(
    guide: np.ndarray, min_radius: int = 1, max_radius: int | None = None
) -> int:
    """Guided filter radius for a guide: ``sigma`` of its Gaussian variogram fit.

    Computes :func:`empirical_variogram` (default ``max_lag``, at least 3 lags where the
    image allows), fits it with :func:`fit_gaussian_variogram`, rounds ``sigma`` half up and
    clips it to ``[min_radius, max_radius]``. A constant guide gives ``sigma = 1``.

    Args:
        guide: (H, W) or (H, W, C) real array (not modified).
        min_radius: Smallest radius returned, >= 1.
        max_radius: Largest radius returned, >= ``min_radius``; ``None`` for
            ``max(min_radius, min(H, W) // 2)``.

    Returns:
        The radius as a Python int.

    Raises:
        InputError: As :func:`empirical_variogram`; a guide with fewer than 4 pixels along
            its longer side; bad ``min_radius`` / ``max_radius``.
    """
    values = _check_image(guide)
    height, width = values.shape[:2]
    if isinstance(min_radius, bool) or not isinstance(min_radius, (int, np.integer)) \
            or min_radius < 1:
        raise InputError(f"min_radius must be an integer >= 1, got {min_radius!r}")
    if max_radius is None:
        max_radius = max(int(min_radius), min(height, width) // 2)
    if isinstance(max_radius, bool) or not isinstance(max_radius, (int, np.integer)) \
            or max_radius < min_radius:
        raise InputError(
            f"max_radius must be an integer >= min_radius ({min_radius}), got {max_radius!r}"
        )
    longest = max(height, width)
    if longest - 1 < _MIN_POINTS:
        raise InputError(
            f"guide needs at least {_MIN_POINTS + 1} pixels along H or W, got {guide.shape}"
        )
    max_lag = min(max(_default_max_lag(height, width), _MIN_POINTS), longest - 1)
    lags, gamma = empirical_variogram(values, max_lag)
    sigma = fit_gaussian_variogram(lags, gamma).sigma
    radius = int(math.floor(sigma + 0.5))
    return int(min(max(radius, int(min_radius)), int(max_radius)))
