"""Heatmap methods: one registry, one call signature."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wsolkit.maps.base import ForwardPass, HeatmapMethod, HeatmapResult
from wsolkit.maps.registry import METHODS, get_method, method_names, register
from wsolkit.maps.targets import Targets, TargetSpec, resolve_targets
from wsolkit.models.classifier import Classifier


def heatmaps(
    model: Classifier | torch.nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    target: TargetSpec = "top1",
    layer: str | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    **options: object,
) -> HeatmapResult:
    """Compute heatmaps of a batch with a registered method.

    Args:
        model: a :class:`~wsolkit.models.Classifier` (e.g. from :func:`wsolkit.load_model`) or
            any ``nn.Module`` classifier (then name ``layer``, or let the CAM head be detected).
        images: (N, C, H, W) float batch, preprocessed for the model.
        method: a name from :func:`method_names` (``wsolkit methods`` lists them).
        target: ``"top1"``, ``"topK"``, ``"gt"`` (with ``labels``), class index(es), or a
            callable mapping (N, classes) logits to (N,) scores.
        layer: layer to hook, by module name; default: the method's default for the model.
        labels: ground-truth class per image, for ``target="gt"``.
        **options: method options (``fc``, ``upsample``, and e.g. ``samples`` for
            Smooth Grad-CAM++, ``max_channels`` for Score-CAM).

    Returns:
        A :class:`HeatmapResult`; ``maps`` is (N, H, W) float32 in [0, 1].
    """
    return get_method(method)(model, layer=layer, **options)(images, target=target, labels=labels)


__all__ = [
    "METHODS",
    "ForwardPass",
    "HeatmapMethod",
    "HeatmapResult",
    "Targets",
    "get_method",
    "heatmaps",
    "method_names",
    "register",
    "resolve_targets",
]
