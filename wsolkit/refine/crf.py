"""Fully connected CRF refinement of a foreground probability map (Krähenbühl & Koltun 2011).

Uses the ``pydensecrf2`` package (``pip install pydensecrf2``, the ``crf`` extra of
wsolkit), imported only when a function here is called. The model has two labels
(background, foreground) with unary energy ``-log p``, ``p = [1 - fg, fg]`` clipped to
``[clip, 1]``, and two Potts pairwise terms: a Gaussian (smoothness) kernel over pixel
positions and a bilateral (appearance) kernel over positions and RGB colours. Inference is
the library's parallel mean-field update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from numbers import Real
from typing import Any

import cv2
import numpy as np

from wsolkit.checks import RANGE_TOLERANCE, check_integer, check_unit_range
from wsolkit.errors import DependencyError, InputError


@dataclass(frozen=True)
class CRFParams:
    """Kernel parameters of :func:`dense_crf`.

    Attributes:
        gaussian_sxy: Spatial std (pixels) of the smoothness kernel, > 0.
        gaussian_compat: Potts weight of the smoothness kernel, >= 0.
        bilateral_sxy: Spatial std (pixels) of the appearance kernel, > 0.
        bilateral_srgb: Colour std (0-255 units) of the appearance kernel, > 0.
        bilateral_compat: Potts weight of the appearance kernel, >= 0.
        clip: Probabilities are clipped to ``[clip, 1]`` before ``-log``, in (0, 0.5).
    """

    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 60.0
    bilateral_srgb: float = 10.0
    bilateral_compat: float = 5.0
    clip: float = 1e-5

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, Real) \
                    or not math.isfinite(float(value)):
                raise InputError(f"{field.name} must be a finite number, got {value!r}")
        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            if getattr(self, name) <= 0:
                raise InputError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("gaussian_compat", "bilateral_compat"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.clip < 0.5:
            raise InputError(f"clip must lie in (0, 0.5), got {self.clip!r}")


def _densecrf() -> Any:
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise DependencyError(
            "dense CRF needs the pydensecrf2 package: pip install pydensecrf2 "
            "(or pip install 'wsolkit[crf]')"
        ) from None
    return dcrf


def _check_inputs(image: Any, foreground: Any) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise InputError(f"image must have dtype uint8, got {image.dtype}")
    if not isinstance(foreground, np.ndarray):
        raise InputError(f"foreground must be a numpy array, got {type(foreground).__name__}")
    if foreground.ndim != 2:
        raise InputError(f"foreground must be 2-D (H, W), got shape {foreground.shape}")
    if not np.issubdtype(foreground.dtype, np.floating):
        raise InputError(f"foreground must have a floating dtype, got {foreground.dtype}")
    if foreground.shape != image.shape[:2]:
        raise InputError(
            f"foreground shape {foreground.shape} does not match image shape {image.shape[:2]}"
        )
    if foreground.size == 0:
        raise InputError(f"foreground must not be empty, got shape {foreground.shape}")
    fg = foreground.astype(np.float64)
    if not np.isfinite(fg).all():
        raise InputError("foreground contains NaN or inf")
    check_unit_range(fg, "foreground", RANGE_TOLERANCE)
    return np.ascontiguousarray(image), np.clip(fg, 0.0, 1.0)


def _check_call(image: Any, foreground: Any,
                params: CRFParams | None) -> tuple[np.ndarray, np.ndarray, CRFParams]:
    """The checked image and foreground (:func:`_check_inputs`) and params (default if None)."""
    image, fg = _check_inputs(image, foreground)
    params = CRFParams() if params is None else params
    if not isinstance(params, CRFParams):
        raise InputError(f"params must be a CRFParams, got {type(params).__name__}")
    return image, fg, params


def _build(image: np.ndarray, fg: np.ndarray, params: CRFParams) -> Any:
    """A ``DenseCRF2D`` with the unary and both pairwise terms set."""
    dcrf = _densecrf()
    height, width = fg.shape
    probs = np.stack([1.0 - fg, fg]).reshape(2, -1)
    unary = np.ascontiguousarray(-np.log(np.clip(probs, params.clip, 1.0)), dtype=np.float32)
    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=float(params.gaussian_sxy), compat=float(params.gaussian_compat))
    crf.addPairwiseBilateral(
        sxy=float(params.bilateral_sxy), srgb=float(params.bilateral_srgb), rgbim=image,
        compat=float(params.bilateral_compat),
    )
    return crf


def dense_crf(
    image: np.ndarray,
    foreground: np.ndarray,
    params: CRFParams | None = None,
    iterations: int = 5,
    size: int | None = None,
) -> np.ndarray:
    """Refine a foreground probability map with a fully connected CRF.

    With ``size`` smaller than the image's shorter side, the CRF runs on the image (area
    resize) and the foreground (bilinear) scaled by ``size / min(H, W)``, with the kernels'
    spatial widths (``gaussian_sxy``, ``bilateral_sxy``) scaled alike, and the marginal is
    resized back bilinearly (the CRF's cost grows with the pixel count; rCAM runs it at 112).

    Args:
        image: (H, W, 3) uint8 RGB image (not modified).
        foreground: (H, W) floating foreground probability in [0, 1] (not modified).
        params: Kernel parameters, in pixels of ``image``; ``None`` for ``CRFParams()``
            (Gaussian sxy 3, compat 3; bilateral sxy 60, srgb 10, compat 5; clip 1e-5).
        iterations: Mean-field iterations, >= 1.
        size: shorter side to run the CRF at; None (or not smaller) for the image's own.

    Returns:
        (H, W) float32 foreground marginal in [0, 1].

    Raises:
        InputError: Image not (H, W, 3) uint8, foreground not 2-D floating in [0, 1] or of
            another size, NaN/inf, bad iterations or params.
        DependencyError: pydensecrf2 is not installed.
    """
    image, fg, params = _check_call(image, foreground, params)
    iterations = check_integer(iterations, "iterations", 1)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise InputError(f"size={size!r}: must be None or a positive integer")
        height, width = fg.shape
        factor = size / min(height, width)
        if factor < 1.0:
            small = (max(1, round(width * factor)), max(1, round(height * factor)))
            scaled = replace(params, gaussian_sxy=params.gaussian_sxy * factor,
                             bilateral_sxy=params.bilateral_sxy * factor)
            image_small = cv2.resize(np.ascontiguousarray(image), small,
                                     interpolation=cv2.INTER_AREA)
            prior = np.asarray(foreground, dtype=np.float32)
            fg_small = np.clip(cv2.resize(prior, small, interpolation=cv2.INTER_LINEAR),
                               0.0, 1.0)
            marginal = dense_crf(image_small, fg_small, scaled, iterations)
            return np.clip(cv2.resize(marginal, (width, height), interpolation=cv2.INTER_LINEAR),
                           0.0, 1.0)
    crf = _build(image, fg, params)
    marginals = np.asarray(crf.inference(iterations), dtype=np.float32)
    out = marginals.reshape(2, *fg.shape)[1]
    return np.clip(out, 0.0, 1.0)


def crf_kl_divergences(
    image: np.ndarray,
    foreground: np.ndarray,
    params: CRFParams | None = None,
    iterations: int = 5,
) -> list[float]:
    """KL divergence (up to a constant) of the mean-field distribution after each step.

    Uses pydensecrf's ``startInference`` / ``stepInference`` / ``klDivergence`` on the
    same model as :func:`dense_crf`; useful to check that inference converges.

    Args:
        image: (H, W, 3) uint8 RGB image (not modified).
        foreground: (H, W) floating foreground probability in [0, 1] (not modified).
        params: Kernel parameters; ``None`` for ``CRFParams()``.
        iterations: Mean-field steps, >= 1.

    Returns:
        ``iterations + 1`` floats: the value at the initialization (softmax of the unary)
        followed by the value after each step.

    Raises:
        InputError: As :func:`dense_crf`.
        DependencyError: pydensecrf2 is not installed.
    """
    image, fg, params = _check_call(image, foreground, params)
    iterations = check_integer(iterations, "iterations", 1)
    crf = _build(image, fg, params)
    q, tmp1, tmp2 = crf.startInference()
    values = [float(crf.klDivergence(q))]
    for _ in range(iterations):
        crf.stepInference(q, tmp1, tmp2)
        values.append(float(crf.klDivergence(q)))
    return values
