"""The explicit registry of heatmap methods, by name."""

from __future__ import annotations

import torch

from wsolkit.errors import InputError
from wsolkit.maps.bagcams import BagCAMs
from wsolkit.maps.base import HeatmapMethod
from wsolkit.maps.beam import BeamSearch
from wsolkit.maps.cam import CAM
from wsolkit.maps.eigencam import EigenCAM
from wsolkit.maps.fcam import FCAM
from wsolkit.maps.gradcam import GradCAM, GradCAMpp, LayerCAM, XGradCAM
from wsolkit.maps.heads import ExCAM, Wildcat
from wsolkit.maps.objectness import Objectness
from wsolkit.maps.options import check_options
from wsolkit.maps.rcam import RCAM, RCAM1, RCAM2, RCAM3
from wsolkit.maps.scorecam import ScoreCAM
from wsolkit.maps.smoothgradcampp import SmoothGradCAMpp
from wsolkit.models.classifier import Classifier

METHODS: dict[str, type[HeatmapMethod]] = {}


def register(method: type[HeatmapMethod]) -> type[HeatmapMethod]:
    """Add a method class under its ``name``; usable as a class decorator.

    Raises:
        InputError: if the name is empty or already taken by another class.
    """
    if not method.name:
        raise InputError(f"{method.__name__} has no name")
    if METHODS.get(method.name, method) is not method:
        raise InputError(f"heatmap method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> type[HeatmapMethod]:
    """Return the method class registered as ``name``.

    Raises:
        InputError: naming the unknown method and listing the known ones.
    """
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise InputError(f"unknown method {name!r}; known methods: {known}") from None


def make_method(name: str, model: Classifier | torch.nn.Module,
                **options: object) -> HeatmapMethod:
    """Build the method registered as ``name``, checking its keyword options first.

    The one place options from users (``heatmaps(**options)``, ``--option KEY=VALUE``, app
    settings) are checked, so a bad one is a one-line error naming it.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 2))
    >>> make_method("gradcam", net, upsample="bicubic").upsample
    'bicubic'
    >>> make_method("cam", net, samples=4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    wsolkit.errors.InputError: option 'samples' is unknown to cam; it takes fc, fuse, layer, ...

    Raises:
        InputError: an unknown method or option, or an option value of the wrong type.
    """
    method = get_method(name)
    check_options(method, options)
    return method(model, **options)


def method_names() -> list[str]:
    """Registered method names in registration order."""
    return list(METHODS)


for _method in (CAM, GradCAM, GradCAMpp, SmoothGradCAMpp, XGradCAM, LayerCAM, ScoreCAM,
                Objectness, EigenCAM, BagCAMs, BeamSearch, Wildcat, ExCAM, FCAM, RCAM1, RCAM2,
                RCAM3, RCAM):
    register(_method)
