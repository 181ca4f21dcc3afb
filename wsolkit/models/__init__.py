"""Classifiers and the adapters that make them usable for localization."""

from wsolkit.models.classifier import Classifier, as_classifier
from wsolkit.models.layers import CamHead, detect_cam_head, get_layer
from wsolkit.models.loading import DEFAULT_MODEL, imagenet_class_names, load_model

__all__ = [
    "DEFAULT_MODEL",
    "CamHead",
    "Classifier",
    "as_classifier",
    "detect_cam_head",
    "get_layer",
    "imagenet_class_names",
    "load_model",
]
