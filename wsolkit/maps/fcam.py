"""F-CAM (Belharbi et al., WACV 2022): a trained decoder's full-resolution foreground map.

The method brings its own network (docs/fcam.md): the classifier plus a U-Net decoder over its
skip layers (:mod:`wsolkit.models.fcam`), trained by ``wsolkit train-fcam``. ``self.classifier``
wraps both, so the base class's forward pass, targets and logits run on it; the hooked layer
``fcam`` outputs the foreground probability at the input size, which is the raw map (already
full resolution: the evaluation protocol's 224x224 resize leaves it as is). The map is
class-agnostic: every target of an image gets the same map.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from wsolkit.errors import InputError
from wsolkit.maps.base import ForwardPass, HeatmapMethod
from wsolkit.models.classifier import Classifier, as_classifier
from wsolkit.models.fcam import (
    DEFAULT_DECODER,
    FCAMDecoder,
    capture_skips,
    check_skip_channels,
    load_decoder,
)

FCAM_LAYER = "fcam"


class FCAMNet(nn.Module):
    """Classifier + decoder: returns the classifier's logits; ``fcam`` outputs (N, 1, H, W)."""

    def __init__(self, classifier: nn.Module, decoder: FCAMDecoder, source: str) -> None:
        super().__init__()
        self.classifier = classifier
        self.decoder = decoder
        self.fcam = nn.Identity()  # hook point of the foreground probability
        self.source = source

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Classifier logits; the decoder's foreground map passes through ``self.fcam``."""
        layers = self.decoder.spec.skip_layers
        with capture_skips(self.classifier, layers) as found:
            logits = self.classifier(images)
        missing = [name for name in layers if name not in found]
        if missing:
            raise InputError(f"F-CAM skip layer {missing[0]!r} did not run in the forward pass")
        skips = [found[name] for name in layers]
        check_skip_channels(self.decoder.spec, skips, self.source)
        with torch.no_grad():
            probabilities = self.decoder(skips, images.shape[-2:]).softmax(dim=1)[:, 1:]
        self.fcam(probabilities)
        return logits


class FCAM(HeatmapMethod):
    """Foreground probability of an F-CAM decoder.

    ``decoder=FILE`` names the decoder; without it, the shipped one for the embedded
    EfficientNet-Lite0 is used.
    """

    name = "fcam"
    summary = "F-CAM: full-resolution foreground map of a decoder trained on a frozen classifier"
    relu = False

    def __init__(
        self,
        model: Classifier | torch.nn.Module,
        layer: str | None = None,
        fc: str | None = None,
        upsample: str = "bilinear",
        decoder: str = "",
    ) -> None:
        if layer not in (None, FCAM_LAYER):
            raise InputError(f"fcam: layer {layer!r}: the map is the decoder's output; the "
                             "classifier layers it reads are fixed when the decoder is trained")
        base = as_classifier(model, fc=fc)
        path = Path(decoder) if decoder else DEFAULT_DECODER
        if not decoder and base.name != "efficientnet_lite0":
            raise InputError(
                f"fcam: no shipped decoder for model {base.name!r}; train one with "
                "wsolkit train-fcam and pass the option decoder=FILE"
            )
        network, meta = load_decoder(path)
        self.decoder_path = path
        self.decoder_meta = meta
        wrapped = replace(base, module=FCAMNet(base.module, network, str(path)),
                          feature_layer=FCAM_LAYER, objectness_layer=FCAM_LAYER, _detected=None)
        super().__init__(wrapped, layer=layer or FCAM_LAYER, fc=None, upsample=upsample)

    def default_layer(self, sample: torch.Tensor) -> str:
        """The decoder's output."""
        return FCAM_LAYER

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """The foreground probability, the same for every target of an image."""
        return forward.activations[:, 0]
