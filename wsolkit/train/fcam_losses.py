"""The terms of the F-CAM training loss (Belharbi et al., WACV 2022, eq. 3).

- :func:`pseudo_pixels`: a few pixels pseudo-labeled from the seed CAM (foreground: above
  Otsu's threshold, eroded; background: the lowest ``bg_fraction`` of the CAM), each grown to a
  ``k x k`` square, pixels claimed by both ignored; resampled every step.
- :func:`partial_cross_entropy`: cross-entropy on the labeled pixels only.
- :class:`DenseCRFLoss`: the regularized dense-CRF loss of Tang et al. (ECCV 2018),
  ``-sum_k S_k^T W S_k / N`` with a bilateral Gaussian kernel ``W`` on raw RGB and pixel
  positions. Computed exactly (dense ``W``) at a reduced resolution, the authors' own trick,
  and scaled back to full-resolution units so the paper's weight 2e-9 keeps its meaning.
- :func:`elb` and :func:`size_loss`: the log-barrier extension (Kervadec et al.) of the
  constraints ``sum S_r >= 0`` that push both regions to grow.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from wsolkit.checks import normalize_minmax
from wsolkit.errors import InputError

IGNORE = -100  # torch's default ignore_index
EROSION = 11


def sampling_regions(cam: np.ndarray, bg_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background regions of a seed CAM, as (H, W) bool masks.

    Foreground: pixels of the min-max normalized uint8 CAM above Otsu's threshold, eroded once
    with an 11x11 square (the un-eroded region when erosion empties it). Background: the
    ``ceil(bg_fraction * H * W)`` lowest pixels (ties broken by position).
    """
    if not 0 < bg_fraction < 1:
        raise InputError(f"bg_fraction must be in (0, 1); got {bg_fraction}")
    cam = np.asarray(cam, dtype=np.float64)
    levels = (normalize_minmax(cam) * 255).astype(np.uint8)
    if cam.max() > cam.min():
        threshold, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        foreground = levels > threshold
    else:
        foreground = np.zeros(cam.shape, bool)
    eroded = cv2.erode(foreground.astype(np.uint8), np.ones((EROSION, EROSION), np.uint8),
                       borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    if eroded.any():
        foreground = eroded
    background = np.zeros(cam.size, bool)
    count = max(1, math.ceil(bg_fraction * cam.size))
    background[np.argsort(cam.ravel(), kind="stable")[:count]] = True
    return foreground, background.reshape(cam.shape)


def pseudo_pixels(cam: np.ndarray, n_fg: int, n_bg: int, k: int, bg_fraction: float,
                  rng: np.random.Generator) -> np.ndarray:
    """(H, W) int64 pseudo-labels of one image: 1 foreground, 0 background, ``IGNORE`` else.

    ``n_fg`` pixels are drawn uniformly (without replacement) from the foreground region and
    ``n_bg`` from the background region of :func:`sampling_regions`; each grows to the ``k x k``
    square around it (clipped at the border); pixels in squares of both kinds are ignored.
    """
    if k < 1 or k % 2 == 0:
        raise InputError(f"the pseudo-pixel square size k must be odd and >= 1; got {k}")
    foreground, background = sampling_regions(cam, bg_fraction)
    height, width = foreground.shape
    grown = []
    for region, count in ((foreground, n_fg), (background, n_bg)):
        mask = np.zeros((height, width), bool)
        candidates = np.flatnonzero(region)
        if count > 0 and len(candidates):
            chosen = rng.choice(candidates, size=min(count, len(candidates)), replace=False)
            half = k // 2
            for y, x in zip(*np.unravel_index(chosen, (height, width)), strict=True):
                mask[max(0, y - half):y + half + 1, max(0, x - half):x + half + 1] = True
        grown.append(mask)
    labels = np.full((height, width), IGNORE, np.int64)
    labels[grown[0]] = 1
    labels[grown[1]] = 0
    labels[grown[0] & grown[1]] = IGNORE
    return labels


def partial_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labeled pixels of (N, 2, H, W) logits; 0 when none."""
    if not (labels != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE)


def _bilateral_features(images: torch.Tensor, sigma_rgb: float,
                        sigma_xy: float) -> torch.Tensor:
    """(N, h*w, 5) features whose squared distances are the kernel's exponent (times 2)."""
    n, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=images.dtype),
                            torch.arange(w, dtype=images.dtype), indexing="ij")
    position = torch.stack([ys, xs]).reshape(2, -1) / sigma_xy
    color = images.reshape(n, 3, -1) / sigma_rgb
    return torch.cat([position.expand(n, -1, -1), color], dim=1).transpose(1, 2)


def bilateral_filter(images: torch.Tensor, maps: torch.Tensor, sigma_rgb: float,
                     sigma_xy: float, chunk: int = 1024) -> torch.Tensor:
    """Dense ``W S``: ``(W S)_i = sum_j exp(-|p_i-p_j|^2/2s_xy^2 - |I_i-I_j|^2/2s_rgb^2) S_j``.

    Args:
        images: (N, 3, h, w) RGB in 0..255.
        maps: (N, K, h, w).
        sigma_rgb: kernel width in RGB units.
        sigma_xy: kernel width in pixels.
        chunk: rows of ``W`` built at once (bounds the memory to ``chunk * h * w`` floats).
    """
    n, k, h, w = maps.shape
    features = _bilateral_features(images.to(maps.dtype), sigma_rgb, sigma_xy)
    flat = maps.reshape(n, k, -1)
    out = torch.empty_like(flat)
    for i in range(n):
        for start in range(0, h * w, chunk):
            rows = features[i, start:start + chunk]
            kernel = torch.cdist(rows, features[i]).square_().mul_(-0.5).exp_()
            out[i, :, start:start + chunk] = (kernel @ flat[i].T).T
    return out.reshape(n, k, h, w)


class _DenseCRF(torch.autograd.Function):
    """``-sum_n sum_k S_nk . (W_n S_nk) / N`` with the gradient ``-2 W S / N`` (W symmetric)."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, maps: torch.Tensor, sigma_rgb: float,  # noqa: ANN001
                sigma_xy: float) -> torch.Tensor:
        filtered = bilateral_filter(images, maps.detach(), sigma_rgb, sigma_xy)
        ctx.save_for_backward(filtered)
        n = maps.shape[0]
        return -(maps.detach() * filtered).sum() / n

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        (filtered,) = ctx.saved_tensors
        n = filtered.shape[0]
        return None, grad * (-2.0 / n) * filtered, None, None


def dense_crf_loss(images: torch.Tensor, maps: torch.Tensor, sigma_rgb: float = 15.0,
                   sigma_xy: float = 100.0) -> torch.Tensor:
    """Tang et al.'s dense-CRF loss of soft maps, exact (dense kernel), at the given size.

    Args:
        images: (N, 3, h, w) RGB values in 0..255 (no gradient).
        maps: (N, K, h, w) softmax maps.
        sigma_rgb: kernel width in RGB units.
        sigma_xy: kernel width in pixels of this size.
    """
    if images.shape[0] != maps.shape[0] or images.shape[-2:] != maps.shape[-2:]:
        raise InputError(f"dense CRF: images {tuple(images.shape)} and maps "
                         f"{tuple(maps.shape)} differ in batch or size")
    return _DenseCRF.apply(images.detach(), maps, float(sigma_rgb), float(sigma_xy))


class DenseCRFLoss(torch.nn.Module):
    """``weight`` times the dense-CRF loss, computed at ``size`` and scaled to full resolution.

    Images and maps are area-averaged to ``size x size``; ``sigma_xy`` (given in full-resolution
    pixels) shrinks with them, and the value is multiplied by ``(H*W / size^2)^2`` (each reduced
    pixel stands for ``H*W/size^2`` pixels in both sums of ``S^T W S``), so it estimates the
    full-resolution loss and the paper's weight 2e-9 keeps its meaning.
    """

    def __init__(self, weight: float = 2e-9, sigma_rgb: float = 15.0, sigma_xy: float = 100.0,
                 size: int = 56) -> None:
        super().__init__()
        self.weight, self.sigma_rgb, self.sigma_xy, self.size = weight, sigma_rgb, sigma_xy, size

    def forward(self, images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Loss of (N, K, H, W) softmax maps of (N, 3, H, W) 0..255 RGB images."""
        height, width = maps.shape[-2:]
        size = (min(self.size, height), min(self.size, width))
        small_images = F.adaptive_avg_pool2d(images.float(), size)
        small_maps = F.adaptive_avg_pool2d(maps, size)
        scale = math.sqrt(size[0] * size[1] / (height * width))
        value = dense_crf_loss(small_images, small_maps, self.sigma_rgb, self.sigma_xy * scale)
        return self.weight * value / scale**4


def elb(z: torch.Tensor, t: float) -> torch.Tensor:
    """Log-barrier extension of ``z <= 0``.

    ``-log(-z)/t`` if ``z <= -1/t^2``, else linear ``t z - log(1/t^2)/t + 1/t`` (continuous
    with a continuous derivative at ``-1/t^2``).
    """
    edge = -1.0 / t**2
    safe = torch.where(z <= edge, z, torch.full_like(z, edge))
    return torch.where(z <= edge, -torch.log(-safe) / t,
                       t * z - math.log(1.0 / t**2) / t + 1.0 / t)


def size_loss(maps: torch.Tensor, t: float) -> torch.Tensor:
    """The authors' absolute size constraint on (N, 2, H, W) softmax maps.

    ELB of ``-sum_pixels S_r`` for each region r, summed over regions, batch mean, times 1/2.
    """
    sizes = maps.flatten(2).sum(dim=2)  # (N, 2)
    return elb(-sizes, t).sum(dim=1).mean() / 2
