"""Heatmap methods: one registry, one call signature."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image

from wsolkit.maps.base import ForwardPass, HeatmapMethod, HeatmapResult
from wsolkit.maps.registry import METHODS, get_method, make_method, method_names, register
from wsolkit.maps.targets import Targets, TargetSpec, resolve_targets
from wsolkit.models.classifier import Classifier, as_classifier


def heatmaps(
    model: Classifier | torch.nn.Module,
    images: torch.Tensor | Sequence[Image.Image | str | os.PathLike],
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
        images: (N, C, H, W) float batch, preprocessed for the model; or a list of RGB PIL
            images or image paths, which are loaded and preprocessed with the model's own
            preprocessing (maps are then at the model's input size).
        method: a name from :func:`method_names` (``wsolkit methods`` lists them).
        target: ``"top1"``, ``"topK"``, ``"gt"`` (with ``labels``), class index(es), or a
            callable mapping (N, classes) logits to (N,) scores.
        layer: layer to hook, by module name; default: the method's default for the model.
        labels: ground-truth class per image, for ``target="gt"``.
        **options: method options (``fc``, ``upsample``, and e.g. ``samples`` for
            Smooth Grad-CAM++, ``max_channels`` for Score-CAM).

    Returns:
        A :class:`HeatmapResult`; ``maps`` is (N, H, W) float32 in [0, 1].

    Example (any classifier module; ``wsolkit.load_model()`` gives the embedded one):

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 3))
    >>> result = heatmaps(net, torch.rand(2, 3, 16, 16), method="gradcam", layer="1")
    >>> result.maps.shape, result.layer
    (torch.Size([2, 16, 16]), '1')
    >>> bool(result.maps.min() >= 0) and bool(result.maps.max() <= 1)
    True
    >>> heatmaps(net, torch.rand(2, 3, 16, 16), method="cam", target="top2").image_index
    tensor([0, 0, 1, 1])
    """
    classifier = as_classifier(model)
    sources = None
    if isinstance(images, (list, tuple)):
        sources = _load(images)
        images = classifier.preprocess_batch(sources)
    runner = make_method(method, classifier, layer=layer, **options)
    return runner(images, target=target, labels=labels, sources=sources)


def _load(images: Sequence[Image.Image | str | os.PathLike]) -> list[Image.Image]:
    from wsolkit.data.images import load_image

    loaded = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
    return [im.convert("RGB") for im in loaded]


__all__ = [
    "METHODS",
    "ForwardPass",
    "HeatmapMethod",
    "HeatmapResult",
    "Targets",
    "get_method",
    "heatmaps",
    "make_method",
    "method_names",
    "register",
    "resolve_targets",
]
