"""`HeatmapMethod`: the shared machinery of every heatmap method.

A method overrides one thing, :meth:`HeatmapMethod.layer_map`, which turns a forward pass (the
hooked layer's activations, the logits, the targets, and on demand the gradients) into a raw
map at layer resolution. The base runs the forward pass with hooks, resolves targets, applies
ReLU, upsamples to the input size and normalizes to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from PIL import Image

from wsolkit.checks import normalize_minmax
from wsolkit.errors import InputError, LayerError, ModelError
from wsolkit.maps.forward import DistinctPass, ForwardPass, gather_rows
from wsolkit.maps.fusion import check_fusion, check_layers, fuse_layers
from wsolkit.maps.hooks import capture_layer, eval_mode
from wsolkit.maps.targets import Targets, TargetSpec, resolve_targets
from wsolkit.maps.tokens import check_reshape
from wsolkit.models.classifier import Classifier, as_classifier
from wsolkit.models.layers import find_linear

UPSAMPLING = ("bilinear", "bicubic")


@dataclass
class HeatmapResult:
    """Heatmaps of a batch, one per (image, target) pair.

    Attributes:
        maps: (N, H, W) float32 in [0, 1] at the input size.
        raw: (N, h, w) float32 layer-resolution map before ReLU and normalization.
        classes: (N,) target class per map (-1 when a callable gave the score).
        scores: (N,) target score of the unmodified image (logit, or the callable's value).
        logits: (N, classes) logits of each map's image.
        image_index: (N,) input image of each map (differs from ``arange`` for top-k, k > 1).
        method: registry name of the method.
        layer: name of the hooked layer.
    """

    maps: torch.Tensor
    raw: torch.Tensor
    classes: torch.Tensor
    scores: torch.Tensor
    logits: torch.Tensor
    image_index: torch.Tensor
    method: str
    layer: str


class HeatmapMethod:
    """Base class of heatmap methods; subclasses override :meth:`layer_map` only.

    Args:
        model: a :class:`~wsolkit.models.Classifier` or a bare ``nn.Module``.
        layer: name of the layer to hook; defaults to the model's layer for this method.
        fc: name of the linear layer of the CAM head (detected when omitted).
        upsample: ``"bilinear"`` (default) or ``"bicubic"`` resizing of the raw map.
        reshape: how a token or channels-last layer output becomes an (N, C, h, w) map:
            None (automatic), ``"nchw"``, ``"nhwc"``, ``"tokens"`` or ``"tokens:P"`` (see
            :mod:`wsolkit.maps.tokens`).
        fuse: how the maps of several layers combine: ``"mean"`` or ``"max"``.

    ``layer`` may name several layers (a sequence, or names joined by commas): the method then
    runs at each and their maps are fused (:mod:`wsolkit.maps.fusion`).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False
    relu: ClassVar[bool] = True
    uses_sources: ClassVar[bool] = False
    """True when the method re-reads the images the batch was made from (``sources=``: one RGB
    PIL image per input image); callers that have them pass them only then."""
    maps_detected_classes_only: ClassVar[bool] = False
    """True when each class's map costs a search of its own (``beam``): scoring every class of
    multi-label images maps only the classes it detects (:mod:`wsolkit.apps.class_scoring`)."""

    def __init_subclass__(cls, name: str = "", summary: str = "", **kwargs: Any) -> None:
        """Class keywords give the registry name and summary of a family's small subclasses.

        ``class RCAM1(_RCAMBase, name="rcam1", summary="...")`` is ``name = "rcam1"`` and
        ``summary = "..."`` in the class body.
        """
        super().__init_subclass__(**kwargs)
        if name:
            cls.name = name
        if summary:
            cls.summary = summary

    def __init__(
        self,
        model: Classifier | torch.nn.Module,
        layer: str | None = None,
        fc: str | None = None,
        upsample: str = "bilinear",
        reshape: str | None = None,
        fuse: str = "mean",
    ) -> None:
        if upsample not in UPSAMPLING:
            raise InputError(f"upsample={upsample!r}: use one of {', '.join(UPSAMPLING)}")
        self.reshape = check_reshape(reshape)
        self.fuse = check_fusion(fuse)
        self.classifier = as_classifier(model, fc=fc)
        if isinstance(self.classifier.module, torch.jit.ScriptModule):
            raise ModelError(
                "TorchScript models cannot be hooked for heatmaps; save the model with "
                "torch.save(model) or use its architecture with a state dict instead"
            )
        self.layer = check_layers(layer)
        self.upsample = upsample

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped network."""
        return self.classifier.module

    def default_layer(self, sample: torch.Tensor) -> str:
        """Layer hooked when none is named.

        The model's layer for this method (``Classifier.method_layers``, measured for the
        embedded model), else the one feeding the classifier head.
        """
        return (self.classifier.method_layers.get(self.name)
                or self.classifier.cam_head(sample).feature_layer)

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """Return the raw (N, h, w) map of a forward pass. The one override point."""
        raise NotImplementedError

    def __call__(
        self,
        images: torch.Tensor,
        target: TargetSpec = "top1",
        labels: Sequence[int] | torch.Tensor | None = None,
        upsample_maps: bool = True,
        sources: Sequence[Image.Image] | None = None,
    ) -> HeatmapResult:
        """Compute heatmaps of a batch.

        Rows that share an input image (``topK`` with K > 1, or a :class:`Targets` giving
        several classes per image) share ONE forward pass of that image: the rows are views of
        it, and gradients come from one batched backward pass (see :func:`row_gradients`).

        Args:
            images: (N, C, H, W) float batch, preprocessed for the model.
            target: see :func:`wsolkit.maps.targets.resolve_targets`.
            labels: ground-truth classes for ``target="gt"``.
            upsample_maps: False leaves ``maps`` empty, (M, 0, 0), for callers that only use
                the layer-resolution ``raw`` maps (e.g. scoring every class of an image).
            sources: optional RGB PIL image each input image was preprocessed from (with
                :meth:`~wsolkit.models.Classifier.preprocess`), one per image; used by
                methods that re-read image regions, ignored by the others.

        Returns:
            A :class:`HeatmapResult` with one map per (image, target) pair.
        """
        images = check_images(images).to(self.classifier.device)
        if sources is not None:
            sources = tuple(sources)
            if len(sources) != len(images) or not all(
                    isinstance(s, Image.Image) and s.mode == "RGB" for s in sources):
                raise InputError(f"sources must be {len(images)} RGB PIL images, one per image")
        # the model's preset for this method may itself be several layers
        preset = self.classifier.method_layers.get(self.name)
        layers = self.layer or (check_layers(preset) if preset else None)
        if isinstance(layers, tuple):
            return fuse_layers(self, images, layers, target, labels, upsample_maps,
                               sources)
        # Hooks and gradients need normal tensors, also inside a caller's torch.inference_mode().
        with torch.inference_mode(False), eval_mode(self.module):
            if images.is_inference():
                images = images.clone()
            layer = layers or self.default_layer(images)
            first = self.forward(images, layer, target=target, labels=labels)
            first.sources = sources
            index = first.targets.image_index
            if not torch.equal(index, torch.arange(len(images), device=index.device)):
                first = self._expand(first, images, layer)
            raw = self.layer_map(first).detach().float()
            scores = first.scores().detach()
        maps = (self.to_heatmap(raw, images.shape[-2:]) if upsample_maps
                else raw.new_zeros((len(raw), 0, 0)))
        return HeatmapResult(
            maps=maps,
            raw=raw,
            classes=first.targets.classes,
            scores=scores,
            logits=first.logits.detach(),
            image_index=first.targets.image_index,
            method=self.name,
            layer=layer,
        )

    def _expand(self, first: ForwardPass, images: torch.Tensor, layer: str) -> ForwardPass:
        """One row per target, as views of the distinct images' single forward pass.

        A method that overrides :meth:`forward` (to capture more during it) gets its forward
        pass run again on the repeated images instead, as its extra captures are per row.
        """
        index = first.targets.image_index
        if type(self).forward is not HeatmapMethod.forward:
            expanded = self.forward(images[index], layer, targets=first.targets)
            expanded.sources = first.sources
            return expanded
        device_index = index.to(first.activations.device)
        return ForwardPass(
            images=gather_rows(images, device_index),
            layer=layer,
            activations=gather_rows(first.activations.detach(), device_index),
            logits=gather_rows(first.logits, device_index),
            targets=first.targets,
            distinct=DistinctPass(first.activations, first.logits, index),
            linear_head=self._linear_head(images, layer),
            sources=first.sources,
        )

    def _linear_head(self, images: torch.Tensor, layer: str) -> torch.nn.Linear | None:
        """The pooled linear head if ``layer`` feeds it (gradients then have a closed form)."""
        if not self.needs_gradients:
            return None
        try:
            head = self.classifier.cam_head(images)
            if head.feature_layer != layer:
                return None
            return find_linear(self.module, head.fc_layer)
        except (LayerError, ModelError):  # no detectable head: batched backward passes
            return None

    def forward(
        self,
        images: torch.Tensor,
        layer: str,
        targets: Targets | None = None,
        target: TargetSpec = "top1",
        labels: Sequence[int] | torch.Tensor | None = None,
    ) -> ForwardPass:
        """Run the model once with ``layer`` hooked; resolve ``target`` unless ``targets``."""
        with capture_layer(self.module, layer, self.needs_gradients, self.reshape,
                           tuple(images.shape[-2:])) as capture:
            with torch.no_grad():
                logits = self.module(images)
        if capture.activation is None:
            raise LayerError(f"layer {layer!r} did not run during the forward pass")
        if targets is None:
            targets = resolve_targets(target, logits, labels)
        return ForwardPass(images, layer, capture.activation, logits, targets)

    def to_heatmap(self, raw: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """ReLU (if the method uses it), upsample to ``size`` and min-max normalize per map.

        A constant map becomes all zeros.
        """
        maps = raw.clamp(min=0) if self.relu else raw
        maps = F.interpolate(maps[:, None], size=tuple(size), mode=self.upsample,
                             align_corners=False)[:, 0]
        return normalize_minmax(maps).float()


def check_images(images: object) -> torch.Tensor:
    """Validate an NCHW float batch.

    Raises:
        InputError: wrong type, rank, dtype, empty batch or non-finite values.
    """
    if not isinstance(images, torch.Tensor):
        raise InputError(
            f"images must be an (N, C, H, W) torch.Tensor, got {type(images).__name__}; "
            "use Classifier.preprocess_batch for PIL images"
        )
    if images.ndim != 4 or images.shape[0] == 0:
        raise InputError(
            f"images must be a non-empty (N, C, H, W) batch, got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise InputError(f"images must be floating point, got {images.dtype}")
    if not torch.isfinite(images).all():
        raise InputError("images contain NaN or infinite values")
    return images
