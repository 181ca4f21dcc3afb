"""The explicit registry of heatmap methods, by name."""

from __future__ import annotations

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
from wsolkit.maps.rcam import RCAM, RCAM1, RCAM2, RCAM3
from wsolkit.maps.scorecam import ScoreCAM
from wsolkit.maps.smoothgradcampp import SmoothGradCAMpp

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


def method_names() -> list[str]:
    """Registered method names in registration order."""
    return list(METHODS)


for _method in (CAM, GradCAM, GradCAMpp, SmoothGradCAMpp, XGradCAM, LayerCAM, ScoreCAM,
                Objectness, EigenCAM, BagCAMs, BeamSearch, Wildcat, ExCAM, FCAM, RCAM1, RCAM2,
                RCAM3, RCAM):
    register(_method)
