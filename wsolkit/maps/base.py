"""`HeatmapMethod`: the shared machinery of every heatmap method.

A method overrides one thing, :meth:`HeatmapMethod.layer_map`, which turns a forward pass (the
hooked layer's activations, the logits, the targets, and on demand the gradients) into a raw
map at layer resolution. The base runs the forward pass with hooks, resolves targets, applies
ReLU, upsamples to the input size and normalizes to [0, 1].
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from wsolkit.errors import InputError, LayerError, ModelError
from wsolkit.maps.hooks import capture_layer, eval_mode
from wsolkit.maps.targets import Targets, TargetSpec, resolve_targets
from wsolkit.models.classifier import Classifier, as_classifier

UPSAMPLING = ("bilinear", "bicubic")


@dataclass
class ForwardPass:
    """One forward pass of a batch through the classifier, with the hooked layer's output.

    Attributes:
        images: (N, C, H, W) input batch.
        layer: name of the hooked layer.
        activations: (N, K, h, w) output of the hooked layer.
        logits: (N, classes) model output.
        targets: the (image, class) pair each row explains.
    """

    images: torch.Tensor
    layer: str
    activations: torch.Tensor
    logits: torch.Tensor
    targets: Targets

    def scores(self) -> torch.Tensor:
        """(N,) target scores; carries the autograd graph back to the hooked layer if any."""
        return self.targets.scores(self.logits)

    def gradients(self) -> torch.Tensor:
        """(N, K, h, w) gradient of each image's target score w.r.t. the hooked activations."""
        if not self.activations.requires_grad:
            raise RuntimeError("this method must set needs_gradients = True")
        # The score is computed here, after the forward pass: record its graph even when the
        # caller runs the method under torch.no_grad().
        with torch.enable_grad():
            (grads,) = torch.autograd.grad(self.scores().sum(), self.activations)
        return grads


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
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False
    relu: ClassVar[bool] = True

    def __new__(cls, *args: object, **options: object) -> HeatmapMethod:
        """Check the keyword options first, so a bad one is a one-line :class:`InputError`."""
        cls.check_options(options)
        return super().__new__(cls)

    @classmethod
    def option_defaults(cls) -> dict[str, object]:
        """Keyword options of the constructor (``layer``, ``fc``, ...) and their defaults."""
        found: dict[str, object] = {}
        for klass in cls.__mro__:
            if "__init__" not in vars(klass) or klass is object:
                continue
            parameters = list(inspect.signature(vars(klass)["__init__"]).parameters.values())
            for parameter in parameters[1:]:  # skip self
                if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD):
                    found.setdefault(parameter.name, parameter.default)
            if not any(p.kind is p.VAR_KEYWORD for p in parameters):
                break
        found.pop("model", None)
        return found

    @classmethod
    def check_options(cls, options: dict[str, object]) -> None:
        """Raise :class:`InputError` for an option the method does not take or of a wrong type.

        A value must be a number where the default is a number, and a bool where it is a bool.
        """
        defaults = cls.option_defaults()
        for key, value in options.items():
            if key not in defaults:
                raise InputError(f"option {key!r} is unknown to {cls.name or cls.__name__}; "
                                 f"it takes {', '.join(sorted(defaults))}")
            default = defaults[key]
            if isinstance(default, bool):
                wanted, ok = "true or false", isinstance(value, bool)
            elif isinstance(default, int):
                wanted = "an integer"
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                wanted = "a number"
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            else:
                continue
            if not ok:
                raise InputError(f"option {key}={value!r} of {cls.name or cls.__name__}: "
                                 f"expected {wanted}")

    def __init__(
        self,
        model: Classifier | torch.nn.Module,
        layer: str | None = None,
        fc: str | None = None,
        upsample: str = "bilinear",
    ) -> None:
        if upsample not in UPSAMPLING:
            raise InputError(f"upsample={upsample!r}: use one of {', '.join(UPSAMPLING)}")
        self.classifier = as_classifier(model, fc=fc)
        if isinstance(self.classifier.module, torch.jit.ScriptModule):
            raise ModelError(
                "TorchScript models cannot be hooked for heatmaps; save the model with "
                "torch.save(model) or use its architecture with a state dict instead"
            )
        self.layer = layer
        self.upsample = upsample

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped network."""
        return self.classifier.module

    def default_layer(self, sample: torch.Tensor) -> str:
        """Layer hooked when none is named: the one feeding the classifier head."""
        return self.classifier.cam_head(sample).feature_layer

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """Return the raw (N, h, w) map of a forward pass. The one override point."""
        raise NotImplementedError

    def __call__(
        self,
        images: torch.Tensor,
        target: TargetSpec = "top1",
        labels: Sequence[int] | torch.Tensor | None = None,
    ) -> HeatmapResult:
        """Compute heatmaps of a batch.

        Args:
            images: (N, C, H, W) float batch, preprocessed for the model.
            target: see :func:`wsolkit.maps.targets.resolve_targets`.
            labels: ground-truth classes for ``target="gt"``.

        Returns:
            A :class:`HeatmapResult` with one map per (image, target) pair.
        """
        images = check_images(images).to(self.classifier.device)
        # Hooks and gradients need normal tensors, also inside a caller's torch.inference_mode().
        with torch.inference_mode(False), eval_mode(self.module):
            if images.is_inference():
                images = images.clone()
            layer = self.layer or self.default_layer(images)
            first = self.forward(images, layer, target=target, labels=labels)
            if first.targets.expanded:
                first = self.forward(images[first.targets.image_index], layer, first.targets)
            raw = self.layer_map(first).detach().float()
            scores = first.scores().detach()
        return HeatmapResult(
            maps=self.to_heatmap(raw, images.shape[-2:]),
            raw=raw,
            classes=first.targets.classes,
            scores=scores,
            logits=first.logits.detach(),
            image_index=first.targets.image_index,
            method=self.name,
            layer=layer,
        )

    def forward(
        self,
        images: torch.Tensor,
        layer: str,
        targets: Targets | None = None,
        target: TargetSpec = "top1",
        labels: Sequence[int] | torch.Tensor | None = None,
    ) -> ForwardPass:
        """Run the model once with ``layer`` hooked; resolve ``target`` unless ``targets``."""
        with capture_layer(self.module, layer, self.needs_gradients) as capture:
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
        low = maps.amin(dim=(1, 2), keepdim=True)
        span = maps.amax(dim=(1, 2), keepdim=True) - low
        safe = torch.where(span > 0, span, torch.ones_like(span))
        return torch.where(span > 0, (maps - low) / safe, torch.zeros_like(maps)).float()


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
