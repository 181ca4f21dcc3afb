"""rCAM (Ha et al.): high-resolution CAMs from multi-scale CAMs, shape maps and a dense CRF.

Multi-scale CAMs are upsampled by guided filters on PCA shape maps, fused by class
probability and refined by a dense CRF.

The pipeline, per image and target class ``c`` (taken from scale 1 for both scales):

1. **CAMs at two scales** (sec. 3.1): the input at ``scales[0]`` and the original image
   resized to ``scales[1]`` (square, bilinear; ``I_2``; the input tensor upsampled when the
   call gets no ``originals`` or ``scale2_input="tensor"``) give ``CAM_1``, ``CAM_2``
   (``wsolkit.maps.cam.CAM`` on the layer feeding the pooled linear head) and the softmax
   probabilities ``P_1(c)``, ``P_2(c)``.
2. **Shape maps** (sec. 3.2): the first 3 principal components of the feature vectors of the
   *shape layers* (:func:`wsolkit.maps.shape.pca_shape_maps`), per image and scale; with
   ``shape_group="size"`` of every response map of that size (the paper's ``C^l``).
3. **Guided upsampling** (sec. 3.3, :func:`upsample_chain`): x2 steps ``G^f(U^2(M), S)``,
   bilinear x2 then OpenCV's guided filter with the shape map at that resolution as guide.
   The paper's radius rule, the ``sigma`` of a Gaussian fit to the guide's empirical
   variogram (eq. 1, :func:`wsolkit.refine.variogram.variogram_radius`), is
   ``RCAMConfig(radius=None)``; the default is a fixed radius of 2 at every step, which
   scored better on imagenet-dev and davis (on davis the fitted ``sigma`` gives median radii
   1, 4, 3 and 6 on the 14, 28, 28 and 56 pixel guides, often 1 where the fit fails; the large
   ones over-smooth; see docs/rcam.md).
4. **Fusion** (eq. 5, :func:`fuse`): ``rCAM_3 = rCAM_1 * P_1(c) + rCAM_2 * P_2(c)`` after
   bilinear upsampling of both to the input size, then min-max normalization.
5. **Dense CRF** (:func:`refine_crf`): unaries from ``rCAM_3`` and ``1 - rCAM_3`` on the RGB
   image; the foreground marginal is the final ``rCAM``. Defaults (tuned on the dev sets as a
   whole): one mean-field iteration (more make the map nearly binary, which costs PxAP and
   F-measure OIS on davis), colour std 5, run at 112x112 (``crf_size``, kernels scaled; 4x
   cheaper than 224 for the same scores within 0.5 point).

**Presets.** ``PRESETS["paper"]`` (method option ``preset=paper``) runs what the paper
specifies; ``RCAMConfig()`` is our default (see docs/rcam.md for the measured difference).

**Shape layers.** The paper upsamples GoogLeNet's 14x14 CAM with its stride-8 (28x28) layer.
Here the chain has one step per shape layer, coarse to fine, each layer at twice the previous
map's resolution. With ``RCAMConfig.shape_layers=None`` they are chosen by probing one
forward pass (:func:`wsolkit.maps.shape.select_shape_layers`): for 2x and 4x the CAM
resolution, the last module (in completion order, before the CAM layer) among the least
nested ones whose output has that resolution. For the embedded EfficientNet-Lite0 that is
``features.stage5`` (the last 14x14 stage, 112 channels) and ``features.stage3`` (28x28, 40
channels): at 224 the 7x7 CAM goes 7 -> 14 -> 28, at 448 the 14x14 CAM goes 14 -> 28 -> 56.

**Cost**: one forward at scale 1 (the base's, which also captures the shape layers) and one
at scale 2 (4x the pixels at 448; run one image at a time in channels-last layout, the
fastest on CPUs), four PCAs per image (two shape layers at two scales; plus four variogram
fits with ``radius=None``), five guided filters and one CRF per map; batches that repeat an
image (one row per class) share the forwards, PCAs and fits. The two forwards are about 80%
of the time. ``benchmarks/rcam_speed.py`` times it.

**Cross-scale step** (``cross_scale=True``, the paper's eq. 3): the scale-1 chain continues
with the finest scale-2 shape map when it is finer than the chain's end (EfficientNet-Lite0 at
224/448: 28 -> 56 with ``features.stage3`` of the 448 input), so ``rCAM_1`` and ``rCAM_2``
both end at 56x56, as in the paper, before the bilinear step to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import ClassVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from wsolkit.errors import InputError, LayerError, TargetError
from wsolkit.maps.base import ForwardPass, HeatmapMethod
from wsolkit.maps.cam import CAM
from wsolkit.maps.hooks import capture_layer
from wsolkit.maps.shape import (
    ShapeMaps,
    pca_shape_maps_batch,
    select_shape_layers,
    shape_layer_groups,
)
from wsolkit.maps.targets import Targets, TargetSpec
from wsolkit.models.classifier import Classifier
from wsolkit.refine.crf import CRFParams, dense_crf
from wsolkit.refine.guided_filter import guided_filter, guided_upsample_x2
from wsolkit.refine.variogram import FITS, SIGMA_AS, variogram_radius

STAGES = ("rcam1", "rcam2", "rcam3", "rcam")
"""Stage names, in pipeline order; each is a registered method."""

FUSE_INPUTS = ("minmax", "raw")
"""Accepted values of ``RCAMConfig.fuse_inputs``."""

SCALE2_INPUTS = ("image", "tensor")
"""Accepted values of ``RCAMConfig.scale2_input``."""

SHAPE_GROUPS = ("layer", "size")
"""Accepted values of ``RCAMConfig.shape_group``."""


RCAM_CRF = CRFParams(gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=60.0,
                     bilateral_srgb=5.0, bilateral_compat=5.0)
"""rCAM's CRF kernels (at 224; scaled with ``crf_size``): ``CRFParams()`` but a colour std
of 5 instead of 10 (tuned on imagenet-dev and davis as a whole; see docs/rcam.md)."""


@dataclass(frozen=True)
class RCAMConfig:
    """Settings of the rCAM pipeline.

    Attributes:
        scales: (s1, s2) square input sizes of the two scales; the target class and ``P_1``
            come from s1. An input already of size s1 x s1 is used as is.
        shape_layers: layers giving the guides of the x2 steps, coarse to fine (each about
            twice the resolution of the previous map); None picks them automatically
            (:func:`select_shape_layers`).
        components: principal components per shape map (OpenCV guides take 1 to 3).
        eps: guided filter regularization, in squared guide units (shape maps lie in [0, 1]).
        radius: a fixed guided filter radius for every step; None applies the paper's rule,
            the radius from the guide's variogram fit (``radius_scale``, ``min_radius``,
            ``max_radius``).
        radius_scale: the radius of a step is ``round(radius_scale * sigma)`` of the guide's
            variogram fit (the paper: 1).
        min_radius: smallest guided filter radius.
        max_radius: largest guided filter radius (None: half the guide's shorter side).
        cross_scale: continue the scale-1 chain with the finest scale-2 shape map (eq. 3).
        fuse_inputs: ``"minmax"`` scales ``rCAM_1``, ``rCAM_2`` to [0, 1] before eq. 5 (their
            raw CAM units differ between scales), ``"raw"`` fuses them as they are.
        crf: dense CRF kernel parameters, in pixels of the input size.
        crf_iterations: mean-field iterations of the CRF.
        crf_size: run the CRF on the image and ``rCAM_3`` resized to this shorter side
            (kernel widths scaled alike), then resize the marginal back bilinearly; None or
            a size >= the input's runs it at the input size.
        scale2_input: ``"image"``: scale 2 is the original image resized to s2 x s2
            (bilinear, as the paper's ``I_2``) when the call is given the original images
            (``originals=``; the apps pass them), else the input tensor upsampled;
            ``"tensor"``: always the input tensor upsampled (no detail beyond ``I_1``).
        shape_group: ``"layer"``: the PCA of each step runs over its shape layer alone;
            ``"size"``: over every response map of that size (the paper's ``C^l``,
            :func:`wsolkit.maps.shape.shape_layer_groups`), concatenated channel-wise.
        variogram_fit: ``"ols"`` (ordinary least squares) or ``"cressie"`` (Cressie's
            weighted least squares, the paper's reference) for the radius rule.
        sigma_as: the radius rule reads ``sigma`` as the filter's ``"radius"`` or as its
            ``"window"`` side ``2 r + 1`` (the paper: "the size of the filter").
    """

    scales: tuple[int, int] = (224, 448)
    shape_layers: tuple[str, ...] | None = None
    components: int = 3
    eps: float = 1e-2
    radius: int | None = 2
    radius_scale: float = 1.0
    min_radius: int = 1
    max_radius: int | None = None
    cross_scale: bool = True
    fuse_inputs: str = "minmax"
    crf: CRFParams = field(default_factory=lambda: RCAM_CRF)
    crf_iterations: int = 1
    crf_size: int | None = 112
    scale2_input: str = "image"
    shape_group: str = "layer"
    variogram_fit: str = "ols"
    sigma_as: str = "radius"

    def __post_init__(self) -> None:
        scales = tuple(self.scales) if isinstance(self.scales, (tuple, list)) else None
        if scales is None or len(scales) != 2 or not all(_positive_int(s) for s in scales):
            raise InputError(f"scales={self.scales!r}: must be two positive integers (s1, s2)")
        object.__setattr__(self, "scales", (int(scales[0]), int(scales[1])))
        if self.shape_layers is not None:
            layers = self.shape_layers
            if isinstance(layers, str) or not isinstance(layers, (tuple, list)) or not layers \
                    or not all(isinstance(name, str) and name for name in layers):
                raise InputError(
                    f"shape_layers={layers!r}: must be a non-empty tuple of layer names or None"
                )
            object.__setattr__(self, "shape_layers", tuple(layers))
        if not _positive_int(self.components) or self.components > 3:
            raise InputError(f"components={self.components!r}: must be 1, 2 or 3")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) \
                or not 0 < self.eps < float("inf"):
            raise InputError(f"eps={self.eps!r}: must be a finite number > 0")
        if self.radius is not None and not _positive_int(self.radius):
            raise InputError(f"radius={self.radius!r}: must be None or an integer >= 1")
        if isinstance(self.radius_scale, bool) \
                or not isinstance(self.radius_scale, (int, float)) \
                or not 0 < self.radius_scale < float("inf"):
            raise InputError(f"radius_scale={self.radius_scale!r}: must be a finite number > 0")
        if not _positive_int(self.min_radius):
            raise InputError(f"min_radius={self.min_radius!r}: must be an integer >= 1")
        if self.max_radius is not None and (
                not _positive_int(self.max_radius) or self.max_radius < self.min_radius):
            raise InputError(
                f"max_radius={self.max_radius!r}: must be None or an integer >= min_radius"
            )
        if self.fuse_inputs not in FUSE_INPUTS:
            raise InputError(
                f"fuse_inputs={self.fuse_inputs!r}: use one of {', '.join(FUSE_INPUTS)}"
            )
        for name, allowed in (("scale2_input", SCALE2_INPUTS), ("shape_group", SHAPE_GROUPS),
                              ("variogram_fit", FITS), ("sigma_as", SIGMA_AS)):
            if getattr(self, name) not in allowed:
                raise InputError(f"{name}={getattr(self, name)!r}: use one of "
                                 f"{', '.join(allowed)}")
        if not isinstance(self.crf, CRFParams):
            raise InputError(f"crf must be a CRFParams, got {type(self.crf).__name__}")
        if not _positive_int(self.crf_iterations):
            raise InputError(f"crf_iterations={self.crf_iterations!r}: must be >= 1")
        if self.crf_size is not None and (not _positive_int(self.crf_size) or self.crf_size < 8):
            raise InputError(f"crf_size={self.crf_size!r}: must be None or an integer >= 8")


def _positive_int(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


PRESETS: dict[str, RCAMConfig] = {
    "default": RCAMConfig(),
    "paper": RCAMConfig(radius=None, variogram_fit="cressie", sigma_as="window",
                        fuse_inputs="raw", shape_group="size", scale2_input="image",
                        crf_size=None),
}
"""Named configurations (method option ``preset``). ``paper`` is what Ha et al. specify:
``I_2`` the image resized to 448, PCA over every response map of the guide's size (``C^l``),
the guided filter's window side the ``sigma`` of a Cressie weighted least-squares fit of the
Gaussian variogram, eq. 5 on the raw upsampled CAMs, the CRF at 224. The paper gives no
guided filter ``eps`` and no CRF kernels or iterations: those are our defaults. See
docs/rcam.md for where ``default`` differs and why."""


@dataclass
class RCAMStages:
    """Every intermediate result of rCAM for a batch; stages not computed are None.

    Maps are numpy float32; ``(N, H, W)`` maps are at the input tensor's size.

    Attributes:
        classes: (N,) target class per map (from scale 1).
        shape_layers: the layers of the x2 steps, coarse to fine.
        p1: (N,) softmax probability of the class at scale 1.
        p2: (N,) the same at scale 2.
        cam1: (N, h1, w1) raw CAM at scale 1.
        cam2: (N, h2, w2) raw CAM at scale 2.
        shapes1: per shape layer, one :class:`ShapeMaps` per map at scale 1 (maps of one
            image, e.g. one per class, share it).
        shapes2: the same at scale 2.
        radii1: (N, steps) guided filter radius of each step of the scale-1 chain.
        radii2: the same for the scale-2 chain.
        rcam1: (N, H, W) upsampled ``CAM_1`` (chain output, bilinear to the input size; CAM
            units, not normalized).
        rcam2: the same for ``CAM_2``.
        fused: (N, H, W) ``rCAM_1 * P_1 + rCAM_2 * P_2`` before normalization.
        rcam3: (N, H, W) ``fused`` min-max normalized to [0, 1].
        rcam: (N, H, W) dense CRF foreground marginal, in [0, 1].
    """

    classes: np.ndarray
    shape_layers: tuple[str, ...]
    p1: np.ndarray | None = None
    p2: np.ndarray | None = None
    cam1: np.ndarray | None = None
    cam2: np.ndarray | None = None
    shapes1: list[list[ShapeMaps]] | None = None
    shapes2: list[list[ShapeMaps]] | None = None
    radii1: np.ndarray | None = None
    radii2: np.ndarray | None = None
    rcam1: np.ndarray | None = None
    rcam2: np.ndarray | None = None
    fused: np.ndarray | None = None
    rcam3: np.ndarray | None = None
    rcam: np.ndarray | None = None


# ------------------------------------------------------------------------- stage functions


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


def fuse(rcam1: np.ndarray, p1: float | np.ndarray, rcam2: np.ndarray,
         p2: float | np.ndarray, normalize: bool = True) -> np.ndarray:
    """``rCAM_3 = rCAM_1 * P_1(c) + rCAM_2 * P_2(c)`` (eq. 5), then min-max per map.

    Args:
        rcam1: (H, W) or (N, H, W) map of scale 1 (at the input size).
        p1: probability of the target class at scale 1: a scalar or (N,).
        rcam2: map of scale 2, the same shape as ``rcam1``.
        p2: probability at scale 2: a scalar or (N,).
        normalize: min-max normalize each fused map to [0, 1] (a constant map becomes 0).

    Returns:
        float32 map(s) of ``rcam1``'s shape.
    """
    first = np.asarray(rcam1, dtype=np.float32)
    second = np.asarray(rcam2, dtype=np.float32)
    if first.shape != second.shape or first.ndim not in (2, 3):
        raise InputError(
            f"rcam1 and rcam2 must be (H, W) or (N, H, W) of one shape, got {first.shape} "
            f"and {second.shape}"
        )
    weights = [np.asarray(p, dtype=np.float32) for p in (p1, p2)]
    if first.ndim == 3:
        if any(w.size not in (1, first.shape[0]) for w in weights):
            raise InputError(f"p1 and p2 must be scalars or ({first.shape[0]},) for "
                             f"{first.shape[0]} maps")
        weights = [np.broadcast_to(w.reshape(-1), (first.shape[0],))[:, None, None]
                   for w in weights]
    elif any(w.size != 1 for w in weights):
        raise InputError("p1 and p2 must be scalars for (H, W) maps")
    else:
        weights = [w.reshape(()) for w in weights]
    fused = first * weights[0] + second * weights[1]
    return minmax(fused) if normalize else fused.astype(np.float32)


def refine_crf(image: np.ndarray, rcam3: np.ndarray, params: CRFParams | None = None,
               iterations: int = 5, size: int | None = None) -> np.ndarray:
    """Dense CRF on ``rCAM_3``: foreground ``rCAM_3``, background ``1 - rCAM_3``.

    With ``size`` smaller than the image's shorter side, the CRF runs on the image (area
    resize) and ``rCAM_3`` (bilinear) scaled by ``size / min(H, W)``, with the kernels'
    spatial widths (``gaussian_sxy``, ``bilateral_sxy``) scaled alike; the marginal is
    resized back bilinearly. The CRF's cost grows with the pixel count.

    Args:
        image: (H, W, 3) uint8 RGB image.
        rcam3: (H, W) map in [0, 1].
        params: CRF kernel parameters, in pixels of ``image`` (None: ``CRFParams()``).
        iterations: mean-field iterations.
        size: shorter side to run the CRF at; None for the image's own size.

    Returns:
        (H, W) float32 foreground marginal in [0, 1] (the final rCAM).
    """
    prior = np.asarray(rcam3, dtype=np.float32)
    height, width = prior.shape[:2]
    factor = 1.0 if size is None else size / min(height, width)
    if factor >= 1.0:
        return dense_crf(image, prior, params, iterations)
    params = CRFParams() if params is None else params
    small = (max(1, round(width * factor)), max(1, round(height * factor)))
    scaled = replace(params, gaussian_sxy=params.gaussian_sxy * factor,
                     bilateral_sxy=params.bilateral_sxy * factor)
    image_small = cv2.resize(np.ascontiguousarray(image), small, interpolation=cv2.INTER_AREA)
    prior_small = np.clip(cv2.resize(prior, small, interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    marginal = dense_crf(image_small, prior_small, scaled, iterations)
    return np.clip(cv2.resize(marginal, (width, height), interpolation=cv2.INTER_LINEAR),
                   0.0, 1.0)


def minmax(maps: np.ndarray) -> np.ndarray:
    """Min-max normalize an (H, W) map or each map of an (N, H, W) stack (constant -> 0)."""
    array = np.asarray(maps, dtype=np.float32)
    axes = (-2, -1)
    low = array.min(axis=axes, keepdims=True)
    span = array.max(axis=axes, keepdims=True) - low
    out = np.zeros_like(array)
    np.divide(array - low, span, out=out, where=span > 0)
    return out


def to_rgb_uint8(images: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float]) -> np.ndarray:
    """Undo ``Classifier.preprocess``: (N, 3, H, W) normalized tensor -> (N, H, W, 3) uint8.

    ``x * std + mean`` per channel gives RGB in [0, 1], scaled to 0..255, rounded and
    clipped. This recovers the resized image up to rounding only if the batch was made with
    these ``mean`` and ``std`` (the classifier's own preprocessing).

    Raises:
        InputError: the batch does not have 3 channels.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(
            f"the dense CRF needs RGB images, (N, 3, H, W); got {tuple(images.shape)}"
        )
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    rgb = images.detach().float().cpu() * std_t + mean_t
    rgb = (rgb * 255.0).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(rgb.permute(0, 2, 3, 1).numpy())


# ------------------------------------------------------------------------- methods


@dataclass
class _ShapeForward(ForwardPass):
    """The base's forward pass plus the shape layers' outputs captured during it."""

    shape_features: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class _Scale:
    """One scale's forward pass: CAM, class probabilities and shape maps of unique images."""

    cam: np.ndarray  # (N, h, w)
    probs: np.ndarray  # (N,)
    shapes: list[list[ShapeMaps]]  # [layer][unique image]


class _RCAMBase(HeatmapMethod):
    """Shared implementation of the rCAM stages; ``stage`` picks the returned map.

    Args:
        model: a :class:`~wsolkit.models.Classifier` or a bare ``nn.Module``.
        layer: the CAM layer (default: the layer feeding the pooled linear head).
        fc: name of the linear head (detected when omitted).
        upsample: unused (maps are computed at the input size); kept for the common signature.
        config: an :class:`RCAMConfig` (default settings when omitted).
        scales: overrides ``config.scales``; a pair or a string ``"224,448"``.
        shape_layers: overrides ``config.shape_layers``; names or ``"a,b"``.
        eps: overrides ``config.eps``.
        crf_iterations: overrides ``config.crf_iterations``.
        radius: overrides ``config.radius`` (0 means None: the variogram rule).
        radius_scale: overrides ``config.radius_scale``.
        fuse_inputs: overrides ``config.fuse_inputs``.
        crf_size: overrides ``config.crf_size`` (0 means None: the input size).
        bilateral_srgb: overrides ``config.crf.bilateral_srgb``.
        bilateral_compat: overrides ``config.crf.bilateral_compat``.
        preset: start from a named configuration of :data:`PRESETS` (``"paper"``,
            ``"default"``) instead of ``config``; the other options override it.
        scale2_input: overrides ``config.scale2_input``.
        shape_group: overrides ``config.shape_group``.

    Raw maps (``HeatmapResult.raw``) are at the input size: the upsampled CAM for ``rcam1``,
    ``rcam2`` (CAM units), ``rCAM_1 * P_1 + rCAM_2 * P_2`` before normalization for ``rcam3``,
    and for ``rcam`` the CRF marginal times the peak of that fusion (the marginal peaks near 1
    for any class; the scaling keeps raw peaks usable as class scores and leaves the min-max
    normalized ``maps`` unchanged). The intermediate results of the last call are kept in
    ``last_stages`` (``last_stages.rcam`` is the plain marginal); :meth:`stages` computes all
    of them.

    Scale 2 is the original image resized to s2 x s2 when the call gets the original images
    (``originals=``, one RGB PIL image per input image) and ``config.scale2_input`` is
    ``"image"``; otherwise the preprocessed input tensor resized to s2 x s2. The target class
    is resolved on the input as given, which is scale 1 whenever the input is s1 x s1 (as
    ``Classifier.preprocess`` makes it for the embedded model at 224).
    """

    stage: ClassVar[str] = "rcam"
    relu = False
    takes_originals = True

    def __init__(
        self,
        model: Classifier | nn.Module,
        layer: str | None = None,
        fc: str | None = None,
        upsample: str = "bilinear",
        config: RCAMConfig | None = None,
        scales: Sequence[int] | str | None = None,
        shape_layers: Sequence[str] | str | None = None,
        eps: float | None = None,
        crf_iterations: int | None = None,
        radius: int | None = None,
        radius_scale: float | None = None,
        fuse_inputs: str | None = None,
        crf_size: int | None = None,
        bilateral_srgb: float | None = None,
        bilateral_compat: float | None = None,
        preset: str | None = None,
        scale2_input: str | None = None,
        shape_group: str | None = None,
    ) -> None:
        super().__init__(model, layer=layer, fc=fc, upsample=upsample)
        if preset is not None:
            if preset not in PRESETS:
                raise InputError(f"preset={preset!r}: use one of {', '.join(PRESETS)}")
            if config is not None:
                raise InputError("give either config or preset, not both")
            config = PRESETS[preset]
        config = RCAMConfig() if config is None else config
        if not isinstance(config, RCAMConfig):
            raise InputError(f"config must be an RCAMConfig, got {type(config).__name__}")
        overrides: dict[str, object] = {
            name: value for name, value in (("scale2_input", scale2_input),
                                            ("shape_group", shape_group))
            if value is not None
        }
        if scales is not None:
            overrides["scales"] = _split(scales, int, "scales")
        if shape_layers is not None:
            overrides["shape_layers"] = _split(shape_layers, str, "shape_layers")
        if eps is not None:
            overrides["eps"] = eps
        if crf_iterations is not None:
            overrides["crf_iterations"] = crf_iterations
        if radius is not None:
            overrides["radius"] = None if radius == 0 else radius
        if radius_scale is not None:
            overrides["radius_scale"] = radius_scale
        if fuse_inputs is not None:
            overrides["fuse_inputs"] = fuse_inputs
        if crf_size is not None:
            overrides["crf_size"] = None if crf_size == 0 else crf_size
        kernel = {name: value for name, value in (("bilateral_srgb", bilateral_srgb),
                                                  ("bilateral_compat", bilateral_compat))
                  if value is not None}
        if kernel:
            overrides["crf"] = replace(config.crf, **kernel)
        self.config = replace(config, **overrides) if overrides else config
        self._cam = CAM(self.classifier, layer=layer, fc=fc)
        self.last_stages: RCAMStages | None = None
        self._originals: list[Image.Image] | None = None

    def __call__(
        self,
        images: torch.Tensor,
        target: TargetSpec = "top1",
        labels: Sequence[int] | torch.Tensor | None = None,
        upsample_maps: bool = True,
        originals: Sequence[Image.Image] | None = None,
    ):
        """The base's call, plus ``originals``: the RGB PIL images the batch was made from.

        With them (and ``config.scale2_input == "image"``) scale 2 resizes each original to
        s2 x s2 instead of upsampling the tensor. They are not modified.
        """
        if originals is not None:
            originals = list(originals)
            if len(originals) != len(images):
                raise InputError(f"originals: {len(originals)} images for a batch of "
                                 f"{len(images)}")
            for index, image in enumerate(originals):
                if not isinstance(image, Image.Image) or image.mode != "RGB":
                    raise InputError(f"originals[{index}] must be an RGB PIL image, got "
                                     f"{type(image).__name__}")
        self._originals = originals
        try:
            return super().__call__(images, target=target, labels=labels,
                                    upsample_maps=upsample_maps)
        finally:
            self._originals = None

    def stages(self, images: torch.Tensor, target: TargetSpec = "top1",
               labels: Sequence[int] | torch.Tensor | None = None,
               originals: Sequence[Image.Image] | None = None) -> RCAMStages:
        """Run the whole pipeline on a batch and return every stage (CRF included)."""
        runner = RCAM(self.classifier, layer=self.layer, config=self.config)
        runner(images, target=target, labels=labels, originals=originals)
        return runner.last_stages

    def forward(
        self,
        images: torch.Tensor,
        layer: str,
        targets: Targets | None = None,
        target: TargetSpec = "top1",
        labels: Sequence[int] | torch.Tensor | None = None,
    ) -> ForwardPass:
        """The base's forward pass, also capturing the shape layers when it is scale 1.

        One forward at scale 1 then serves the CAM, ``P_1`` and the scale-1 shape maps.
        """
        s1 = self.config.scales[0]
        names: tuple[str, ...] = ()
        if self.stage != "rcam2" and tuple(images.shape[-2:]) == (s1, s1):
            groups = self._shape_groups(images, layer)
            names = tuple(dict.fromkeys(name for group in groups for name in group))
        with ExitStack() as stack:
            captures = [stack.enter_context(capture_layer(self.module, name)) for name in names]
            result = super().forward(images, layer, targets, target=target, labels=labels)
        features = {}
        for capture in captures:
            if capture.activation is None:
                raise LayerError(f"layer {capture.name!r} did not run during the forward pass")
            features[capture.name] = capture.activation
        return _ShapeForward(result.images, result.layer, result.activations, result.logits,
                             result.targets, features)

    def _shape_layers(self, images: torch.Tensor, layer: str) -> tuple[str, ...]:
        return self.config.shape_layers or select_shape_layers(self.module, images[:1], layer)

    def _shape_groups(self, images: torch.Tensor, layer: str) -> tuple[tuple[str, ...], ...]:
        """Per shape layer, the layers its PCA runs over (itself, or its size's group)."""
        layers = self._shape_layers(images, layer)
        if self.config.shape_group == "layer":
            return tuple((name,) for name in layers)
        return shape_layer_groups(self.module, images[:1], layer, layers)

    def _scale2_images(self, forward: ForwardPass) -> torch.Tensor:
        """Scale-2 input per row: the original image resized, or the input tensor resized."""
        side = self.config.scales[1]
        if self._originals is None or self.config.scale2_input == "tensor":
            return _resize(forward.images, side)
        at_side = replace(self.classifier, input_size=(side, side))
        batch = at_side.preprocess_batch(self._originals).to(forward.images.device)
        return batch[forward.targets.image_index.to(batch.device)]

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """Run the pipeline up to this method's stage; return its (N, H, W) map."""
        stages = self.compute(forward, self.stage)
        self.last_stages = stages
        if self.stage == "rcam":  # scaled so that raw peaks rank classes like rcam3's
            out = stages.rcam * stages.fused.max(axis=(1, 2), keepdims=True)
        else:
            out = {"rcam1": stages.rcam1, "rcam2": stages.rcam2,
                   "rcam3": stages.fused}[self.stage]
        return torch.from_numpy(np.ascontiguousarray(out)).to(forward.activations.device)

    def compute(self, forward: ForwardPass, until: str = "rcam") -> RCAMStages:
        """All stages needed for ``until`` (one of :data:`STAGES`) from the scale-1 forward."""
        if until not in STAGES:
            raise InputError(f"until={until!r}: use one of {', '.join(STAGES)}")
        targets = forward.targets
        if targets.score_fn is not None:
            raise TargetError(f"{self.name} needs class targets, not a callable")
        config = self.config
        size = tuple(forward.images.shape[-2:])
        s1, s2 = config.scales
        images1 = forward.images if size == (s1, s1) else _resize(forward.images, s1)
        layers = self._shape_layers(images1, forward.layer)
        groups = self._shape_groups(images1, forward.layer)
        unique, inverse = _unique_rows(forward.images)
        need1 = until != "rcam2"
        need2 = until != "rcam1" or config.cross_scale
        stages = RCAMStages(classes=targets.classes.numpy().copy(), shape_layers=layers)
        if need1:
            first = self._scale(forward, images1, unique, inverse, groups, cam=True)
            stages.cam1, stages.p1, stages.shapes1 = first.cam, first.probs, first.shapes
        if need2:
            cam = until != "rcam1"
            second = self._scale(forward, self._scale2_images(forward), unique, inverse,
                                 groups, cam=cam)
            stages.shapes2 = second.shapes
            if cam:
                stages.cam2, stages.p2 = second.cam, second.probs

        radius_of: dict[int, int] = {}
        if need1:
            extra = stages.shapes2[-1] if config.cross_scale else None
            stages.rcam1, stages.radii1 = self._chains(stages.cam1, stages.shapes1, extra,
                                                       inverse, size, radius_of)
        if until != "rcam1":
            stages.rcam2, stages.radii2 = self._chains(stages.cam2, stages.shapes2, None,
                                                       inverse, size, radius_of)
        if until in ("rcam3", "rcam"):
            first_map, second_map = stages.rcam1, stages.rcam2
            if config.fuse_inputs == "minmax":
                first_map, second_map = minmax(first_map), minmax(second_map)
            stages.fused = fuse(first_map, stages.p1, second_map, stages.p2, normalize=False)
            stages.rcam3 = minmax(stages.fused)
        if until == "rcam":
            rgb = to_rgb_uint8(forward.images[unique], self.classifier.mean, self.classifier.std)
            stages.rcam = np.stack([
                refine_crf(rgb[inverse[row]], stages.rcam3[row], config.crf,
                           config.crf_iterations, config.crf_size)
                for row in range(len(stages.rcam3))
            ])
        rows = inverse.tolist()  # shape maps of distinct images -> one entry per map
        for name in ("shapes1", "shapes2"):
            shapes = getattr(stages, name)
            if shapes is not None:
                setattr(stages, name, [[layer[i] for i in rows] for layer in shapes])
        return stages

    # -- helpers ---------------------------------------------------------------------------

    def _scale(self, forward: ForwardPass, images: torch.Tensor, unique: torch.Tensor,
               inverse: torch.Tensor, groups: Sequence[Sequence[str]], cam: bool) -> _Scale:
        """CAM, P(c) and shape maps at one scale, from one forward of the distinct images.

        When ``images`` is the base's input, the base's forward gives the CAM and the logits,
        and the extra forward only captures the shape layers. Each shape map is the PCA of
        its group's outputs concatenated channel-wise (resized to the group's first layer's
        size where an odd input size makes them differ).
        """
        layers = list(dict.fromkeys(name for group in groups for name in group))
        reused = images is forward.images
        captured: dict[str, torch.Tensor] = {}  # outputs of the distinct images
        if reused:
            activations, logits = forward.activations, forward.logits
            given = getattr(forward, "shape_features", {})
            captured = {name: given[name][unique] for name in layers if name in given}
        missing = [name for name in layers if name not in captured]
        names = list(dict.fromkeys(([forward.layer] if cam and not reused else []) + missing))
        if names or not reused:
            distinct_logits, outputs = _chunked_forward(self.module, images[unique], names)
            captured.update(outputs)
            if not reused:
                logits = distinct_logits[inverse]
                activations = captured[forward.layer][inverse] if cam else None
        classes = forward.targets.classes.to(logits.device)
        probs = self.classifier.probabilities(logits).gather(1, classes[:, None])[:, 0]
        cam_map = None
        if cam:
            scaled = ForwardPass(images, forward.layer, activations, logits, forward.targets)
            cam_map = self._cam.layer_map(scaled).detach().float().cpu().numpy()
        shapes = [pca_shape_maps_batch(_concatenated(captured, group), self.config.components)
                  for group in groups]
        return _Scale(cam_map, probs.detach().cpu().numpy(), shapes)

    def _chains(self, cams: np.ndarray, shapes: list[list[ShapeMaps]],
                extra: list[ShapeMaps] | None, inverse: torch.Tensor, size: tuple[int, int],
                radius_of: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Upsample each row's CAM through its image's guides, then bilinear to ``size``.

        ``radius_of`` caches the variogram radius per shape map (by id) across chains: the
        finest scale-2 map guides the last step of both chains but is fitted once.
        """
        config = self.config
        per_image = []
        for index in range(len(shapes[0])):
            guides = [layer[index] for layer in shapes]
            if extra is not None and _finer(extra[index].maps, guides[-1].maps):
                guides.append(extra[index])
            for guide in guides:
                if config.radius is not None:
                    radius_of[id(guide)] = config.radius
                elif id(guide) not in radius_of:
                    radius_of[id(guide)] = variogram_radius(
                        guide.guide(), config.min_radius, config.max_radius,
                        config.radius_scale, config.variogram_fit, config.sigma_as)
            per_image.append(([g.maps for g in guides], [radius_of[id(g)] for g in guides]))
        maps, radii_rows = [], []
        for row, cam in enumerate(cams):
            guides, radii = per_image[int(inverse[row])]
            chained = upsample_chain(cam, guides, config.eps, radii)
            maps.append(cv2.resize(chained, (size[1], size[0]), interpolation=cv2.INTER_LINEAR))
            radii_rows.append(radii)
        return np.stack(maps).astype(np.float32), np.asarray(radii_rows, dtype=np.int64)


class RCAM1(_RCAMBase):
    """rCAM_1: the scale-1 CAM upsampled by guided filters on shape maps (eqs. 2-3)."""

    name = "rcam1"
    summary = "rCAM stage 1: scale-1 CAM upsampled by guided filters on PCA shape maps"
    stage = "rcam1"


class RCAM2(_RCAMBase):
    """rCAM_2: the scale-2 (448) CAM upsampled by guided filters on its shape maps (eq. 4)."""

    name = "rcam2"
    summary = "rCAM stage 2: scale-2 (448) CAM upsampled by guided filters on shape maps"
    stage = "rcam2"


class RCAM3(_RCAMBase):
    """rCAM_3: ``rCAM_1 * P_1(c) + rCAM_2 * P_2(c)``, normalized (eq. 5)."""

    name = "rcam3"
    summary = "rCAM stage 3: rCAM1 and rCAM2 fused by their class probabilities"
    stage = "rcam3"


class RCAM(_RCAMBase):
    """rCAM: dense CRF on rCAM_3 (the paper's final high-resolution CAM)."""

    name = "rcam"
    summary = "rCAM: multi-scale CAMs, guided-filter upsampling on PCA shape maps, dense CRF"
    stage = "rcam"


# ------------------------------------------------------------------------- small helpers


def _split(value: object, kind: type, name: str) -> tuple:
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
        try:
            return tuple(kind(part) for part in parts)
        except ValueError:
            raise InputError(f"{name}={value!r}: expected comma-separated values") from None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        raise InputError(f"{name}={value!r}: expected a sequence")
    return tuple(value)


FORWARD_CHUNK = 1
"""Images per forward pass of the extra (scale-2) forward: per image, in channels-last
layout, is fastest on CPUs (a 448x448 batch's activations overflow the caches; measured in
``benchmarks/rcam_speed.py``)."""


def _chunked_forward(module: nn.Module, images: torch.Tensor,
                     names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the outputs of layers ``names``, running ``FORWARD_CHUNK`` images at a time.

    No autograd (``torch.no_grad``); the input is passed in channels-last layout (the same
    numbers up to float rounding, faster for the depthwise convolutions on CPUs).
    """
    logits, outputs = [], {name: [] for name in names}
    for start in range(0, len(images), FORWARD_CHUNK):
        chunk = images[start:start + FORWARD_CHUNK].contiguous(memory_format=torch.channels_last)
        with ExitStack() as stack:
            captures = [stack.enter_context(capture_layer(module, name)) for name in names]
            with torch.no_grad():
                logits.append(module(chunk))
        for capture in captures:
            if capture.activation is None:
                raise LayerError(f"layer {capture.name!r} did not run during the forward pass")
            outputs[capture.name].append(capture.activation.contiguous())
    return torch.cat(logits), {name: torch.cat(parts) for name, parts in outputs.items()}


def _concatenated(captured: dict[str, torch.Tensor], group: Sequence[str]) -> torch.Tensor:
    """The outputs of a group of layers stacked along channels, at the first one's size."""
    parts = [captured[name] for name in group]
    size = parts[0].shape[-2:]
    parts = [part if part.shape[-2:] == size else
             F.interpolate(part.float(), size=tuple(size), mode="bilinear", align_corners=False)
             for part in parts]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _resize(images: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear resize of an NCHW batch to side x side (pixel centres, no antialiasing)."""
    if tuple(images.shape[-2:]) == (side, side):
        return images
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)


def _unique_rows(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the distinct images of a batch and, per row, its distinct image's position.

    Batches of one image repeated once per class (every-class maps) then cost one forward
    and one set of shape maps per scale. Rows are compared exactly, after a cheap signature.
    """
    signatures = images.detach().flatten(1).double().sum(dim=1).tolist()
    firsts: list[int] = []
    inverse = []
    for row, signature in enumerate(signatures):
        for position, first in enumerate(firsts):
            if signatures[first] == signature and torch.equal(images[row], images[first]):
                inverse.append(position)
                break
        else:
            inverse.append(len(firsts))
            firsts.append(row)
    return torch.tensor(firsts, dtype=torch.long), torch.tensor(inverse, dtype=torch.long)


def _guide_image(guide: np.ndarray) -> np.ndarray:
    """(k, H, W) or (H, W) shape map -> OpenCV guide (H, W[, k]) float32."""
    array = np.asarray(guide, dtype=np.float32)
    if array.ndim == 2:
        return np.ascontiguousarray(array)
    if array.ndim != 3 or not 1 <= array.shape[0] <= 3:
        raise InputError(f"guide must be (k, H, W) with k <= 3 or (H, W), got {array.shape}")
    return np.ascontiguousarray(array.transpose(1, 2, 0))


def _finer(extra: np.ndarray, last: np.ndarray) -> bool:
    return extra.shape[-2] > last.shape[-2] and extra.shape[-1] > last.shape[-1]
