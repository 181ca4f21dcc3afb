"""Guided filtering (He et al., PAMI 2013) and guided x2 upsampling of a map.

:func:`guided_filter` is OpenCV's implementation (``cv2.ximgproc.guidedFilter`` from
opencv-contrib): box means over ``(2 * radius + 1)``-square windows, normalized, with
``BORDER_REFLECT`` padding (``cba|abcd|dcb``); ``eps`` is added as is to the guide's
(co)variance, so it is in squared guide units. :func:`guided_upsample_x2` is the rCAM step
``G^f(U^2(CAM), S)``: bilinear x2, then a guided filter with the shape map ``S`` as guide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import cv2
import numpy as np

from wsolkit.checks import check_integer
from wsolkit.errors import InputError
from wsolkit.refine.variogram import variogram_radius

MAX_GUIDE_CHANNELS = 3
"""OpenCV's guided filter uses at most three guide channels."""

_CV_DET_EPS = 1e-2
"""For a 3-channel guide and ``eps < 1e-2`` OpenCV replaces a regularized covariance
determinant below 1e-6 by 1 (a wrong inverse); see :func:`_filter`."""


def _check_float32(array: Any, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.float32:
        raise InputError(f"{name} must have dtype float32, got {array.dtype}")
    if array.size == 0:
        raise InputError(f"{name} must not be empty, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{name} contains NaN or inf")
    return array


def _check_source(source: Any, name: str) -> np.ndarray:
    array = _check_float32(source, name)
    if array.ndim != 2:
        raise InputError(f"{name} must be 2-D (H, W), got shape {array.shape}")
    return array


def _check_guide(guide: Any) -> np.ndarray:
    array = _check_float32(guide, "guide")
    if array.ndim not in (2, 3) or (
        array.ndim == 3 and not 1 <= array.shape[2] <= MAX_GUIDE_CHANNELS
    ):
        raise InputError(f"guide must be (H, W) or (H, W, C) with C <= 3, got shape {array.shape}")
    return array


def _check_radius_eps(radius: Any, eps: Any) -> tuple[int, float]:
    radius = check_integer(radius, "radius", 1)
    if (isinstance(eps, bool) or not isinstance(eps, Real) or not math.isfinite(float(eps))
            or float(eps) <= 0):
        raise InputError(f"eps must be a finite number > 0, got {eps!r}")
    return radius, float(eps)


def _filter(source: np.ndarray, guide: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Run OpenCV's filter; dodge its 3-channel determinant clamp by an exact rescaling.

    The guided filter is invariant to ``guide -> k * guide, eps -> k^2 * eps`` (``a`` scales
    by ``1 / k``, ``b`` and the output are unchanged). With a 3-channel guide and
    ``eps < 1e-2`` OpenCV sets determinants below 1e-6 to 1, which corrupts low-contrast
    windows, so there the guide is scaled by ``k = sqrt(1e-2 / eps)`` and eps becomes 1e-2.
    """
    if guide.ndim == 3 and guide.shape[2] == 3 and eps < _CV_DET_EPS:
        guide = guide * np.float32(math.sqrt(_CV_DET_EPS / eps))
        eps = _CV_DET_EPS
    out = cv2.ximgproc.guidedFilter(
        np.ascontiguousarray(guide), np.ascontiguousarray(source), radius, eps
    )
    return np.asarray(out, dtype=np.float32).reshape(source.shape)


def guided_filter(source: np.ndarray, guide: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving smoothing of ``source`` steered by ``guide`` (OpenCV's guided filter).

    Inside every window the output is a linear function of the guide,
    ``q = a * I + b`` (``a`` a row vector for a multi-channel guide), with ``a, b`` fitted to
    ``source`` by ridge regression (``eps``) and averaged over the windows covering a pixel.

    Args:
        source: (H, W) float32 map to filter (not modified).
        guide: (H, W) or (H, W, C) float32 guide with C <= 3 (not modified).
        radius: Window radius; windows are ``(2 * radius + 1)`` pixels square, >= 1.
        eps: Regularization > 0, in squared guide units (larger means smoother, less
            edge-preserving). For a 3-channel guide with ``eps < 1e-2`` the guide is
            rescaled internally (an exact equivalence) to avoid an OpenCV shortcut that
            mis-inverts low-contrast windows.

    Returns:
        (H, W) float32 filtered map (a new array; values may leave the source's range).

    Raises:
        InputError: Not numpy, not float32, wrong rank or channel count, empty, NaN/inf,
            H/W of source and guide differ, radius < 1 or eps <= 0.
    """
    source = _check_source(source, "source")
    guide = _check_guide(guide)
    radius, eps = _check_radius_eps(radius, eps)
    if guide.shape[:2] != source.shape:
        raise InputError(
            f"guide shape {guide.shape} does not match source shape {source.shape} in (H, W)"
        )
    return _filter(source, guide, radius, eps)


def guided_upsample_x2(
    cam: np.ndarray, guide: np.ndarray, radius: int, eps: float
) -> np.ndarray:
    """Double a map's resolution: bilinear x2, then :func:`guided_filter` with ``guide``.

    The rCAM upsampling step ``G^f(U^2(CAM), S)``; the bilinear step is ``cv2.resize`` with
    ``INTER_LINEAR`` (pixel-centre sampling) to exactly ``(2h, 2w)``.

    Args:
        cam: (h, w) float32 map (not modified).
        guide: (2h, 2w) or (2h, 2w, C) float32 guide with C <= 3 (not modified).
        radius: Guided filter window radius, >= 1 (see :func:`guided_filter`).
        eps: Guided filter regularization > 0.

    Returns:
        (2h, 2w) float32 map (not clipped).

    Raises:
        InputError: As :func:`guided_filter`, or the guide is not twice the map's size.
    """
    cam = _check_source(cam, "cam")
    guide = _check_guide(guide)
    radius, eps = _check_radius_eps(radius, eps)
    height, width = cam.shape
    if guide.shape[:2] != (2 * height, 2 * width):
        raise InputError(
            f"guide must be twice the cam's size, (H, W) = {(2 * height, 2 * width)}, "
            f"got shape {guide.shape}"
        )
    upsampled = cv2.resize(
        np.ascontiguousarray(cam), (2 * width, 2 * height), interpolation=cv2.INTER_LINEAR
    )
    return _filter(upsampled, guide, radius, eps)


def chain_radii(guides: Sequence[np.ndarray], min_radius: int = 1,
                max_radius: int | None = None, scale: float = 1.0) -> list[int]:
    """Guided filter radius of each step: ``variogram_radius`` of that step's guide.

    Args:
        guides: (k, H_i, W_i) shape maps (or (H_i, W_i) single maps), coarse to fine.
        min_radius: smallest radius.
        max_radius: largest radius (None: half the guide's shorter side).
        scale: factor on the fitted ``sigma`` before rounding.
    """
    return [variogram_radius(_guide_image(guide), min_radius, max_radius, scale)
            for guide in guides]


def upsample_chain(
    cam: np.ndarray,
    guides: Sequence[np.ndarray],
    eps: float,
    radii: Sequence[int] | None = None,
    min_radius: int = 1,
    max_radius: int | None = None,
) -> np.ndarray:
    """Upsample a map by successive guided x2 steps ``G^f(U^2(M), S_i)`` (eqs. 2-4).

    Each step is :func:`wsolkit.refine.guided_filter.guided_upsample_x2` (bilinear x2, then
    OpenCV's guided filter) with guide ``S_i``. A guide that is not exactly twice the map's
    size (odd input sizes give e.g. 11 -> 21) gets a bilinear resize to the guide's size
    instead of the x2, then the same guided filter.

    Args:
        cam: (h, w) float map (not modified).
        guides: (k, H_i, W_i) shape maps with k <= 3 (or (H_i, W_i) maps), coarse to fine,
            each larger than the map before it.
        eps: guided filter regularization, in squared guide units.
        radii: radius of each step; None computes them with :func:`chain_radii`.
        min_radius: smallest radius when computing them.
        max_radius: largest radius when computing them.

    Returns:
        (H_last, W_last) float32 map (at the input's size if ``guides`` is empty).

    Raises:
        InputError: a guide not larger than the map it should upsample, or bad radii.
    """
    current = np.ascontiguousarray(cam, dtype=np.float32)
    if current.ndim != 2:
        raise InputError(f"cam must be (h, w), got shape {current.shape}")
    images = [_guide_image(guide) for guide in guides]
    if radii is None:
        radii = chain_radii(guides, min_radius, max_radius)
    if len(radii) != len(images):
        raise InputError(f"{len(radii)} radii given for {len(images)} guides")
    for guide, radius in zip(images, radii, strict=True):
        height, width = guide.shape[:2]
        if (height, width) == (2 * current.shape[0], 2 * current.shape[1]):
            current = guided_upsample_x2(current, guide, int(radius), float(eps))
            continue
        if height <= current.shape[0] or width <= current.shape[1]:
            raise InputError(
                f"guide of size {height}x{width} is not larger than the map it should "
                f"upsample ({current.shape[0]}x{current.shape[1]}); order guides coarse to fine"
            )
        resized = cv2.resize(current, (width, height), interpolation=cv2.INTER_LINEAR)
        current = guided_filter(resized, guide, int(radius), float(eps))
    return current


def _guide_image(guide: np.ndarray) -> np.ndarray:
    """(k, H, W) or (H, W) shape map -> OpenCV guide (H, W[, k]) float32."""
    array = np.asarray(guide, dtype=np.float32)
    if array.ndim == 2:
        return np.ascontiguousarray(array)
    if array.ndim != 3 or not 1 <= array.shape[0] <= 3:
        raise InputError(f"guide must be (k, H, W) with k <= 3 or (H, W), got {array.shape}")
    return np.ascontiguousarray(array.transpose(1, 2, 0))
