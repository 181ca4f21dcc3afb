"""Class-agnostic objectness (MASON, eq. 1): the sum of all feature maps of one layer."""

from __future__ import annotations

import torch

from wsolkit.maps.base import ForwardPass, HeatmapMethod


class Objectness(HeatmapMethod):
    """``O = sum_i f_i`` over the channels of a conv layer; the target class is not used.

    The default layer of the embedded model was chosen by measurement on imagenet-dev
    (``benchmarks/objectness_layer.py``); any layer can be named.
    """

    name = "objectness"
    summary = "MASON objectness: class-agnostic sum of a layer's feature maps"
    relu = False

    def default_layer(self, sample: torch.Tensor) -> str:
        """The model's objectness layer, else the layer feeding the classifier head."""
        return self.classifier.objectness_layer or super().default_layer(sample)

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """Channel sum of the hooked activations."""
        return forward.activations.sum(dim=1)
