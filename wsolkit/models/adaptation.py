"""Adaptation layers: swap a classifier's last linear layer for a new head of the target classes.

Following Oquab et al. (CVPR 2014) as used by Bency et al. (ECCV 2016), the final layer is
replaced by two fully connected *adaptation layers*: ``hidden`` (Linear + ReLU + Dropout) and
``out`` (Linear to one logit per target class). The new head sits where the old linear layer
was, under the same name (``fc`` for the embedded model, so its layers are ``fc.hidden`` and
``fc.out``); the rest of the network (the backbone) is copied unchanged.

A two-layer head is not linear, so plain CAM (which reads the class weights of a global-average-
pool + linear head) does not apply to it; gradient methods (``gradcam``, ``gradcampp``,
``xgradcam``, ``layercam``, ``smoothgradcampp``) and ``scorecam`` do. ``hidden=0`` makes a
single linear head (``out`` only), for which CAM is exact.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from wsolkit.errors import InputError, ModelError
from wsolkit.models.classifier import Classifier
from wsolkit.models.layers import find_linear, get_layer

__all__ = ["AdaptationHead", "head_parameter_names", "with_adaptation_head"]


class AdaptationHead(nn.Module):
    """``out(dropout(relu(hidden(x))))``, or ``out(x)`` when built with ``hidden=0``.

    Args:
        in_features: Width of the pooled features (the replaced layer's ``in_features``).
        num_classes: Number of target classes (logits).
        hidden: Width of the hidden adaptation layer; 0 for a single linear layer.
        dropout: Dropout probability after the hidden layer (training only).
    """

    def __init__(
        self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.5
    ) -> None:
        super().__init__()
        if hidden > 0:
            self.hidden = nn.Linear(in_features, hidden)
            self.act = nn.ReLU()
            self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden if hidden > 0 else in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return (N, num_classes) logits for (N, in_features) pooled features."""
        if hasattr(self, "hidden"):
            features = self.dropout(self.act(self.hidden(features)))
        return self.out(features)


def with_adaptation_head(
    classifier: Classifier,
    class_names: list[str] | tuple[str, ...],
    hidden: int = 512,
    dropout: float = 0.5,
    seed: int = 0,
) -> tuple[Classifier, str]:
    """A copy of ``classifier`` whose last linear layer is an :class:`AdaptationHead`.

    The classifier's module is deep-copied first, so the caller's model is left as found and
    the backbone of the copy starts from exactly the same weights. The CAM feature layer is
    detected on the original model (one forward pass of a zero image) and kept as the copy's
    ``feature_layer``, so layer-based heatmap methods keep their default layer. A model without
    a global-average-pool + linear head (e.g. VGG) gets its last ``nn.Linear`` replaced.

    Args:
        classifier: The pretrained classifier (e.g. ``wsolkit.load_model()``).
        class_names: One name per target class.
        hidden: Width of the hidden adaptation layer; 0 for a single linear layer.
        dropout: Dropout after the hidden layer.
        seed: Seeds the initialization of the new layers (the global RNG is left as found).

    Returns:
        ``(new_classifier, head_name)``; ``head_name`` is the module name of the new head.

    Raises:
        InputError: ``hidden`` or ``dropout`` out of range, or no class names.
        ModelError: the model has no linear layer to replace.
    """
    if hidden < 0:
        raise InputError(f"hidden must be >= 0 (0: one linear layer); got {hidden}")
    if not 0.0 <= dropout < 1.0:
        raise InputError(f"dropout must be in [0, 1); got {dropout}")
    if not class_names:
        raise InputError("the adaptation head needs at least one class")
    height, width = classifier.input_size
    sample = torch.zeros(1, 3, height, width, device=classifier.device)
    training = classifier.module.training
    classifier.module.eval()
    try:
        cam_head = classifier.cam_head(sample)
        feature_layer, fc_name = cam_head.feature_layer, cam_head.fc_layer
    except ModelError:  # no pooled linear head (e.g. VGG): replace the last linear layer
        feature_layer = classifier.feature_layer
        fc_name = classifier.fc_layer or _last_linear_name(classifier.module)
    finally:
        classifier.module.train(training)
    module = copy.deepcopy(classifier.module)
    old = find_linear(module, fc_name)
    parent_name, _, child = fc_name.rpartition(".")
    parent = get_layer(module, parent_name) if parent_name else module
    if getattr(parent, child, None) is not old:
        raise ModelError(f"cannot replace layer {fc_name!r} of {type(module).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = AdaptationHead(old.in_features, len(class_names), hidden, dropout)
    setattr(parent, child, head.to(old.weight.device))
    new = replace(
        classifier,
        module=module,
        name=f"{classifier.name}+adapt{len(class_names)}",
        class_names=tuple(class_names),
        feature_layer=feature_layer,
        objectness_layer=classifier.objectness_layer or feature_layer,
        fc_layer=f"{fc_name}.out",
        multi_label=True,
        _detected=None,
    )
    return new, fc_name


def _last_linear_name(module: nn.Module) -> str:
    names = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ModelError(f"{type(module).__name__} has no nn.Linear layer to replace")
    return names[-1]


def head_parameter_names(module: nn.Module, head_name: str) -> set[str]:
    """Names (``module.named_parameters()``) of the parameters of the head ``head_name``."""
    prefix = f"{head_name}."
    return {name for name, _ in module.named_parameters() if name.startswith(prefix)}
