"""Layer fusion: one heatmap method run at several layers, its maps resized and combined.

Deep layers give coarse maps that cover the object; shallow layers give sharp maps of its
parts and edges. Fusion runs the method once per layer (each run is the method's own, so
every method fuses, gradient-based or not), brings every raw map to the finest of their
resolutions (bilinear), normalizes each to [0, 1] (after the method's ReLU) so that no layer
dominates by its scale, and combines them by their mean (default) or maximum.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from wsolkit.checks import normalize_minmax
from wsolkit.errors import InputError
from wsolkit.maps.targets import TargetSpec

if TYPE_CHECKING:
    from wsolkit.maps.base import HeatmapMethod, HeatmapResult

FUSIONS = ("mean", "max")


def check_fusion(fuse: object) -> str:
    """Validate the ``fuse`` option.

    Raises:
        InputError: naming the value and the accepted ones.
    """
    if fuse not in FUSIONS:
        raise InputError(f"fuse={fuse!r}: use one of {', '.join(FUSIONS)}")
    return str(fuse)


def check_layers(layer: object) -> str | tuple[str, ...] | None:
    """One layer name, or several (a sequence or names joined by commas) as a tuple.

    Raises:
        InputError: not a name, or an empty name among several.
    """
    if layer is None:
        return None
    names = layer.split(",") if isinstance(layer, str) else layer
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        names = [n.strip() for n in names]
        if names and all(names):
            return names[0] if len(names) == 1 else tuple(names)
    raise InputError(f"layer={layer!r}: give a layer name, or several as a list or joined by "
                     "commas")


def fuse_maps(raws: Sequence[torch.Tensor], relu: bool, fuse: str = "mean") -> torch.Tensor:
    """Combine (N, h_i, w_i) raw maps of several layers into one (N, h, w) map.

    Each map gets the ReLU (if ``relu``), is resized (bilinear) to the largest h x w among them
    and min-max normalized per map (a constant map becomes zeros); then their mean or maximum.
    """
    size = max((tuple(raw.shape[-2:]) for raw in raws), key=lambda hw: hw[0] * hw[1])
    scaled = []
    for raw in raws:
        maps = raw.clamp(min=0) if relu else raw
        if tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps[:, None].float(), size=size, mode="bilinear",
                                 align_corners=False)[:, 0]
        scaled.append(normalize_minmax(maps))
    stacked = torch.stack(scaled)
    return stacked.mean(dim=0) if fuse == "mean" else stacked.amax(dim=0)


def fuse_layers(method: HeatmapMethod, images: torch.Tensor, layers: tuple[str, ...],
                target: TargetSpec, labels: object, upsample_maps: bool,
                sources: object = None) -> HeatmapResult:
    """Run ``method`` at each of ``layers`` and fuse the maps.

    Returns:
        A :class:`~wsolkit.maps.base.HeatmapResult` whose ``raw`` is the fused map at the
        finest layer's resolution (each layer's map already ReLU'd and normalized, see
        :func:`fuse_maps`) and whose ``layer`` is the layer names joined by commas.
    """
    from wsolkit.maps.base import HeatmapResult

    results = []
    for name in layers:
        single = copy.copy(method)
        single.layer = name
        results.append(single(images, target=target, labels=labels, upsample_maps=False,
                              sources=sources))
    first = results[0]
    raw = fuse_maps([result.raw for result in results], method.relu, method.fuse)
    maps = (method.to_heatmap(raw, images.shape[-2:]) if upsample_maps
            else raw.new_zeros((len(raw), 0, 0)))
    return HeatmapResult(
        maps=maps,
        raw=raw,
        classes=first.classes,
        scores=first.scores,
        logits=first.logits,
        image_index=first.image_index,
        method=method.name,
        layer=",".join(layers),
    )
