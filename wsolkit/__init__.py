"""wsolkit: weakly supervised object localization with image classifiers."""

from wsolkit.errors import (
    ImageError,
    InputError,
    LayerError,
    ModelError,
    TargetError,
    WSOLError,
)
from wsolkit.maps import HeatmapResult, get_method, heatmaps, method_names
from wsolkit.models import Classifier, as_classifier, load_model

__version__ = "0.1.0"

__all__ = [
    "Classifier",
    "HeatmapResult",
    "ImageError",
    "InputError",
    "LayerError",
    "ModelError",
    "TargetError",
    "WSOLError",
    "as_classifier",
    "get_method",
    "heatmaps",
    "load_model",
    "method_names",
]
