"""Empirical variogram, Gaussian variogram fit and the guided filter radius derived from it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from wsolkit.errors import InputError
from wsolkit.refine import (
    VariogramFit,
    empirical_variogram,
    empirical_variogram_counts,
    fit_cressie_variogram,
    fit_gaussian_variogram,
    variogram_radius,
)


def gaussian_field(s: float, size: int = 256, seed: int = 0) -> np.ndarray:
    """White noise convolved (periodically) with a normalized Gaussian of std ``s``."""
    noise = np.random.default_rng(seed).standard_normal((size, size))
    return gaussian_filter(noise, s, mode="wrap")


def expected_gaussian_variogram(s: float) -> tuple[float, float]:
    """Analytic (sigma, sill) of the variogram of :func:`gaussian_field`.

    The field's covariance is the kernel's autocorrelation, Gaussian of std ``s * sqrt(2)``:
    ``C(h) = exp(-h^2 / (4 s^2)) / (4 pi s^2)``. Hence
    ``gamma(h) = C(0) - C(h) = -C(0) * exp(-h^2 / (2 (s sqrt 2)^2)) + C(0)``:
    ``sigma = s * sqrt(2)``, ``c2 = -c1 = 1 / (4 pi s^2)``.
    """
    return s * math.sqrt(2.0), 1.0 / (4.0 * math.pi * s * s)


def test_fit_recovers_sigma_of_gaussian_random_field():
    s = 3.0
    field = gaussian_field(s)
    sigma, sill = expected_gaussian_variogram(s)
    lags, gamma = empirical_variogram(field)
    assert lags[-1] == 128
    fit = fit_gaussian_variogram(lags, gamma)
    assert abs(fit.sigma / sigma - 1) < 0.2
    assert abs(fit.c2 / sill - 1) < 0.2
    assert fit.c1 < 0 and abs(fit.c1 + fit.c2) < 0.1 * fit.c2  # nugget ~ 0
    assert variogram_radius(field) == math.floor(fit.sigma + 0.5)


def test_radius_grows_with_field_scale():
    radii = [variogram_radius(gaussian_field(s, size=128, seed=1).astype(np.float32))
             for s in (1.0, 2.0, 4.0)]
    assert radii == sorted(radii) and radii[0] < radii[-1]
    for s, radius in zip((1.0, 2.0, 4.0), radii, strict=True):
        assert abs(radius - s * math.sqrt(2)) <= max(1.0, 0.2 * s * math.sqrt(2))


def test_empirical_variogram_by_hand():
    z = np.array([[0, 1, 3], [2, 2, 0]], dtype=np.float64)
    # h=1: horizontal diffs 1, 2, 0, -2 (squares 9, 4 pairs); vertical 2, 1, -3 (14, 3 pairs)
    # h=2: horizontal diffs 3, -2 (13, 2 pairs); no vertical pairs (H = 2)
    lags, gamma = empirical_variogram(z, max_lag=2)
    np.testing.assert_array_equal(lags, [1.0, 2.0])
    np.testing.assert_allclose(gamma, [23 / 14, 13 / 4], rtol=1e-12)
    lags, gamma = empirical_variogram(z)  # default max_lag = min(2, 3) // 2 = 1
    np.testing.assert_allclose(gamma, [23 / 14], rtol=1e-12)
    assert lags.dtype == gamma.dtype == np.float64


def test_multichannel_averages_channels():
    z = np.random.default_rng(0).random((9, 11))
    _, g1 = empirical_variogram(z)
    _, g3 = empirical_variogram(np.stack([z, 2 * z, z], axis=-1))
    np.testing.assert_allclose(g3, g1 * (1 + 4 + 1) / 3, rtol=1e-12)
    _, g_int = empirical_variogram((z * 10).astype(np.int32))
    assert g_int.shape == g1.shape


def test_fit_recovers_exact_model():
    truth = VariogramFit(c1=-2.0, c2=2.5, sigma=3.5)
    lags = np.arange(1, 21, dtype=np.float64)
    fit = fit_gaussian_variogram(lags, truth(lags))
    np.testing.assert_allclose([fit.c1, fit.c2, fit.sigma], [-2.0, 2.5, 3.5], rtol=1e-6)


def test_constant_image_falls_back_to_sigma_one():
    lags, gamma = empirical_variogram(np.full((16, 16, 3), 0.7, np.float32))
    np.testing.assert_array_equal(gamma, 0.0)
    assert fit_gaussian_variogram(lags, gamma) == VariogramFit(0.0, 0.0, 1.0)
    assert variogram_radius(np.full((16, 16), 5.0)) == 1
    assert variogram_radius(np.full((16, 16), 5.0), min_radius=2) == 2


def test_white_noise_fits_without_error():
    noise = np.random.default_rng(3).standard_normal((64, 64))
    lags, gamma = empirical_variogram(noise)
    fit = fit_gaussian_variogram(lags, gamma)
    assert 0.1 <= fit.sigma <= 4 * lags[-1]
    assert 1 <= variogram_radius(noise) <= 32


def test_radius_clipping_and_default_max():
    field = gaussian_field(4.0, size=64, seed=2)
    assert variogram_radius(field, max_radius=2) == 2
    assert variogram_radius(field, min_radius=20) == 20  # default max follows min_radius
    assert variogram_radius(np.eye(6), max_radius=None) <= 3


def test_inputs_not_modified():
    field = gaussian_field(2.0, size=32).astype(np.float32)
    copy = field.copy()
    lags, gamma = empirical_variogram(field)
    copies = (lags.copy(), gamma.copy())
    fit_gaussian_variogram(lags, gamma)
    variogram_radius(field)
    np.testing.assert_array_equal(field, copy)
    np.testing.assert_array_equal(lags, copies[0])
    np.testing.assert_array_equal(gamma, copies[1])


@pytest.mark.parametrize(
    "image,max_lag,match",
    [
        (np.zeros((8, 8)), 0, r"max_lag must be an integer in \[1, 7\]"),
        (np.zeros((8, 8)), 8, r"max_lag must be an integer in \[1, 7\]"),
        (np.zeros((8, 8)), 2.0, "max_lag must be an integer"),
        (np.zeros((8,)), None, r"image must be \(H, W\) or \(H, W, C\)"),
        (np.zeros((1, 1)), None, "at least 2 pixels"),
        (np.zeros((0, 4)), None, "must not be empty"),
        (np.full((4, 4), np.nan), None, "NaN or inf"),
        (np.zeros((4, 4), complex), None, "real numbers"),
        ([[0.0, 1.0]], None, "numpy array"),
    ],
)
def test_empirical_variogram_errors(image, max_lag, match):
    with pytest.raises(InputError, match=match):
        empirical_variogram(image, max_lag)


@pytest.mark.parametrize(
    "lags,gamma,match",
    [
        (np.arange(1.0, 4.0), np.zeros(4), "equal length"),
        (np.arange(1.0, 3.0), np.zeros(2), "at least 3 lags"),
        (np.arange(0.0, 4.0), np.zeros(4), "lags must be > 0"),
        (np.arange(1.0, 5.0), np.array([0.0, np.inf, 1.0, 1.0]), "finite"),
        ([1.0, 2.0, 3.0], np.zeros(3), "numpy arrays"),
    ],
)
def test_fit_errors(lags, gamma, match):
    with pytest.raises(InputError, match=match):
        fit_gaussian_variogram(lags, gamma)


@pytest.mark.parametrize(
    "guide,kwargs,match",
    [
        (np.zeros((8, 8)), {"min_radius": 0}, "min_radius must be an integer >= 1"),
        (np.zeros((8, 8)), {"min_radius": 3, "max_radius": 2}, "max_radius must be"),
        (np.zeros((3, 3)), {}, "at least 4 pixels"),
    ],
)
def test_radius_errors(guide, kwargs, match):
    with pytest.raises(InputError, match=match):
        variogram_radius(guide, **kwargs)


@pytest.mark.parametrize("seed", range(5))
def test_profile_fit_is_as_good_as_a_three_parameter_least_squares_fit(seed):
    """The grid-then-zoom fit over sigma reaches at least curve_fit's least-squares optimum."""
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(seed)
    lags = np.arange(1, 15, dtype=np.float64)
    truth = VariogramFit(c1=-rng.uniform(0.5, 2.0), c2=rng.uniform(1.0, 3.0),
                         sigma=rng.uniform(1.0, 8.0))
    gamma = truth(lags) + rng.normal(0, 0.02, lags.shape)
    fit = fit_gaussian_variogram(lags, gamma)

    def model(h, c1, c2, sigma):
        return c1 * np.exp(-h * h / (2 * sigma * sigma)) + c2

    params, _ = curve_fit(model, lags, gamma, p0=[truth.c1, truth.c2, truth.sigma],
                          bounds=([-np.inf, -np.inf, 0.1], [np.inf, np.inf, 4 * lags[-1]]))
    ours = float(np.sum((fit(lags) - gamma) ** 2))
    reference = float(np.sum((model(lags, *params) - gamma) ** 2))
    assert ours <= reference * (1 + 1e-9) + 1e-15
    assert fit.sigma == pytest.approx(params[2], rel=1e-3)


def test_radius_scale_multiplies_sigma():
    field = gaussian_field(3.0, size=128, seed=4)
    lags, gamma = empirical_variogram(field, 64)
    sigma = fit_gaussian_variogram(lags, gamma).sigma
    assert variogram_radius(field, max_radius=64, scale=0.5) == math.floor(0.5 * sigma + 0.5)
    assert variogram_radius(field, max_radius=64, scale=2.0) == math.floor(2.0 * sigma + 0.5)
    with pytest.raises(InputError, match="scale"):
        variogram_radius(field, scale=0.0)


def test_pair_counts_by_hand():
    z = np.arange(20, dtype=np.float64).reshape(4, 5)
    lags, gamma, counts = empirical_variogram_counts(z, 3)
    # lag h: 4 rows x (5 - h) horizontal pairs + (4 - h) rows x 5 vertical pairs
    np.testing.assert_array_equal(counts, [4 * 4 + 3 * 5, 4 * 3 + 2 * 5, 4 * 2 + 1 * 5])
    # horizontal differences are h, vertical 5 h: gamma = (n_h h^2 + n_v 25 h^2) / (2 n)
    expected = [(4 * (5 - h) * h * h + (4 - h) * 5 * 25 * h * h)
                / (2 * (4 * (5 - h) + (4 - h) * 5)) for h in (1, 2, 3)]
    np.testing.assert_allclose(gamma, expected)
    np.testing.assert_array_equal(empirical_variogram(z, 3)[1], gamma)


def cressie_criterion(params, lags, gamma, counts):
    c1, c2, sigma = params
    model = c1 * np.exp(-lags ** 2 / (2 * sigma ** 2)) + c2
    if sigma <= 0 or (model <= 0).any():
        return np.inf
    return float(np.sum(counts * (gamma / model - 1.0) ** 2))


@pytest.mark.parametrize("seed", range(4))
def test_cressie_fit_minimizes_cressies_weighted_criterion(seed):
    """Cressie (1985): minimize sum n(h) (gamma_hat / gamma - 1)^2; checked against
    Nelder-Mead from several starts on the criterion written out here."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)
    lags = np.arange(1, 16, dtype=np.float64)
    truth = VariogramFit(c1=-rng.uniform(0.5, 1.5), c2=rng.uniform(1.6, 3.0),
                         sigma=rng.uniform(1.5, 6.0))
    gamma = truth(lags) * np.exp(rng.normal(0, 0.05, lags.shape))
    counts = np.linspace(400, 50, lags.size)  # many pairs at short lags, as in images
    fit = fit_cressie_variogram(lags, gamma, counts)
    ours = cressie_criterion((fit.c1, fit.c2, fit.sigma), lags, gamma, counts)
    best = min((minimize(cressie_criterion, start, args=(lags, gamma, counts),
                         method="Nelder-Mead",
                         options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000})
                for start in ([truth.c1, truth.c2, truth.sigma], [-1.0, 2.0, 3.0],
                              [-0.5, 1.5, 8.0])), key=lambda r: r.fun)
    assert ours <= best.fun * (1 + 1e-6) + 1e-12
    assert fit.sigma == pytest.approx(best.x[2], rel=1e-3)
    # the weights matter: with counts growing instead, the optimum moves
    other = fit_cressie_variogram(lags, gamma, counts[::-1].copy())
    assert cressie_criterion((other.c1, other.c2, other.sigma), lags, gamma, counts) >= ours


def test_cressie_fit_rejects_bad_counts_and_falls_back_on_flat_curves():
    lags = np.arange(1.0, 6.0)
    with pytest.raises(InputError, match="counts"):
        fit_cressie_variogram(lags, lags, np.zeros(5))
    flat = fit_cressie_variogram(lags, np.full(5, 2.0), np.ones(5))
    assert flat == VariogramFit(0.0, 2.0, 1.0)


def test_radius_with_cressie_fit_and_window_reading():
    field = gaussian_field(3.0, size=96, seed=5)
    lags, gamma, counts = empirical_variogram_counts(field, 48)
    sigma = fit_cressie_variogram(lags, gamma, counts).sigma
    assert variogram_radius(field, max_radius=48, fit="cressie") == math.floor(sigma + 0.5)
    # window side 2 r + 1 = sigma: r = (sigma - 1) / 2, rounded half up
    assert variogram_radius(field, max_radius=48, fit="cressie", sigma_as="window") \
        == max(1, math.floor((sigma - 1) / 2 + 0.5))
    with pytest.raises(InputError, match="fit"):
        variogram_radius(field, fit="wls")
    with pytest.raises(InputError, match="sigma_as"):
        variogram_radius(field, sigma_as="diameter")
