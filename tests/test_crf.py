"""Dense CRF (pydensecrf2, installed by scripts/setup.sh): convergence, edge snapping, errors."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from wsolkit.errors import DependencyError, InputError
from wsolkit.refine import CRFParams, crf_kl_divergences, dense_crf

H, W = 40, 48


def two_halves() -> tuple[np.ndarray, np.ndarray]:
    """Red left half, blue right half; the true foreground is the left half."""
    image = np.zeros((H, W, 3), np.uint8)
    image[:, : W // 2] = (200, 40, 40)
    image[:, W // 2:] = (30, 60, 220)
    truth = np.zeros((H, W), bool)
    truth[:, : W // 2] = True
    return image, truth


def blurry_prior(shift: float = 5.0, noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """Soft step decaying around column ``W/2 + shift`` (off the colour edge), plus noise."""
    x = np.arange(W)
    prior = np.tile(1.0 / (1.0 + np.exp((x - W / 2 - shift) / 4.0)), (H, 1))
    prior += np.random.default_rng(seed).normal(0, noise, (H, W))
    return np.clip(prior, 0.0, 1.0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(
    "params",
    [CRFParams(), CRFParams(gaussian_compat=10, bilateral_compat=20, bilateral_srgb=50)],
)
def test_mean_field_never_increases_kl(params):
    image, _ = two_halves()
    kl = crf_kl_divergences(image, blurry_prior(), params, iterations=10)
    assert len(kl) == 11
    assert kl[-1] < kl[0]
    # pydensecrf keeps Q in float32 and sums |KL| ~ 1e4 over pixels, so once converged the
    # value jitters by float32 rounding (~1e-7 relative): allow 1e-6 of |KL| per step.
    for before, after in zip(kl, kl[1:], strict=False):
        assert after <= before + 1e-6 * abs(before)


def test_snaps_blurry_prior_to_colour_edge():
    image, truth = two_halves()
    prior = blurry_prior()
    out = dense_crf(image, prior)
    before, after = iou(prior >= 0.5, truth), iou(out >= 0.5, truth)
    assert after > before
    assert after > 0.97
    assert out.shape == (H, W) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_uniform_prior_on_uniform_image_stays_half():
    image = np.full((H, W, 3), 128, np.uint8)
    out = dense_crf(image, np.full((H, W), 0.5, np.float32))
    np.testing.assert_allclose(out, 0.5, atol=1e-6)


def test_explicit_parameters_change_result_and_default_equals_none():
    image, _ = two_halves()
    prior = blurry_prior()
    np.testing.assert_array_equal(dense_crf(image, prior), dense_crf(image, prior, CRFParams()))
    weak = dense_crf(image, prior, CRFParams(gaussian_compat=0.0, bilateral_compat=0.0),
                     iterations=1)
    # Without pairwise terms the marginal is the (clipped) prior itself.
    np.testing.assert_allclose(weak, np.clip(prior, 1e-5, 1 - 1e-5), atol=1e-5)


def test_inputs_not_modified():
    image, _ = two_halves()
    prior = blurry_prior().astype(np.float32)
    copies = (image.copy(), prior.copy())
    dense_crf(image, prior)
    crf_kl_divergences(image, prior, CRFParams(), 2)
    np.testing.assert_array_equal(image, copies[0])
    np.testing.assert_array_equal(prior, copies[1])


def test_accepts_non_contiguous_image():
    image, _ = two_halves()
    view = np.repeat(image, 2, axis=1)[:, ::2]  # a non-contiguous view of the same pixels
    assert not view.flags.c_contiguous
    out = dense_crf(view, blurry_prior())
    np.testing.assert_array_equal(out, dense_crf(image, blurry_prior()))


IMG, _ = two_halves()
FG = np.full((H, W), 0.5)


@pytest.mark.parametrize(
    "image,fg,kwargs,match",
    [
        (IMG, FG[:-1], {}, "does not match image shape"),
        (IMG.astype(np.float32), FG, {}, "image must have dtype uint8"),
        (IMG[..., :2], FG, {}, r"image must be \(H, W, 3\)"),
        (IMG, FG + 0.6, {}, r"must lie in \[0, 1\]"),
        (IMG, FG - 0.6, {}, r"must lie in \[0, 1\]"),
        (IMG, FG.astype(np.int64), {}, "floating dtype"),
        (IMG, np.full((H, W), np.nan), {}, "NaN or inf"),
        (IMG, FG[None], {}, "must be 2-D"),
        (IMG.tolist(), FG, {}, "image must be a numpy array"),
        (IMG, FG, {"iterations": 0}, "iterations must be an integer >= 1"),
        (IMG, FG, {"params": {"gaussian_sxy": 3}}, "params must be a CRFParams"),
    ],
)
def test_input_errors(image, fg, kwargs, match):
    with pytest.raises(InputError, match=match):
        dense_crf(image, fg, **kwargs)
    with pytest.raises(InputError, match=match):
        crf_kl_divergences(image, fg, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"gaussian_sxy": 0.0}, "gaussian_sxy must be > 0"),
        ({"bilateral_srgb": -1.0}, "bilateral_srgb must be > 0"),
        ({"bilateral_compat": -1.0}, "bilateral_compat must be >= 0"),
        ({"clip": 0.5}, r"clip must lie in \(0, 0.5\)"),
        ({"gaussian_compat": float("inf")}, "must be a finite number"),
    ],
)
def test_params_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        CRFParams(**kwargs)


def test_missing_package_raises_dependency_error(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DependencyError, match="pip install pydensecrf2"):
        dense_crf(IMG, FG)
