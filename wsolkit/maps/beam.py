"""Beam search over sub-grids of the last feature map (Bency et al., ECCV 2016, sec. 3.3-3.4).

A localization candidate is a sub-grid ``(x, y, w, h)`` (in cells) of the ``L x L`` grid of the
layer feeding the classifier head. Its feature maps are cropped to the sub-grid, bilinearly
resized back to ``L x L`` and passed through the rest of the network to score the target class:
either a head on the globally pooled map (global average pool + linear, or any module taking
the pooled features) or, as the paper's AlexNet / VGG-16, fully connected layers on the
flattened ``L x L x T`` map (positionally sensitive). The head is found by checking which
module reproduces the model's logits from the layer's output, pooled or flattened. The children
of a node are the sub-grids inside it that are one cell narrower *or* one cell shorter (not
both), eq. 6; the root is the whole grid. Only children of the root are scored on one feature
map (the paper limits candidates to ``L - 1 <= w, h <= L`` against interpolation artifacts);
the kept candidates are back-projected to image regions (eq. 5) and each region is re-encoded,
so the next level's children refine inside it (iterative refinement). The region is cut from
the source image the input was preprocessed from, when the caller gives it (``crop_from=
"image"``, as the paper crops the test image), else from the input tensor.

Beam search keeps the ``beam_width`` (M) best candidates per level over ``levels`` (H) levels:
M = 4, H = 10 by default (``preset="default"``), the paper's M = 8, H = 10 with
``preset="paper"`` (:data:`PRESETS`; docs/beam.md: M = 4 takes 0.6-0.7x the time for 0.7
points of MaxBoxAccV2 on imagenet-dev). Per level, the children of every beam of every image go
through the head in one batched pass, and the kept crops through the network up to the feature
layer in batched passes (chunks of ``batch_size``, split over one-thread workers on a CPU); all
under ``torch.inference_mode()``. With a pooled head the bilinear resize being linear, a child's
pooled resized crop is computed directly as a weighted sum of its cells
(:func:`crop_resize_pooled`, equal to pooling :func:`crop_resize`). Candidates of one image
that back-project to the same image region (reached through different parents) are merged,
keeping the best score, so the beam holds distinct regions. The heatmap sums the image regions
of the kept candidates of every level, each weighted by its score (the class probability by
default, as with the paper's softmax outputs); it is computed at the input size, so ``raw`` is
(N, H, W).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from wsolkit.checks import check_integer
from wsolkit.errors import InputError, LayerError, ModelError
from wsolkit.maps.base import ForwardPass, HeatmapMethod
from wsolkit.maps.hooks import run_to_layer
from wsolkit.maps.subgrids import (
    GridBox,
    crop_images,
    crop_resize,
    crop_resize_pooled,
    grid_children,
    project,
    region_heat,
    resize_matrix,
    select_beams,
)
from wsolkit.maps.targets import Targets
from wsolkit.models.classifier import Classifier
from wsolkit.models.layers import get_layer, probe_modules
from wsolkit.models.parallel import split_inference

SCORES = ("probability", "logit")
CROP_SOURCES = ("image", "tensor")
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
PRESETS: dict[str, dict[str, int]] = {
    "default": {"beam_width": 4, "levels": 10},
    "paper": {"beam_width": 8, "levels": 10},
}
"""Named search sizes (method option ``preset``): ``paper`` is Bency et al.'s M = 8, H = 10;
``default`` halves the beam (M = 4): 36 crops re-encoded per image-class instead of 68, 0.6-0.7x
the time on two CPU cores, for 0.7 points of MaxBoxAccV2 on imagenet-dev (docs/beam.md). Both
crop the source image and score by class probability, as the paper."""


@dataclass
class BeamLevel:
    """The candidates kept at one level of the search.

    Attributes:
        regions: (B, 4) ``x0, y0, x1, y1`` in input pixels.
        scores: (B,) target score of each candidate (on its parent's feature map).
        rows: (B,) the (image, target) row each candidate belongs to, best first per row.
    """

    regions: torch.Tensor
    scores: torch.Tensor
    rows: torch.Tensor


@dataclass
class _Network:
    """The two halves of the classifier around the feature layer."""

    backbone: Callable[[torch.Tensor], torch.Tensor]  # images -> (N, K, h, w) features
    head: Callable[[torch.Tensor], torch.Tensor]  # pooled (N, K) or flat (N, K*h*w) -> logits
    pooled: bool  # the head takes the globally average-pooled map, else the flattened one

    def child_logits(self, features: torch.Tensor, children: list[GridBox]) -> torch.Tensor:
        """(B * C, classes) logits of the C children of each of B feature maps."""
        if self.pooled:
            return self.head(crop_resize_pooled(features, children))
        return self.head(crop_resize(features, children).flatten(1))


def find_head(features: torch.Tensor, logits: torch.Tensor,
              candidates: Sequence[tuple[str, nn.Module]]) -> tuple[str, nn.Module, bool]:
    """The first candidate module that maps the layer's output to the model's logits.

    Each candidate is tried on the globally average-pooled features ``(N, K)``, then on the
    flattened features ``(N, K * h * w)``; it is the head if its output equals ``logits`` (up
    to float rounding). Call it in eval mode (dropout off).

    Args:
        features: (N, K, h, w) output of the feature layer.
        logits: (N, classes) the model's output for the same images.
        candidates: ``(name, module)`` pairs, in the order to try.

    Returns:
        ``(name, module, pooled)``.

    Raises:
        LayerError: no candidate reproduces the logits.
    """
    features, logits = features.detach().float(), logits.detach().float()
    tolerance = 1e-3 * (1.0 + float(logits.abs().max()))
    for name, module in candidates:
        for pooled in (True, False):
            inputs = features.mean(dim=(2, 3)) if pooled else features.flatten(1)
            try:
                with torch.inference_mode():
                    out = module(inputs)
            except (RuntimeError, ValueError, TypeError, IndexError):  # wrong input shape
                continue
            if (isinstance(out, torch.Tensor) and out.shape == logits.shape
                    and torch.allclose(out.float(), logits, rtol=1e-3, atol=tolerance)):
                return name, module, pooled
    names = ", ".join(repr(n) for n, _ in candidates)
    raise LayerError(
        f"beam: the layer does not feed the classifier head: none of {names} gives the "
        "model's logits from its output, globally pooled or flattened; name the layer feeding "
        "the head (layer=...) and the head module (head=...)"
    )


class BeamSearch(HeatmapMethod):
    """Beam-search localization over feature sub-grids with iterative crop refinement.

    Args:
        model: a :class:`~wsolkit.models.Classifier` or a bare ``nn.Module``.
        layer: the layer feeding the classifier head (default: the CAM head's feature layer,
            or, for a model without a global-pool + linear head such as torchvision's VGG-16,
            the last top-level module with a spatial output, e.g. ``avgpool``).
        fc: name of the linear layer of a global-pool + linear head (detected when omitted).
        upsample: unused by the search (the map is made at the input size); kept for the
            common signature.
        beam_width: M, candidates kept per level (default: the preset's, 4; paper 8).
        levels: H, levels of the search tree (default: the preset's, 10).
        score: ``"probability"`` (of the candidate's logits: softmax, sigmoid for a multi-label
            model; default) or ``"logit"``.
        batch_size: crops per backbone pass (default 8: on a CPU, larger passes overflow the
            caches and cost up to twice as much per crop).
        head: the module after the feature layer that scores a (pooled or flattened) map: a
            submodule name or an ``nn.Module``; default: the first top-level module, last
            first, that reproduces the model's logits (:func:`find_head`).
        crop_from: ``"image"`` (default): deeper levels re-encode regions cut from the source
            images the caller gives (``sources=``; the paper's crop of the test image), and
            from the input tensor without them; ``"tensor"``: always from the input tensor.
        precision: ``"float32"`` (default) or ``"bfloat16"`` / ``"float16"``: the crops'
            backbone passes (most of the cost) run under ``torch.autocast`` in that type;
            the first forward pass and the head stay in float32. Faster where the hardware
            has such units (GPUs; CPUs with AMX or AVX-512 BF16), at a small change of the scores
            (docs/beam.md).
        preset: ``"default"`` (M = 4, H = 10) or ``"paper"`` (Bency et al.'s M = 8, H = 10);
            ``beam_width`` / ``levels`` given explicitly override it (:data:`PRESETS`).
    """

    name = "beam"
    uses_sources = True
    summary = "beam search over feature sub-grids with crop refinement (Bency et al. 2016)"
    relu = True
    maps_detected_classes_only = True

    def __init__(
        self,
        model: Classifier | nn.Module,
        layer: str | None = None,
        fc: str | None = None,
        upsample: str = "bilinear",
        beam_width: int | None = None,
        levels: int | None = None,
        score: str = "probability",
        batch_size: int = 8,
        head: str | nn.Module | None = None,
        crop_from: str = "image",
        precision: str = "float32",
        preset: str = "default",
    ) -> None:
        super().__init__(model, layer=layer, fc=fc, upsample=upsample)
        if not isinstance(preset, str) or preset not in PRESETS:
            raise InputError(f"beam: preset={preset!r}: use one of {', '.join(PRESETS)}")
        beam_width = PRESETS[preset]["beam_width"] if beam_width is None else beam_width
        levels = PRESETS[preset]["levels"] if levels is None else levels
        beam_width = check_integer(beam_width, "beam: beam_width", 1)
        levels = check_integer(levels, "beam: levels", 1)
        batch_size = check_integer(batch_size, "beam: batch_size", 1)
        for name, value, allowed in (("score", score, SCORES),
                                     ("crop_from", crop_from, CROP_SOURCES),
                                     ("precision", precision, tuple(PRECISIONS))):
            if value not in allowed:
                raise InputError(f"beam: {name}={value!r}: use one of {', '.join(allowed)}")
        if head is not None and not isinstance(head, str | nn.Module):
            raise InputError(f"beam: head must be a module name or an nn.Module, got {head!r}")
        self.beam_width = beam_width
        self.levels = levels
        self.score = score
        self.batch_size = batch_size
        self.head = head
        self.crop_from = crop_from
        self.precision = precision
        self.preset = preset
        self.last_trace: list[BeamLevel] = []

    # ------------------------------------------------------------------ the override point

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """Run the beam search from the hooked features; sum-pool the kept regions."""
        sources = None
        if self.crop_from == "image" and forward.sources is not None:
            sources = [forward.sources[i] for i in forward.targets.image_index.tolist()]
        with torch.inference_mode(), run_to_layer(self.module, forward.layer) as to_layer:
            network = self._network(forward, to_layer)
            trace = self.search(forward.images, forward.activations, forward.targets, network,
                                sources)
            count = forward.images.shape[0]
            size = tuple(forward.images.shape[-2:])
            regions = torch.cat([level.regions for level in trace])
            scores = torch.cat([level.scores for level in trace])
            rows = torch.cat([level.rows for level in trace])
            heat = region_heat(regions, scores, rows, count, size)
        self.last_trace = trace
        return heat.clone()  # a normal tensor again, outside inference mode

    def default_layer(self, sample: torch.Tensor) -> str:
        """The CAM head's feature layer; without one, the last top-level spatial output."""
        try:
            return super().default_layer(sample)
        except ModelError as error:  # e.g. VGG / AlexNet: flatten + fully connected layers
            spatial = _last_spatial_child(self.module, sample[:1])
            if spatial is None:
                raise LayerError(f"beam: {error}; name the layer feeding the head") from None
            return spatial

    # ---------------------------------------------------------------------------- search

    def search(self, images: torch.Tensor, features: torch.Tensor, targets: Targets,
               network: _Network, sources: Sequence[Image.Image] | None = None
               ) -> list[BeamLevel]:
        """The beam search of every (image, target) row; one :class:`BeamLevel` per level.

        Args:
            images: (N, C, H, W), one image per row.
            features: (N, K, h, w) features of ``images`` at the feature layer.
            targets: one target per row.
            network: backbone (images -> features) and head.
            sources: optional source image of each row (deeper levels crop it).
        """
        count, _, height, width = images.shape
        grid_h, grid_w = features.shape[-2:]
        children = grid_children((0, 0, grid_w, grid_h))
        if not children:
            raise LayerError("beam: the feature grid is 1x1; there is no sub-grid to search")
        # each child as a fraction of its parent's region: x0, y0, x1, y1
        fractions = torch.tensor(
            [[x / grid_w, y / grid_h, (x + w) / grid_w, (y + h) / grid_h]
             for x, y, w, h in children], dtype=torch.float64)
        regions = torch.tensor([[0.0, 0.0, width, height]], dtype=torch.float64).repeat(count, 1)
        rows = torch.arange(count)
        scale = torch.tensor([width, height, width, height], dtype=torch.float64)
        trace: list[BeamLevel] = []
        for level in range(self.levels):
            logits = network.child_logits(features, children)
            child_rows = rows.repeat_interleave(len(children))
            scores = self._scores(logits, targets, child_rows).detach().double().cpu()
            child_regions = project(regions, fractions)
            keep = select_beams(child_regions / scale, scores, child_rows, self.beam_width)
            regions, rows = child_regions[keep], child_rows[keep]
            trace.append(BeamLevel(regions.float(), scores[keep].float(), rows))
            if level + 1 < self.levels:
                features = self._encode(network, images, rows, regions, sources)
        return trace

    def _encode(self, network: _Network, images: torch.Tensor, rows: torch.Tensor,
                regions: torch.Tensor, sources: Sequence[Image.Image] | None) -> torch.Tensor:
        """Features of the crops, ``batch_size`` crops per backbone pass."""
        parts = []
        for start in range(0, len(rows), self.batch_size):
            chunk_rows = rows[start:start + self.batch_size]
            chunk_regions = regions[start:start + self.batch_size]
            if sources is None:
                index = chunk_rows.to(images.device)
                crops = crop_images(images[index], chunk_regions)
            else:
                crops = self._source_crops(images.shape[-2:], sources, chunk_rows,
                                           chunk_regions).to(images)
            parts.append(network.backbone(crops.contiguous(memory_format=torch.channels_last)))
        return torch.cat(parts).contiguous()

    def _source_crops(self, size: Sequence[int], sources: Sequence[Image.Image],
                      rows: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Regions (input pixels) cut from the source images, preprocessed at the input size."""
        height, width = int(size[0]), int(size[1])
        pixels = []
        for row, region in zip(rows.tolist(), regions.tolist(), strict=True):
            source = sources[row]
            sx, sy = source.width / width, source.height / height
            box = (region[0] * sx, region[1] * sy, region[2] * sx, region[3] * sy)
            pixels.append(self.classifier.resize_region(source, box, (height, width)))
        return self.classifier.normalize(np.stack(pixels))

    def _scores(self, logits: torch.Tensor, targets: Targets, rows: torch.Tensor) -> torch.Tensor:
        if targets.score_fn is not None:
            return Targets(torch.full((len(rows),), -1), rows, targets.score_fn).scores(logits)
        classes = targets.classes[rows].to(logits.device)[:, None]
        values = (self.classifier.probabilities(logits) if self.score == "probability"
                  else logits)
        return values.gather(1, classes)[:, 0]

    # --------------------------------------------------------------------------- network

    def _network(self, forward: ForwardPass,
                 to_layer: Callable[[torch.Tensor], torch.Tensor]) -> _Network:
        """Backbone (``to_layer``: images -> features) and head around the hooked layer."""
        head, pooled = self._head(forward)
        backbone = to_layer
        dtype = PRECISIONS[self.precision]
        if dtype is not None:
            backbone = functools.partial(_autocast, to_layer, dtype)
        # the stop-at-layer hook keeps no state, so the crops can be split over workers
        return _Network(backbone=functools.partial(split_inference, backbone), head=head,
                        pooled=pooled)

    def _head(self, forward: ForwardPass) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
        """The head after the hooked layer and whether it takes the pooled map (:func:`find_head`).

        Candidates: the ``head`` option; else the CAM head's linear layer, then the model's
        top-level modules, last first (``fc`` of ResNet / EfficientNet, also a fine-tuned
        adaptation head; ``classifier`` of VGG / AlexNet).
        """
        module = self.module
        if isinstance(self.head, nn.Module):
            candidates = [("head", self.head)]
        elif isinstance(self.head, str):
            candidates = [(self.head, get_layer(module, self.head))]
        else:
            candidates = []
            fc = self.classifier.fc_layer
            if fc is not None:
                candidates.append((fc, get_layer(module, fc)))
            candidates += [(n, m) for n, m in reversed(list(module.named_children()))]
        _, head, pooled = find_head(forward.activations, forward.logits, candidates)
        return head, pooled


def _autocast(fn: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype,
              images: torch.Tensor) -> torch.Tensor:
    """``fn(images)`` under ``torch.autocast`` in ``dtype``, returned as float32.

    Entered inside the call, not around it: autocast is thread-local and
    :func:`~wsolkit.models.parallel.split_inference` runs ``fn`` in worker threads.
    """
    with torch.autocast(device_type=images.device.type, dtype=dtype):
        return fn(images).float()


def _last_spatial_child(module: nn.Module, sample: torch.Tensor) -> str | None:
    """Name of the last top-level submodule (in run order) whose output is an (N, K, h, w) map."""
    probe = probe_modules(module, sample)
    found = [name for name in probe.order if "." not in name
             and len(probe.shapes[name]) == 4 and probe.shapes[name][-2:].numel() > 1]
    return found[-1] if found else None


__all__ = [
    "BeamLevel",
    "BeamSearch",
    "PRESETS",
    "find_head",
    "crop_images",
    "crop_resize",
    "crop_resize_pooled",
    "grid_children",
    "region_heat",
    "resize_matrix",
]
