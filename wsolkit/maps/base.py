"""`HeatmapMethod`: the shared machinery of every heatmap method.

A method overrides one thing, :meth:`HeatmapMethod.layer_map`, which turns a forward pass (the
hooked layer's activations, the logits, the targets, and on demand the gradients) into a raw
map at layer resolution. The base runs the forward pass with hooks, resolves targets, applies
ReLU, upsamples to the input size and normalizes to [0, 1].
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from PIL import Image

from wsolkit.checks import normalize_minmax
from wsolkit.errors import InputError, LayerError, ModelError
from wsolkit.maps.fusion import check_fusion, check_layers, fuse_layers
from wsolkit.maps.hooks import capture_layer, eval_mode
from wsolkit.maps.targets import Targets, TargetSpec, resolve_targets
from wsolkit.maps.tokens import check_reshape
from wsolkit.models.classifier import Classifier, as_classifier
from wsolkit.models.layers import find_linear

UPSAMPLING = ("bilinear", "bicubic")


# Elements of one chunk of batched gradients (rows x distinct images x K x h x w): bounds the
# memory of expanded targets (256 MB of float32).
GRADIENT_CHUNK_ELEMENTS = 1 << 26


@dataclass
class DistinctPass:
    """The one forward pass of the distinct input images behind an expanded :class:`ForwardPass`.

    Attributes:
        activations: (U, K, h, w) hooked output per distinct image (the autograd leaf when the
            method needs gradients).
        logits: (U, classes) logits per distinct image (with the graph back to the leaf).
        image_index: (N,) distinct image of each row.
    """

    activations: torch.Tensor
    logits: torch.Tensor
    image_index: torch.Tensor


@dataclass
class ForwardPass:
    """One forward pass of a batch through the classifier, with the hooked layer's output.

    Attributes:
        images: (N, C, H, W) input batch, one image per row (target).
        layer: name of the hooked layer.
        activations: (N, K, h, w) output of the hooked layer.
        logits: (N, classes) model output.
        targets: the (image, class) pair each row explains.
        linear_head: the pooled linear head (global average pool + ``nn.Linear``) when the
            hooked layer feeds it: the gradient of a logit is then its weight row / (h*w) at
            every location, which :meth:`gradients` uses for many rows of one image after
            checking it against autograd (:func:`linear_head_gradients`).
        sources: the RGB PIL images the distinct input images were preprocessed from, when the
            caller gave them (index with ``targets.image_index``); methods that re-read image
            regions (``beam``) crop them instead of the input tensor.
        distinct: set when rows share input images (expanded targets such as top-k or every
            class of an image): the single forward pass of the distinct images the rows are
            views of. Then ``images``, ``activations`` and ``logits`` are gathered from it
            (zero-copy views when all rows share one image) and :meth:`gradients` and
            :meth:`weighted_sum` work on the distinct images.
    """

    images: torch.Tensor
    layer: str
    activations: torch.Tensor
    logits: torch.Tensor
    targets: Targets
    distinct: DistinctPass | None = None
    linear_head: torch.nn.Linear | None = None
    sources: tuple[Image.Image, ...] | None = None

    def scores(self) -> torch.Tensor:
        """(N,) target scores; carries the autograd graph back to the hooked layer if any."""
        return self.targets.scores(self.logits)

    def gradients(self) -> torch.Tensor:
        """(N, K, h, w) gradient of each row's target score w.r.t. the hooked activations."""
        leaf = self.activations if self.distinct is None else self.distinct.activations
        if not leaf.requires_grad:
            raise RuntimeError("this method must set needs_gradients = True")
        # The score is computed here, after the forward pass: record its graph even when the
        # caller runs the method under torch.no_grad().
        with torch.enable_grad():
            if self.distinct is None:  # one image per row: one backward of the summed scores
                (grads,) = torch.autograd.grad(self.scores().sum(), self.activations)
                return grads
            index = self.distinct.image_index.to(leaf.device)
            logits = self.distinct.logits
            if self.targets.score_fn is None:
                # every (image, class) logit as one flat vector: a row's output gradient is
                # one-hot at its position, and the backward stays (U, classes) wide
                classes = self.targets.classes.to(logits.device)
                if self.linear_head is not None:
                    found = linear_head_gradients(self.linear_head, logits, leaf, classes)
                    if found is not None:
                        return found
                positions = index.to(logits.device) * logits.shape[1] + classes
                return row_gradients(logits.reshape(-1), leaf, index, positions)
            scores = self.targets.scores(_gather_rows(logits, index.to(logits.device)))
            return row_gradients(scores, leaf, index)

    def gradient_means(self) -> torch.Tensor:
        """(N, K) spatial mean of :meth:`gradients` (Grad-CAM's channel weights)."""
        grads = self.gradients()
        if grads.stride(2) == 0 and grads.stride(3) == 0:  # spatially constant: any location
            return grads[:, :, 0, 0]
        return grads.mean(dim=(2, 3))

    def weighted_sum(self, weights: torch.Tensor) -> torch.Tensor:
        """``sum_k weights[n, k] * activations[n, k]`` -> (N, h, w), activations detached.

        With shared images, one matrix product per distinct image (no (N, K, h, w) copy).
        """
        if self.distinct is None:
            return weighted_sum(weights, self.activations.detach())
        features = self.distinct.activations.detach()
        _, channels, height, width = features.shape
        index = self.distinct.image_index.to(features.device)
        out = weights.new_empty((len(index), height, width))
        for image in torch.unique(index).tolist():
            rows = (index == image).nonzero().flatten()
            product = weights[rows].to(features) @ features[image].reshape(channels, -1)
            out[rows] = product.reshape(-1, height, width).to(out)
        return out


def weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """``sum_k w[n, k] A[n, k]`` -> (N, h, w)."""
    return torch.einsum("nk,nkhw->nhw", weights, activations)


def linear_head_gradients(fc: torch.nn.Linear, logits: torch.Tensor, leaf: torch.Tensor,
                          classes: torch.Tensor) -> torch.Tensor | None:
    """Gradients of the ``classes`` logits w.r.t. the layer feeding a pooled linear head.

    When ``logits = fc(mean_hw(leaf))`` the gradient of logit ``c`` is ``fc.weight[c] / (h*w)``
    at every location of every image: the (N, K, h, w) result is an expanded view of N weight
    rows (no memory, no backward per class). That the network is such a head is checked, not
    assumed: one backward pass of a random combination of every logit must match the same
    combination of the weight rows (a different Jacobian passes with probability 0), else
    None (the caller takes the batched backward passes).

    Args:
        fc: the head's linear layer.
        logits: (U, classes) logits of the distinct images, with the graph back to ``leaf``.
        leaf: (U, K, h, w) hooked activations.
        classes: (N,) class of each row.
    """
    _, channels, height, width = leaf.shape
    if fc.in_features != channels or fc.out_features != logits.shape[1]:
        return None
    weights = fc.weight.detach().to(leaf) / (height * width)
    mix = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    mix = mix.to(logits)
    (actual,) = torch.autograd.grad(logits, leaf, grad_outputs=mix, retain_graph=True)
    expected = (mix.to(weights) @ weights)[:, :, None, None]
    scale = float(expected.abs().max())
    if not torch.allclose(actual, expected.expand_as(actual), rtol=1e-3, atol=1e-4 * scale):
        return None
    rows = weights[classes.to(weights.device)]
    return rows[:, :, None, None].expand(len(classes), channels, height, width)


def _gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]``; a zero-copy view when every row is the same one."""
    if len(values) == 1:
        return values.expand(len(index), *values.shape[1:])
    return values[index]


def row_gradients(scores: torch.Tensor, leaf: torch.Tensor, index: torch.Tensor,
                  positions: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of each row's score w.r.t. ``leaf[index[n]]``, from one shared forward pass.

    Batched backward passes (``is_grads_batched``: one one-hot output gradient per row,
    chunked to bound memory); when vmap cannot batch an operation of the network, one
    backward per row.

    Args:
        scores: (S,) scores with the graph back to ``leaf``.
        leaf: (U, K, h, w) hooked activations of the distinct images.
        index: (N,) distinct image of each row.
        positions: (N,) the score of each row (default: row ``n`` is ``scores[n]``).

    Returns:
        (N, K, h, w) gradients.
    """
    count = len(index)
    positions = torch.arange(count) if positions is None else positions
    chunk = max(1, GRADIENT_CHUNK_ELEMENTS // max(1, leaf.numel()))
    if count <= chunk and len(leaf) == 1:  # one batched backward gives the answer as a view
        try:
            return _batched_gradients(scores, leaf, positions)[:, 0]
        except (RuntimeError, NotImplementedError):
            pass
    out = torch.empty((count, *leaf.shape[1:]), dtype=leaf.dtype, device=leaf.device)
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        try:
            grads = _batched_gradients(scores, leaf, positions[start:stop])
        except (RuntimeError, NotImplementedError):  # vmap has no batching rule for an op
            for row in range(start, stop):
                (grads,) = torch.autograd.grad(scores[int(positions[row])], leaf,
                                               retain_graph=True)
                out[row] = grads[index[row]]
            continue
        if len(leaf) == 1:  # one image: a view, no gather
            out[start:stop] = grads[:, 0]
        else:
            out[start:stop] = grads[torch.arange(stop - start), index[start:stop]]
    return out


def _batched_gradients(scores: torch.Tensor, leaf: torch.Tensor,
                       positions: torch.Tensor) -> torch.Tensor:
    """(len(positions), U, K, h, w): one batched backward, one-hot at each position."""
    one_hot = torch.zeros((len(positions), len(scores)), dtype=scores.dtype,
                          device=scores.device)
    one_hot[torch.arange(len(positions)), positions.to(scores.device)] = 1
    with warnings.catch_warnings():  # vmap's "performance drop" notes for unbatched ops
        warnings.simplefilter("ignore", UserWarning)
        (grads,) = torch.autograd.grad(scores, leaf, grad_outputs=one_hot, retain_graph=True,
                                       is_grads_batched=True)
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
            expanded = self.forward(images[index], layer, first.targets)
            expanded.sources = first.sources
            return expanded
        device_index = index.to(first.activations.device)
        return ForwardPass(
            images=_gather_rows(images, device_index),
            layer=layer,
            activations=_gather_rows(first.activations.detach(), device_index),
            logits=_gather_rows(first.logits, device_index),
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
