"""``wildcat`` and ``excam``: the class maps of a trained WILDCAT / ex-CAM head.

The method builds its own network: the model's backbone up to the head file's feature layer,
followed by the trained head (:class:`wsolkit.models.wildcat.HeadModel`), and sets
``self.classifier`` to it (multi-label: its class probabilities are the sigmoid of the head's
pooled scores). The hooked module ``head.classwise`` outputs the (N, C, h, w) class maps, and the
map of a target class is its channel. At test time ex-CAM's dropout is off, so both methods
compute the same thing from different weights: the default head files differ.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import torch

from wsolkit.errors import ModelError, TargetError
from wsolkit.maps.base import ForwardPass, HeatmapMethod
from wsolkit.models.classifier import Classifier
from wsolkit.models.loading import DEFAULT_MODEL
from wsolkit.models.wildcat import HeadModel, build_head, check_head_fits, read_head

CLASS_MAPS_LAYER = "head.classwise"


def shipped_head(kind: str) -> Path:
    """Path of the head shipped for the embedded model (``wildcat`` or ``excam``)."""
    return Path(str(resources.files("wsolkit.models").joinpath(
        "weights", f"{kind}_{DEFAULT_MODEL}.pt")))


def head_classifier(base: Classifier, path: str | Path, kind: str = "head") -> Classifier:
    """The classifier ``base``'s backbone + the head in ``path`` (multi-label).

    Raises:
        ModelError: unreadable file, or a head made for another backbone or class count.
    """
    record = read_head(path)
    head = build_head(record, training_dropout=False)
    module = HeadModel(base.module, record["layer"], head).eval()
    size = base.input_size
    probe = torch.zeros(1, 3, *size, device=base.device)
    with torch.no_grad():
        training = base.module.training
        base.module.eval()
        try:
            channels = module.features(probe).shape[1]
        finally:
            base.module.train(training)
    classes = len(base.class_names) if base.class_names is not None else None
    check_head_fits(record, path, base.name, channels, classes)
    return Classifier(
        module=module.to(base.device), name=f"{base.name}+{kind}",
        class_names=record["class_names"], input_size=base.input_size, mean=base.mean,
        std=base.std, feature_layer=CLASS_MAPS_LAYER, fc_layer=None,
        objectness_layer=base.objectness_layer, multi_label=True,
    )


class HeadMethod(HeatmapMethod):
    """Shared code of the head methods; ``kind`` names the shipped default head."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A head method's shipped head ``kind`` is its registry ``name``."""
        super().__init_subclass__(**kwargs)
        cls.kind = cls.name
    relu = False  # as CAM: the class map is a linear score map; min-max keeps its negatives

    def __init__(self, model: Classifier | torch.nn.Module, layer: str | None = None,
                 fc: str | None = None, upsample: str = "bilinear",
                 head: str | None = None) -> None:
        super().__init__(model, layer=layer, fc=fc, upsample=upsample)
        if head is None:
            if self.classifier.name != DEFAULT_MODEL:
                raise ModelError(f"{self.name}: no shipped head for model "
                                 f"{self.classifier.name!r}; give head=FILE (wsolkit train-head)")
            head = shipped_head(self.kind)
            if not head.is_file():
                raise ModelError(f"{self.name}: the shipped head {head} is missing; give "
                                 "head=FILE")
        self.head_file = str(head)
        self.classifier = head_classifier(self.classifier, head, self.kind)
        self.layer = layer or CLASS_MAPS_LAYER

    def default_layer(self, sample: torch.Tensor) -> str:
        """The head's class-map module."""
        return CLASS_MAPS_LAYER

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """The target class's channel of the hooked (N, C, h, w) class maps."""
        if forward.targets.score_fn is not None:
            raise TargetError(f"{self.name} needs class targets, not a callable")
        classes = forward.targets.classes.to(forward.activations.device)
        if forward.activations.shape[1] != len(self.classifier.class_names):
            raise TargetError(f"{self.name}: layer {forward.layer!r} is not the head's class "
                              f"maps ({CLASS_MAPS_LAYER!r})")
        # many classes of one image are rows over the base class's single forward pass of it
        rows = torch.arange(len(classes), device=classes.device)
        return forward.activations[rows, classes]


class Wildcat(HeadMethod, name="wildcat",
              summary="class maps of a trained WILDCAT head (multi-label; option head=FILE)"):
    """WILDCAT (Durand et al., CVPR 2017): class maps of a multi-map head, top/bottom-k pooling."""


class ExCAM(HeadMethod, name="excam", summary="class maps of a WILDCAT head trained with ex-CAM "
            "sequential dropout (head=FILE)"):
    """ex-CAM: a WILDCAT head trained with intra-class sequential dropout (off at test time)."""
