"""rCAM (Ha et al.): high-resolution CAMs from multi-scale CAMs, shape maps and a dense CRF.

Multi-scale CAMs are upsampled by guided filters on PCA shape maps, fused by class
probability and refined by a dense CRF.

The pipeline, per image and target class ``c`` (taken from scale 1 for both scales):

1. **CAMs at two scales** (sec. 3.1): the input at ``scales[0]`` and the original image
   resized to ``scales[1]`` (square, bilinear; ``I_2``; the input tensor upsampled when the
   call gets no ``sources`` or ``scale2_input="tensor"``) give ``CAM_1``, ``CAM_2``
   (``wsolkit.maps.cam.CAM`` on the layer feeding the pooled linear head) and the softmax
   probabilities ``P_1(c)``, ``P_2(c)``.
2. **Shape maps** (sec. 3.2): the first 3 principal components of the feature vectors of the
   *shape layers* (:func:`wsolkit.maps.shape.pca_shape_maps`), per image and scale; with
   ``shape_group="size"`` of every response map of that size (the paper's ``C^l``).
3. **Guided upsampling** (sec. 3.3, :func:`upsample_chain`): x2 steps ``G^f(U^2(M), S)``,
   bilinear x2 then OpenCV's guided filter with the shape map at that resolution as guide.
   The paper's radius rule, the ``sigma`` of a Gaussian fit to the guide's empirical
   variogram (eq. 1, :func:`wsolkit.refine.variogram.variogram_radius`), is
   ``RCAMConfig(radius=None)`` (``variogram_fit``, ``sigma_as`` choose the fit and the
   reading of ``sigma``); the default is a fixed radius of 2 at every step, chosen on the dev
   sets (docs/rcam.md).
4. **Fusion** (eq. 5, :func:`fuse`): ``rCAM_3 = rCAM_1 * P_1(c) + rCAM_2 * P_2(c)`` after
   bilinear upsampling of both to the input size, then min-max normalization.
5. **Dense CRF** (:func:`refine_crf`): unaries from ``rCAM_3`` and ``1 - rCAM_3`` on the RGB
   image; the foreground marginal is the final ``rCAM``. Defaults (tuned on the dev sets as a
   whole, docs/rcam.md): one mean-field iteration (more make the map nearly binary), colour
   std 5, run at 112x112 (``crf_size``, kernels scaled; a quarter of the pixels of 224).

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
image (one row per class) share the forwards, PCAs and fits. The two forwards dominate;
``benchmarks/rcam_speed.py`` times each stage (docs/rcam.md).

**Cross-scale step** (``cross_scale=True``, the paper's eq. 3): the scale-1 chain continues
with the finest scale-2 shape map when it is finer than the chain's end (EfficientNet-Lite0 at
224/448: 28 -> 56 with ``features.stage3`` of the 448 input), so ``rCAM_1`` and ``rCAM_2``
both end at 56x56, as in the paper, before the bilinear step to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from wsolkit.checks import normalize_minmax
from wsolkit.errors import InputError, LayerError, TargetError
from wsolkit.maps.base import ForwardPass, HeatmapMethod
from wsolkit.maps.cam import CAM
from wsolkit.maps.hooks import FORWARD_CHUNK, capture_layer, forward_capturing
from wsolkit.maps.rcam_config import (
    FUSE_INPUTS,
    OPTIONS,
    PRESETS,
    RCAM_CRF,
    SCALE2_INPUTS,
    SHAPE_GROUPS,
    STAGES,
    RCAMConfig,
    with_options,
)
from wsolkit.maps.rcam_stages import (
    RCAMStages,
    Scale,
    concatenated,
    guided_chains,
    resize_square,
    unique_rows,
)
from wsolkit.maps.shape import (
    pca_shape_maps_batch,
    select_shape_layers,
    shape_layer_groups,
)
from wsolkit.maps.targets import TargetSpec
from wsolkit.models.classifier import Classifier, to_rgb_uint8
from wsolkit.refine.crf import dense_crf
from wsolkit.refine.fusion import fuse
from wsolkit.refine.guided_filter import chain_radii, upsample_chain

refine_crf = dense_crf
"""The dense CRF on ``rCAM_3`` (foreground ``rCAM_3``, background ``1 - rCAM_3``; ``size``
runs it at a smaller side): :func:`wsolkit.refine.crf.dense_crf`."""

_chunked_forward = forward_capturing

__all__ = [
    "FORWARD_CHUNK", "FUSE_INPUTS", "PRESETS", "RCAM", "RCAM1", "RCAM2", "RCAM3", "RCAM_CRF",
    "SCALE2_INPUTS", "SHAPE_GROUPS", "STAGES", "RCAMConfig", "RCAMStages", "chain_radii",
    "fuse", "refine_crf", "select_shape_layers", "to_rgb_uint8", "upsample_chain",
]


# ------------------------------------------------------------------------- methods


@dataclass
class _ShapeForward(ForwardPass):
    """The base's forward pass plus the shape layers' outputs captured during it."""

    shape_features: dict[str, torch.Tensor] = field(default_factory=dict)


class _RCAMBase(HeatmapMethod):
    """Shared implementation of the rCAM stages; ``stage`` picks the returned map.

    Args:
        model: a :class:`~wsolkit.models.Classifier` or a bare ``nn.Module``.
        layer: the CAM layer (default: the layer feeding the pooled linear head).
        fc: name of the linear head (detected when omitted).
        upsample: unused (maps are computed at the input size); kept for the common signature.
        config: an :class:`RCAMConfig` (default settings when omitted).
        preset: start from a named configuration of :data:`PRESETS` (``"paper"``,
            ``"default"``) instead of ``config``; the options override it.
        **options: fields of the configuration by name (``scales="224,448"``, ``radius=0``,
            ``bilateral_srgb=7``, ...: :data:`wsolkit.maps.rcam_config.OPTIONS`), applied
            over ``config`` or ``preset``.

    Raw maps (``HeatmapResult.raw``) are at the input size: the upsampled CAM for ``rcam1``,
    ``rcam2`` (CAM units), ``rCAM_1 * P_1 + rCAM_2 * P_2`` before normalization for ``rcam3``,
    and for ``rcam`` the CRF marginal times the peak of that fusion (the marginal peaks near 1
    for any class; the scaling keeps raw peaks usable as class scores and leaves the min-max
    normalized ``maps`` unchanged). The intermediate results of the last call are kept in
    ``last_stages`` (``last_stages.rcam`` is the plain marginal); :meth:`stages` computes all
    of them.

    Scale 2 is the original image resized to s2 x s2 when the call gets the original images
    (``sources=``, one RGB PIL image per input image) and ``config.scale2_input`` is
    ``"image"``; otherwise the preprocessed input tensor resized to s2 x s2. The target class
    is resolved on the input as given, which is scale 1 whenever the input is s1 x s1 (as
    ``Classifier.preprocess`` makes it for the embedded model at 224).
    """

    config_options: ClassVar[dict[str, object]] = OPTIONS
    """Keyword options taken through ``**options`` (checked by ``make_method``)."""
    stage: ClassVar[str] = "rcam"
    """The map returned: the stage of the same name (set from ``name`` in each subclass)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A stage class's ``stage`` is its registry ``name``."""
        super().__init_subclass__(**kwargs)
        cls.stage = cls.name

    relu = False
    uses_sources = True

    def __init__(
        self,
        model: Classifier | nn.Module,
        layer: str | None = None,
        fc: str | None = None,
        upsample: str = "bilinear",
        config: RCAMConfig | None = None,
        preset: str | None = None,
        **options: object,
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
        self.config = with_options(config, options)
        self._cam = CAM(self.classifier, layer=layer, fc=fc)
        self.last_stages: RCAMStages | None = None

    def stages(self, images: torch.Tensor, target: TargetSpec = "top1",
               labels: Sequence[int] | torch.Tensor | None = None,
               sources: Sequence[Image.Image] | None = None) -> RCAMStages:
        """Run the whole pipeline on a batch and return every stage (CRF included)."""
        runner = RCAM(self.classifier, layer=self.layer, config=self.config)
        runner(images, target=target, labels=labels, sources=sources)
        return runner.last_stages

    def forward(self, images: torch.Tensor, layer: str, **request: Any) -> ForwardPass:
        """The base's forward pass, also capturing the shape layers when it is scale 1.

        One forward at scale 1 then serves the CAM, ``P_1`` and the scale-1 shape maps.
        ``request`` holds the base's target arguments (``targets``, ``target``, ``labels``).
        """
        s1 = self.config.scales[0]
        names: tuple[str, ...] = ()
        if self.stage != "rcam2" and tuple(images.shape[-2:]) == (s1, s1):
            groups = self._shape_groups(images, layer)
            names = tuple(dict.fromkeys(name for group in groups for name in group))
        with ExitStack() as stack:
            captures = [stack.enter_context(capture_layer(self.module, name)) for name in names]
            result = super().forward(images, layer, **request)
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
        if forward.sources is None or self.config.scale2_input == "tensor":
            return resize_square(forward.images, side)
        at_side = replace(self.classifier, input_size=(side, side))
        batch = at_side.preprocess_batch(list(forward.sources)).to(forward.images.device)
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
        images1 = forward.images if size == (s1, s1) else resize_square(forward.images, s1)
        layers = self._shape_layers(images1, forward.layer)
        groups = self._shape_groups(images1, forward.layer)
        unique, inverse = unique_rows(forward.images)
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
            stages.rcam1, stages.radii1 = guided_chains(
                config, stages.cam1, stages.shapes1, extra, inverse, size, radius_of)
        if until != "rcam1":
            stages.rcam2, stages.radii2 = guided_chains(
                config, stages.cam2, stages.shapes2, None, inverse, size, radius_of)
        if until in ("rcam3", "rcam"):
            first_map, second_map = stages.rcam1, stages.rcam2
            if config.fuse_inputs == "minmax":
                first_map, second_map = normalize_minmax(first_map), normalize_minmax(second_map)
            stages.fused = fuse(first_map, stages.p1, second_map, stages.p2, normalize=False)
            stages.rcam3 = normalize_minmax(stages.fused)
        if until == "rcam":
            rgb = self.classifier.to_rgb(forward.images[unique])
            stages.rcam = np.stack([
                dense_crf(rgb[inverse[row]], stages.rcam3[row], config.crf,
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
               inverse: torch.Tensor, groups: Sequence[Sequence[str]], cam: bool) -> Scale:
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
            distinct_logits, outputs = forward_capturing(self.module, images[unique], names)
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
        shapes = [pca_shape_maps_batch(concatenated(captured, group), self.config.components)
                  for group in groups]
        return Scale(cam_map, probs.detach().cpu().numpy(), shapes)


class RCAM1(_RCAMBase, name="rcam1",
            summary="rCAM stage 1: scale-1 CAM upsampled by guided filters on PCA shape maps"):
    """rCAM_1: the scale-1 CAM upsampled by guided filters on shape maps (eqs. 2-3)."""


class RCAM2(_RCAMBase, name="rcam2",
            summary="rCAM stage 2: scale-2 (448) CAM upsampled by guided filters on shape maps"):
    """rCAM_2: the scale-2 (448) CAM upsampled by guided filters on its shape maps (eq. 4)."""


class RCAM3(_RCAMBase, name="rcam3",
            summary="rCAM stage 3: rCAM1 and rCAM2 fused by their class probabilities"):
    """rCAM_3: ``rCAM_1 * P_1(c) + rCAM_2 * P_2(c)``, normalized (eq. 5)."""


class RCAM(_RCAMBase, name="rcam", summary="rCAM: multi-scale CAMs, guided-filter upsampling "
           "on PCA shape maps, dense CRF"):
    """rCAM: dense CRF on rCAM_3 (the paper's final high-resolution CAM)."""

