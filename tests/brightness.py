"""A classifier whose objectness map is the image brightness, and a synthetic image for it."""

from collections import OrderedDict

import numpy as np
from PIL import Image
from torch import nn

from wsolkit.models import Classifier

RECT = (20, 10, 36, 26)  # the bright rectangle, pixel edges x0, y0, x1, y1
SIZE = 64


class Brightness(nn.Module):
    """Objectness = image brightness: a 1x1 conv averaging RGB, full resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(mean=nn.Conv2d(3, 1, 1, bias=False)))
        nn.init.constant_(self.features.mean.weight, 1 / 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 2)

    def forward(self, images):
        return self.fc(self.pool(self.features(images)).flatten(1))


def brightness_classifier() -> Classifier:
    """The Brightness module with an input size of SIZE x SIZE and no normalization."""
    return Classifier(Brightness().eval(), name="brightness", input_size=(SIZE, SIZE),
                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), feature_layer="features",
                      fc_layer="fc", objectness_layer="features")


def synthetic_image() -> Image.Image:
    """SIZE x SIZE black RGB image with a white rectangle RECT."""
    array = np.zeros((SIZE, SIZE, 3), np.uint8)
    x0, y0, x1, y1 = RECT
    array[y0:y1, x0:x1] = 255
    return Image.fromarray(array)
