"""Empirical variogram of an image and the Gaussian variogram fit that sizes the guided filter.

The rCAM paper (Section 3.3) picks the guided filter window from the shape map ``S``: the
empirical variogram ``gamma_hat(h) = 1 / (2 |N(h)|) * sum_{N(h)} (S(x_i) - S(x_j))^2`` is fitted
by ``gamma(h) = c1 * exp(-h^2 / (2 sigma^2)) + c2`` and ``sigma`` becomes "the size of the
filter". Here ``N(h)`` holds the horizontal and vertical pixel pairs ``h`` apart (pooled), and a
multi-channel image averages over its channels.

Two fits: ordinary least squares (``fit="ols"``, equal weight per lag; our default) and the
weighted least squares of Cressie (1985), the paper's reference [7] (``fit="cressie"``:
minimize ``sum_h |N(h)| * (gamma_hat(h) / gamma(h) - 1)^2``). Two readings of ``sigma``: the
filter's radius (``sigma_as="radius"``) or its window side ``2 r + 1`` (``sigma_as="window"``,
the paper's "size of the filter": ``r = round((sigma - 1) / 2)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsolkit.checks import check_integer
from wsolkit.errors import InputError

FALLBACK_SIGMA = 1.0
"""``sigma`` returned for a flat empirical variogram (e.g. a constant image)."""

MIN_SIGMA = 0.1
"""Lower bound of the fitted ``sigma``; the upper bound is ``4 * max(lags)``."""

FITS = ("ols", "cressie")
"""Variogram fits: ordinary least squares, or Cressie's weighted least squares."""

SIGMA_AS = ("radius", "window")
"""How ``sigma`` sizes the guided filter: its radius, or its window side ``2 r + 1``."""

_MIN_POINTS = 3
_FLAT_TOLERANCE = 1e-12
_GRID_SIZE = 64
_REFINE_ROUNDS = 8
_REFINE_POINTS = 21


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
    """Empirical variogram; see :func:`empirical_variogram_counts` (without the pair counts)."""
    lags, gamma, _ = empirical_variogram_counts(image, max_lag)
    return lags, gamma


def empirical_variogram_counts(
    image: np.ndarray, max_lag: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical variogram over horizontal and vertical pixel offsets ``h = 1 .. max_lag``.

    ``gamma[h - 1] = sum (Z(x + h) - Z(x))^2 / (2 * n(h))`` over every horizontal and
    vertical pair ``h`` pixels apart (pooled, ``n(h)`` pairs), averaged over channels.

    Args:
        image: (H, W) or (H, W, C) real array (not modified).
        max_lag: Largest offset, ``1 <= max_lag < max(H, W)``; ``None`` for
            ``max(1, min(H, W) // 2)``.

    Returns:
        ``(lags, gamma, counts)``: ``lags`` (L,) float64 ``1 .. max_lag``, ``gamma`` (L,)
        float64 and ``counts`` (L,) float64, the number of pixel pairs ``n(h)`` per lag.

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
    counts = np.empty_like(lags)
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
        counts[index] = pairs
    return lags, gamma, counts


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


def _profile(h: np.ndarray, g: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Least-squares residual of the best ``c1, c2`` for each ``sigma`` (vectorized).

    For a fixed ``sigma`` the model is linear in ``c1, c2``: with ``e = exp(-h^2 / 2 sigma^2)``
    the residual is ``S_gg - S_eg^2 / S_ee`` (``S`` sums of centred products); a constant
    ``e`` (``S_ee`` ~ 0) fits ``c2`` alone, leaving ``S_gg``.
    """
    e = np.exp(-(h * h)[None, :] / (2.0 * sigmas[:, None] ** 2))  # (G, L)
    e_c = e - e.mean(axis=1, keepdims=True)
    g_c = g - g.mean()
    s_ee = np.einsum("gl,gl->g", e_c, e_c)
    s_eg = e_c @ g_c
    s_gg = float(g_c @ g_c)
    explained = np.divide(s_eg * s_eg, s_ee, out=np.zeros_like(s_ee), where=s_ee > 1e-300)
    return np.maximum(s_gg - explained, 0.0)


def _coefficients(h: np.ndarray, g: np.ndarray, sigma: float) -> tuple[float, float]:
    """Least-squares ``c1, c2`` for a fixed ``sigma``."""
    e = np.exp(-(h * h) / (2.0 * sigma * sigma))
    e_c = e - e.mean()
    s_ee = float(e_c @ e_c)
    if s_ee <= 1e-300:
        return 0.0, float(g.mean())
    c1 = float(e_c @ (g - g.mean())) / s_ee
    return c1, float(g.mean() - c1 * e.mean())


def fit_gaussian_variogram(lags: np.ndarray, gamma: np.ndarray) -> VariogramFit:
    """Least-squares fit of ``gamma(h) = c1 * exp(-h^2 / (2 sigma^2)) + c2``.

    For a fixed ``sigma`` the best ``c1, c2`` have a closed form, so the fit is a 1-D search
    over ``sigma`` in ``[MIN_SIGMA, 4 * max(lags)]``: the profiled residual is evaluated on a
    coarse log-spaced grid of 64 values (all at once), then on finer grids of 21 values
    around the best one (8 rounds, each 10x finer, to a relative precision of ~1e-9). No
    iterative 3-parameter solver; the result is the least-squares optimum unless the coarse
    grid misses a narrower, deeper local minimum.

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
    log_grid = np.linspace(math.log(MIN_SIGMA), math.log(upper), _GRID_SIZE)
    residuals = _profile(h, gs, np.exp(log_grid))
    best = int(np.argmin(residuals))
    log_sigma, step = float(log_grid[best]), float(log_grid[1] - log_grid[0])
    for _ in range(_REFINE_ROUNDS):  # zoom in around the best point, all points at once
        local = np.clip(log_sigma + step * np.linspace(-1.0, 1.0, _REFINE_POINTS),
                        log_grid[0], log_grid[-1])
        values = _profile(h, gs, np.exp(local))
        log_sigma = float(local[int(np.argmin(values))])
        step *= 2.0 / (_REFINE_POINTS - 1)
    sigma = float(np.clip(math.exp(log_sigma), MIN_SIGMA, upper))
    c1, c2 = _coefficients(h, gs, sigma)
    return VariogramFit(c1 * scale, c2 * scale, sigma)


def fit_cressie_variogram(lags: np.ndarray, gamma: np.ndarray,
                          counts: np.ndarray) -> VariogramFit:
    """Cressie's (1985) weighted least-squares fit of the Gaussian variogram model.

    Minimizes ``sum_h n(h) * (gamma_hat(h) / gamma(h) - 1)^2`` over ``c1, c2, sigma``
    (``sigma`` in ``[MIN_SIGMA, 4 * max(lags)]``) with ``scipy.optimize.least_squares``,
    started from the ordinary least-squares fit (:func:`fit_gaussian_variogram`) and from the
    ordinary fits at 3 other ``sigma`` (log-spaced); the lowest criterion wins. Lags where the
    model is not positive count as a large misfit. A flat empirical variogram gives the same
    fallback as :func:`fit_gaussian_variogram`.

    Args:
        lags: (L,) positive lags, L >= 3.
        gamma: (L,) empirical variogram values.
        counts: (L,) positive pair counts ``n(h)`` (the weights).

    Returns:
        A :class:`VariogramFit`.

    Raises:
        InputError: as :func:`fit_gaussian_variogram`, or counts not (L,) positive numbers.
    """
    from scipy.optimize import least_squares

    h, g = _check_curve(lags, gamma)
    n = np.asarray(counts, dtype=np.float64) if isinstance(counts, np.ndarray) else None
    if n is None or n.shape != h.shape or not np.isfinite(n).all() or (n <= 0).any():
        raise InputError(f"counts must be a numpy array of {h.size} positive numbers")
    ordinary = fit_gaussian_variogram(h, g)
    magnitude = float(np.max(np.abs(g)))
    if ordinary.c1 == 0.0 or magnitude <= 0.0:
        return ordinary
    gs, weights = g / magnitude, np.sqrt(n / n.sum())
    upper = 4.0 * float(h.max())
    floor = 1e-9  # a non-positive model value is a misfit, not a division by zero

    def residuals(theta: np.ndarray) -> np.ndarray:
        model = _model(h, theta[0], theta[1], math.exp(theta[2]))
        return weights * (gs / np.maximum(model, floor) - 1.0)

    starts = [(ordinary.c1 / magnitude, ordinary.c2 / magnitude, ordinary.sigma)]
    for sigma in np.exp(np.linspace(math.log(MIN_SIGMA * 10), math.log(upper), 3)):
        c1, c2 = _coefficients(h, gs, float(sigma))
        starts.append((c1, c2, float(sigma)))
    best, best_cost = None, math.inf
    bounds = ([-np.inf, -np.inf, math.log(MIN_SIGMA)], [np.inf, np.inf, math.log(upper)])
    for c1, c2, sigma in starts:
        start = np.array([c1, c2, math.log(min(max(sigma, MIN_SIGMA), upper))])
        fit = least_squares(residuals, start, bounds=bounds, method="trf")
        cost = float(np.sum(residuals(fit.x) ** 2))
        if cost < best_cost:
            best, best_cost = fit.x, cost
    return VariogramFit(float(best[0]) * magnitude, float(best[1]) * magnitude,
                        float(math.exp(best[2])))


def variogram_radius(
    guide: np.ndarray, min_radius: int = 1, max_radius: int | None = None, scale: float = 1.0,
    fit: str = "ols", sigma_as: str = "radius",
) -> int:
    """Guided filter radius for a guide from the ``sigma`` of its Gaussian variogram fit.

    Computes :func:`empirical_variogram_counts` (default ``max_lag``, at least 3 lags where
    the image allows), fits it (``fit="ols"``: :func:`fit_gaussian_variogram`;
    ``fit="cressie"``: :func:`fit_cressie_variogram`) and takes ``s = scale * sigma``: the
    radius is ``s`` rounded half up (``sigma_as="radius"``), or the radius whose window side
    ``2 r + 1`` is ``s``, ``(s - 1) / 2`` rounded half up (``sigma_as="window"``, the paper's
    "size of the filter"); then clipped to ``[min_radius, max_radius]``. A constant guide
    gives ``sigma = 1``.

    Args:
        guide: (H, W) or (H, W, C) real array (not modified).
        min_radius: Smallest radius returned, >= 1.
        max_radius: Largest radius returned, >= ``min_radius``; ``None`` for
            ``max(min_radius, min(H, W) // 2)``.
        scale: Factor on ``sigma`` before rounding, > 0 (1 in the rCAM paper).
        fit: one of :data:`FITS`.
        sigma_as: one of :data:`SIGMA_AS`.

    Returns:
        The radius as a Python int.

    Raises:
        InputError: As :func:`empirical_variogram`; a guide with fewer than 4 pixels along
            its longer side; bad ``min_radius`` / ``max_radius`` / ``scale`` / ``fit`` /
            ``sigma_as``.
    """
    if fit not in FITS:
        raise InputError(f"fit={fit!r}: use one of {', '.join(FITS)}")
    if sigma_as not in SIGMA_AS:
        raise InputError(f"sigma_as={sigma_as!r}: use one of {', '.join(SIGMA_AS)}")
    values = _check_image(guide)
    height, width = values.shape[:2]
    min_radius = check_integer(min_radius, "min_radius", 1)
    if max_radius is None:
        max_radius = max(int(min_radius), min(height, width) // 2)
    if isinstance(max_radius, bool) or not isinstance(max_radius, (int, np.integer)) \
            or max_radius < min_radius:
        raise InputError(
            f"max_radius must be an integer >= min_radius ({min_radius}), got {max_radius!r}"
        )
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) \
            or not 0 < float(scale) < math.inf:
        raise InputError(f"scale must be a finite number > 0, got {scale!r}")
    longest = max(height, width)
    if longest - 1 < _MIN_POINTS:
        raise InputError(
            f"guide needs at least {_MIN_POINTS + 1} pixels along H or W, got {guide.shape}"
        )
    max_lag = min(max(_default_max_lag(height, width), _MIN_POINTS), longest - 1)
    lags, gamma, counts = empirical_variogram_counts(values, max_lag)
    if fit == "cressie":
        sigma = fit_cressie_variogram(lags, gamma, counts).sigma
    else:
        sigma = fit_gaussian_variogram(lags, gamma).sigma
    size = float(scale) * sigma
    if sigma_as == "window":
        size = (size - 1.0) / 2.0
    radius = int(math.floor(size + 0.5))
    return int(min(max(radius, int(min_radius)), int(max_radius)))
