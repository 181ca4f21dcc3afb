"""F-CAM loss terms against hand-computed and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsolkit.errors import InputError
from wsolkit.train.fcam_losses import (
    IGNORE,
    DenseCRFLoss,
    dense_crf_loss,
    elb,
    partial_cross_entropy,
    pseudo_pixels,
    sampling_regions,
    size_loss,
)


def brute_force_crf(images: torch.Tensor, maps: torch.Tensor, sigma_rgb: float,
                    sigma_xy: float) -> torch.Tensor:
    """-sum_n sum_k sum_{i,j} W_ij S_ki S_kj / N with an explicit loop over pixel pairs."""
    n, k, h, w = maps.shape
    total = maps.new_zeros(())
    pixels = [(y, x) for y in range(h) for x in range(w)]
    for b in range(n):
        for (yi, xi) in pixels:
            for (yj, xj) in pixels:
                color = float(((images[b, :, yi, xi] - images[b, :, yj, xj]) ** 2).sum())
                kernel = math.exp(-((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * sigma_xy**2)
                                  - color / (2 * sigma_rgb**2))
                total = total - kernel * (maps[b, :, yi, xi] * maps[b, :, yj, xj]).sum()
    return total / n


def test_dense_crf_value_and_gradient_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 4, 5, generator=generator, dtype=torch.float64) * 255
    logits = torch.randn(2, 2, 4, 5, generator=generator, dtype=torch.float64)
    fast_in = logits.clone().requires_grad_(True)
    slow_in = logits.clone().requires_grad_(True)
    fast = dense_crf_loss(images, fast_in.softmax(1), sigma_rgb=40.0, sigma_xy=2.0)
    slow = brute_force_crf(images, slow_in.softmax(1), sigma_rgb=40.0, sigma_xy=2.0)
    fast.backward()
    slow.backward()
    assert float(fast.detach()) == pytest.approx(float(slow.detach()), rel=1e-10)
    assert float(slow.detach()) < 0
    torch.testing.assert_close(fast_in.grad, slow_in.grad, rtol=1e-9, atol=1e-12)
    assert fast_in.grad.abs().max() > 1e-3  # the gradient is not trivially zero


def test_dense_crf_prefers_maps_that_follow_color_edges():
    # Left half black, right half white: a map split along the edge beats one split across it.
    images = torch.zeros(1, 3, 6, 6, dtype=torch.float64)
    images[..., 3:] = 255
    along = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    along[:, 0, :, :3] = 1
    along[:, 1, :, 3:] = 1
    across = torch.zeros_like(along)
    across[:, 0, :3] = 1
    across[:, 1, 3:] = 1
    assert float(dense_crf_loss(images, along, 15, 100)) < float(dense_crf_loss(images, across,
                                                                                15, 100))


def test_reduced_resolution_crf_estimates_the_full_resolution_value():
    # A smooth image and map: the value at half size, scaled back, is close to the full one.
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    images = torch.stack([ys * 200, xs * 200, ys * 0 + 50])[None].double()
    fg = torch.sigmoid((xs - 0.5) * 4).double()
    maps = torch.stack([1 - fg, fg])[None]
    full = 2e-9 * dense_crf_loss(images, maps, 15.0, 10.0)
    reduced = DenseCRFLoss(2e-9, 15.0, 10.0, size=8)(images, maps)
    assert float(reduced) == pytest.approx(float(full), rel=0.1)


def test_elb_matches_the_formula_on_both_branches():
    t = 2.0
    z = torch.tensor([-10.0, -0.25, -0.1, 0.5], dtype=torch.float64)
    # -1/t^2 = -0.25: the first two take the log branch, the last two the linear one.
    expected = [math.log(10.0) * -1 / t, -math.log(0.25) / t,
                t * -0.1 - math.log(0.25) / t + 1 / t, t * 0.5 - math.log(0.25) / t + 1 / t]
    assert elb(z, t).tolist() == pytest.approx(expected, rel=1e-12)
    # Continuous with a continuous derivative at -1/t^2 (the extension's design).
    eps = 1e-6
    left, right = elb(torch.tensor([-0.25 - eps], dtype=torch.float64), t), elb(
        torch.tensor([-0.25 + eps], dtype=torch.float64), t)
    assert float(right - left) / (2 * eps) == pytest.approx(t, rel=1e-4)


def test_size_loss_is_half_the_batch_mean_of_the_summed_region_barriers():
    maps = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    maps[0, 0] = 0.25
    maps[0, 1] = 0.75
    maps[1, 0] = 1.0  # foreground empty: the linear branch at z = 0
    t = 1.0
    per_image = [-math.log(1.0) - math.log(3.0), -math.log(4.0) + (0 - math.log(1) + 1)]
    assert float(size_loss(maps, t)) == pytest.approx(sum(per_image) / 2 / 2, rel=1e-12)


def test_partial_cross_entropy_uses_only_labeled_pixels():
    logits = torch.tensor([[[[0.0, 2.0]], [[1.0, -1.0]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    labels = torch.tensor([[[1, IGNORE]]])
    expected = -math.log(math.exp(1.0) / (math.exp(0.0) + math.exp(1.0)))
    assert float(partial_cross_entropy(logits, labels)) == pytest.approx(expected)
    assert float(partial_cross_entropy(logits, torch.full((1, 1, 2), IGNORE))) == 0.0


def test_sampling_regions_follow_otsu_erosion_and_the_lowest_fraction():
    cam = np.zeros((40, 40))
    cam[5:30, 5:30] = 1.0  # a 25x25 bright square
    cam[0, 0] = -1.0  # the single lowest pixel
    fg, bg = sampling_regions(cam, bg_fraction=1 / 1600)
    expected = np.zeros((40, 40), bool)
    expected[10:25, 10:25] = True  # eroded by 5 pixels on each side (11x11 kernel)
    np.testing.assert_array_equal(fg, expected)
    assert bg.sum() == 1 and bg[0, 0]


def test_sampling_regions_fall_back_to_the_uneroded_foreground():
    cam = np.zeros((30, 30))
    cam[10:14, 10:14] = 1.0  # smaller than the erosion kernel
    fg, _ = sampling_regions(cam, 0.5)
    assert fg.sum() == 16 and fg[10:14, 10:14].all()


def test_pseudo_pixels_are_k_squares_in_their_regions_and_overlaps_are_ignored():
    rng = np.random.default_rng(0)
    cam = np.full((40, 40), 0.5)
    cam[3:24, 3:24] = 1.0  # foreground; eroded: rows/columns 8..18
    cam[28:35, 28:35] = 0.0  # the lowest 49 pixels, away from the border
    for _ in range(20):
        labels = pseudo_pixels(cam, n_fg=1, n_bg=1, k=3, bg_fraction=49 / 1600, rng=rng)
        fg = np.argwhere(labels == 1)
        bg = np.argwhere(labels == 0)
        assert len(fg) == 9 and len(bg) == 9  # far apart regions: two full 3x3 squares
        assert np.ptp(fg, axis=0).tolist() == [2, 2] and np.ptp(bg, axis=0).tolist() == [2, 2]
        y, x = fg.mean(axis=0).astype(int)
        assert 8 <= y <= 18 and 8 <= x <= 18  # centred inside the eroded foreground
        y, x = bg.mean(axis=0).astype(int)
        assert 28 <= y < 35 and 28 <= x < 35  # centred inside the lowest pixels
        assert (labels == IGNORE).sum() == 1600 - 18
    # Both regions cover everything: squares of both kinds overlap and those pixels are ignored.
    flat = np.zeros((5, 5))
    flat[2, 2] = 1.0
    labels = pseudo_pixels(flat, n_fg=1, n_bg=25, k=5, bg_fraction=0.99, rng=rng)
    assert (labels == 1).sum() == 0 and (labels == IGNORE).sum() == 25


def test_bad_sampling_settings_are_one_line_errors():
    with pytest.raises(InputError, match="k must be odd"):
        pseudo_pixels(np.zeros((4, 4)), 1, 1, 2, 0.1, np.random.default_rng(0))
    with pytest.raises(InputError, match="bg_fraction"):
        sampling_regions(np.zeros((4, 4)), 1.5)
