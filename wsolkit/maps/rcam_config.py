"""rCAM settings: :class:`RCAMConfig`, its validation and the named presets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from wsolkit.errors import InputError
from wsolkit.refine.crf import CRFParams
from wsolkit.refine.variogram import FITS, SIGMA_AS

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
            (``sources=``; the apps pass them), else the input tensor upsampled;
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


OPTIONS: dict[str, object] = {
    "scales": None, "shape_layers": None, "eps": 1e-2, "crf_iterations": 1, "radius": 2,
    "radius_scale": 1.0, "fuse_inputs": None, "crf_size": 112, "scale2_input": None,
    "shape_group": None, "bilateral_srgb": 5.0, "bilateral_compat": 5.0,
}
"""The rCAM method options (``--option KEY=VALUE``) and the defaults their values are typed
by: :class:`RCAMConfig` fields, and two of its CRF kernel's (``bilateral_*``). ``scales`` and
``shape_layers`` also take comma-separated text; ``radius=0`` is ``None`` (the variogram
radius) and ``crf_size=0`` is ``None`` (the CRF at the input size)."""

_ZERO_IS_NONE = ("radius", "crf_size")
_CRF_OPTIONS = ("bilateral_srgb", "bilateral_compat")


def with_options(config: RCAMConfig, options: dict[str, object]) -> RCAMConfig:
    """``config`` with method options (:data:`OPTIONS`) applied; None values are not given.

    Raises:
        TypeError: an option :data:`OPTIONS` does not name (as a constructor would).
        InputError: a value the config rejects.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"unexpected rCAM option(s): {', '.join(unknown)}")
    fields: dict[str, object] = {}
    kernel: dict[str, object] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in ("scales", "shape_layers"):
            value = _split(value, int if name == "scales" else str, name)
        elif name in _ZERO_IS_NONE and value == 0:
            value = None
        (kernel if name in _CRF_OPTIONS else fields)[name] = value
    if kernel:
        fields["crf"] = replace(config.crf, **kernel)
    return replace(config, **fields) if fields else config


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
