"""Class-agnostic objectness (MASON, eq. 1): the sum of all feature maps of one layer."""

from __future__ import annotations

import torch
from torch import nn

from wsolkit.maps.base import ForwardPass, HeatmapMethod

# VGG-16's 13 convolutions in 5 blocks, each block closed by a max pool (configuration "D").
VGG16_CONVS, VGG16_POOLS = 13, 5


def vgg16_conv5_3(module: nn.Module) -> str | None:
    """Name of VGG-16's conv5_3 output after its ReLU (MASON's layer), or None if not a VGG-16.

    A network counts as VGG-16 when its ``features`` is an ``nn.Sequential`` of thirteen 3x3
    convolutions and five max pools, as torchvision's ``vgg16`` / ``vgg16_bn`` (and a
    checkpoint of them) are. The layer is the activation after the last convolution (in
    torchvision's ``vgg16`` ``features.29``): the paper sums conv5_3's feature maps, and in
    Caffe, whose VGG-16 the paper used, that blob is overwritten in place by relu5_3.
    """
    features = getattr(module, "features", None)
    if not isinstance(features, nn.Sequential):
        return None
    layers = list(features.named_children())
    convs = [i for i, (_, layer) in enumerate(layers)
             if isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3)]
    pools = [layer for _, layer in layers if isinstance(layer, nn.MaxPool2d)]
    if len(convs) != VGG16_CONVS or len(pools) != VGG16_POOLS:
        return None
    for name, layer in layers[convs[-1] + 1:]:
        if isinstance(layer, nn.MaxPool2d):
            break
        if isinstance(layer, nn.ReLU):
            return f"features.{name}"
    return f"features.{layers[convs[-1]][0]}"


class Objectness(HeatmapMethod):
    """``O = sum_i f_i`` over the channels of a conv layer; the target class is not used.

    The default layer of the embedded model was chosen by measurement on imagenet-dev
    (``benchmarks/objectness_layer.py``); on a VGG-16 it is the paper's conv5_3
    (:func:`vgg16_conv5_3`); any layer can be named.
    """

    name = "objectness"
    summary = "MASON objectness: class-agnostic sum of a layer's feature maps"
    relu = False

    def default_layer(self, sample: torch.Tensor) -> str:
        """The model's objectness layer, VGG-16's conv5_3, else the layer feeding the head."""
        return (self.classifier.objectness_layer or vgg16_conv5_3(self.module)
                or super().default_layer(sample))

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """Channel sum of the hooked activations."""
        return forward.activations.sum(dim=1)
