"""Guided filter: OpenCV's result against a direct box-filter implementation of He et al."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from wsolkit.errors import InputError
from wsolkit.refine import guided_filter, guided_upsample_x2


def box_mean(x: np.ndarray, r: int, pad_mode: str = "symmetric") -> np.ndarray:
    """Mean over (2r+1)^2 windows by summed-area table, borders padded with ``pad_mode``.

    numpy's ``symmetric`` is OpenCV's BORDER_REFLECT (``cba|abc``), ``reflect`` is
    BORDER_REFLECT_101 (``cb|abc``).
    """
    k = 2 * r + 1
    pad = [(r, r), (r, r)] + [(0, 0)] * (x.ndim - 2)
    padded = np.pad(x.astype(np.float64), pad, mode=pad_mode)
    sat = np.pad(padded, [(1, 0), (1, 0)] + [(0, 0)] * (x.ndim - 2)).cumsum(0).cumsum(1)
    return (sat[k:, k:] - sat[:-k, k:] - sat[k:, :-k] + sat[:-k, :-k]) / (k * k)


def reference_gray(p, guide, r, eps, pad_mode="symmetric"):
    """He et al. 2013, Algorithm 1 (gray guide)."""
    mean = lambda x: box_mean(x, r, pad_mode)  # noqa: E731
    guide = guide.astype(np.float64)
    p = p.astype(np.float64)
    mean_i, mean_p = mean(guide), mean(p)
    corr_i, corr_ip = mean(guide * guide), mean(guide * p)
    var_i, cov_ip = corr_i - mean_i * mean_i, corr_ip - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return mean(a) * guide + mean(b)


def reference_color(p, guide, r, eps):
    """He et al. 2013, multi-channel guide: per-window CxC ridge regression."""
    mean = lambda x: box_mean(x, r)  # noqa: E731
    guide = guide.astype(np.float64)
    p = p.astype(np.float64)
    mean_i, mean_p = mean(guide), mean(p)
    outer = guide[..., :, None] * guide[..., None, :]
    cov = mean(outer) - mean_i[..., :, None] * mean_i[..., None, :]
    cov_ip = mean(guide * p[..., None]) - mean_i * mean_p[..., None]
    a = np.linalg.solve(cov + eps * np.eye(guide.shape[-1]), cov_ip[..., None])[..., 0]
    b = mean_p - np.sum(a * mean_i, axis=-1)
    return np.sum(mean(a) * guide, axis=-1) + mean(b)


def rel_err(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("r,eps", [(1, 1e-2), (2, 1e-3), (4, 1e-1)])
def test_matches_reference_gray(r, eps):
    rng = np.random.default_rng(r)
    p = rng.random((20, 23), dtype=np.float32)
    guide = rng.random((20, 23), dtype=np.float32)
    out = guided_filter(p, guide, r, eps)
    assert out.shape == p.shape and out.dtype == np.float32
    assert rel_err(out, reference_gray(p, guide, r, eps)) < 1e-4
    # The border mode matters: REFLECT_101 padding gives a visibly different result.
    assert rel_err(out, reference_gray(p, guide, r, eps, "reflect")) > 1e-3


def test_matches_reference_single_channel_3d_guide():
    rng = np.random.default_rng(7)
    p = rng.random((16, 18), dtype=np.float32)
    guide = rng.random((16, 18, 1), dtype=np.float32)
    out = guided_filter(p, guide, 2, 1e-2)
    assert rel_err(out, reference_gray(p, guide[..., 0], 2, 1e-2)) < 1e-4


@pytest.mark.parametrize(
    "channels,contrast,eps",
    [(3, 1.0, 1e-2), (3, 1.0, 1e-4), (2, 1.0, 1e-3), (2, 0.05, 1e-3),
     # Low contrast and eps < 1e-2: OpenCV alone replaces det(cov + eps) < 1e-6 by 1 and is
     # ~10% off here; guided_filter rescales guide and eps (an exact equivalence) instead.
     (3, 0.05, 1e-3), (3, 0.01, 1e-5)],
)
def test_matches_reference_color(channels, contrast, eps):
    rng = np.random.default_rng(3)
    p = rng.random((18, 21), dtype=np.float32)
    guide = (contrast * rng.random((18, 21, channels))).astype(np.float32)
    out = guided_filter(p, guide, 2, eps)
    assert rel_err(out, reference_color(p, guide, 2, eps)) < 1e-4


def test_preserves_guide_edge_better_than_box_blur():
    rng = np.random.default_rng(0)
    h, w, r = 24, 32, 4
    guide = np.zeros((h, w), np.float32)
    guide[:, w // 2:] = 1.0
    source = (guide + rng.normal(0, 0.05, (h, w))).astype(np.float32)
    out = guided_filter(source, guide, r, 1e-3)
    blur = cv2.blur(source, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)
    jump = lambda x: float(np.mean(x[:, w // 2] - x[:, w // 2 - 1]))  # noqa: E731
    assert jump(out) > 0.9
    assert jump(blur) < 0.25
    # ...and it still smooths the noise inside the flat halves.
    assert out[:, : w // 2 - r - 1].std() < 0.5 * source[:, : w // 2 - r - 1].std()


def test_upsample_x2_is_bilinear_then_guided_filter():
    rng = np.random.default_rng(1)
    cam = rng.random((7, 9), dtype=np.float32)
    guide = rng.random((14, 18, 3), dtype=np.float32)
    out = guided_upsample_x2(cam, guide, 2, 1e-2)
    assert out.shape == (14, 18) and out.dtype == np.float32
    up = cv2.resize(cam, (18, 14), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out, guided_filter(up, guide, 2, 1e-2))
    assert rel_err(out, reference_color(up, guide, 2, 1e-2)) < 1e-4


def test_upsample_x2_gray_guide_on_constant_map():
    cam = np.full((5, 6), 0.25, np.float32)
    guide = np.random.default_rng(2).random((10, 12), dtype=np.float32)
    np.testing.assert_allclose(guided_upsample_x2(cam, guide, 1, 1e-2), 0.25, atol=1e-5)


def test_inputs_not_modified():
    rng = np.random.default_rng(4)
    p = rng.random((10, 12), dtype=np.float32)
    guide = rng.random((10, 12, 3), dtype=np.float32)
    cam = rng.random((5, 6), dtype=np.float32)
    copies = [p.copy(), guide.copy(), cam.copy()]
    guided_filter(p, guide, 2, 1e-2)
    guided_upsample_x2(cam, guide, 2, 1e-2)
    for before, after in zip(copies, [p, guide, cam], strict=True):
        np.testing.assert_array_equal(before, after)


def test_accepts_non_contiguous_views():
    rng = np.random.default_rng(5)
    p = rng.random((12, 20), dtype=np.float32)[:, ::2]
    guide = rng.random((12, 10, 4), dtype=np.float32)[..., :3]
    out = guided_filter(p, guide, 1, 1e-2)
    assert rel_err(out, reference_color(p, guide, 1, 1e-2)) < 1e-4


F = np.zeros((8, 8), np.float32)


@pytest.mark.parametrize(
    "args,match",
    [
        ((F.astype(np.float64), F, 1, 0.1), "source must have dtype float32"),
        ((F, F.astype(np.uint8), 1, 0.1), "guide must have dtype float32"),
        ((F.tolist(), F, 1, 0.1), "source must be a numpy array"),
        ((F[None], F, 1, 0.1), r"source must be 2-D"),
        ((F, np.zeros((8, 8, 4), np.float32), 1, 0.1), r"guide must be \(H, W\) or"),
        ((F, np.zeros((8, 7), np.float32), 1, 0.1), "does not match source shape"),
        ((F, F, 0, 0.1), "radius must be an integer >= 1"),
        ((F, F, 1.5, 0.1), "radius must be an integer >= 1"),
        ((F, F, True, 0.1), "radius must be an integer >= 1"),
        ((F, F, 1, 0.0), "eps must be a finite number > 0"),
        ((F, F, 1, float("nan")), "eps must be a finite number > 0"),
        ((np.full((8, 8), np.nan, np.float32), F, 1, 0.1), "source contains NaN or inf"),
        ((np.zeros((0, 8), np.float32), np.zeros((0, 8), np.float32), 1, 0.1), "empty"),
    ],
)
def test_guided_filter_errors(args, match):
    with pytest.raises(InputError, match=match):
        guided_filter(*args)


@pytest.mark.parametrize(
    "cam,guide,match",
    [
        (np.zeros((4, 5), np.float32), np.zeros((8, 9), np.float32), "twice the cam's size"),
        (np.zeros((4, 5), np.float32), np.zeros((4, 5), np.float32), "twice the cam's size"),
        (np.zeros((4, 5), np.float64), np.zeros((8, 10), np.float32), "cam must have dtype"),
        (np.zeros((4, 5, 1), np.float32), np.zeros((8, 10), np.float32), "cam must be 2-D"),
    ],
)
def test_guided_upsample_errors(cam, guide, match):
    with pytest.raises(InputError, match=match):
        guided_upsample_x2(cam, guide, 1, 0.1)


def test_error_messages_are_one_line():
    with pytest.raises(InputError) as info:
        guided_filter(F, np.zeros((8, 8, 5), np.float32), 1, 0.1)
    assert "\n" not in str(info.value)
