"""`Classifier`: a classification network together with what localization needs of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image
from torch import nn

from wsolkit.errors import InputError, ModelError
from wsolkit.models.layers import CamHead, detect_cam_head

# mean/std of ImageNet-trained torchvision and timm models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Classifier:
    """A classifier plus its preprocessing, class names and default layers.

    Attributes:
        module: the network; maps an NCHW float batch to (N, classes) logits.
        name: a short name used in outputs (e.g. ``efficientnet_lite0``).
        class_names: one display name per class, or None.
        input_size: (height, width) images are resized to by :meth:`preprocess`.
        mean: per-channel mean subtracted from RGB values in [0, 1].
        std: per-channel divisor applied after the mean.
        feature_layer: default layer for CAM-family methods (the one feeding the head).
        fc_layer: the linear layer of the global-average-pool + linear head.
        objectness_layer: default layer of the class-agnostic objectness map.
        multi_label: the logits are independent per class (trained with binary cross-entropy,
            e.g. by ``wsolkit finetune``): class probabilities are their sigmoid, not softmax.
        method_layers: default layer per heatmap method name, for methods whose best layer is
            not the one feeding the head (measured for the embedded model).
    """

    module: nn.Module
    name: str = "model"
    class_names: Sequence[str] | None = None
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    feature_layer: str | None = None
    fc_layer: str | None = None
    objectness_layer: str | None = None
    multi_label: bool = False
    method_layers: dict[str, str] = field(default_factory=dict)
    _detected: CamHead | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        """Device of the module's first parameter (CPU for a parameterless module)."""
        param = next(self.module.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def class_name(self, index: int) -> str:
        """Short display name of class ``index`` (first synonym), or ``class <index>``."""
        if self.class_names is None or not 0 <= index < len(self.class_names):
            return f"class {index}"
        return self.class_names[index]

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities of (N, classes) logits: sigmoid if multi-label, else softmax."""
        logits = logits.float()
        return logits.sigmoid() if self.multi_label else logits.softmax(dim=-1)

    def preprocess(self, image: Image.Image, box: Sequence[float] | None = None,
                   size: tuple[int, int] | None = None) -> torch.Tensor:
        """Resize an RGB PIL image to ``input_size`` and normalize it to a CHW tensor.

        Args:
            image: RGB PIL image.
            box: optional ``x0, y0, x1, y1`` region of ``image`` (pixel edges, fractions
                allowed) to resize instead of the whole image (PIL's ``resize(box=...)``).
            size: optional (height, width) instead of ``input_size``. The image's own size
                keeps it as it is (a fully convolutional pass at full resolution).
        """
        return self.normalize(self.resize_region(image, box, size)[None])[0]

    def resize_region(self, image: Image.Image, box: Sequence[float] | None = None,
                      size: tuple[int, int] | None = None) -> np.ndarray:
        """The (H, W, 3) uint8 pixels :meth:`preprocess` normalizes.

        A bilinear resize of the image, or of its ``box`` region, to ``size`` (default
        ``input_size``).
        """
        if not isinstance(image, Image.Image) or image.mode != "RGB":
            raise InputError("preprocess expects an RGB PIL image (see wsolkit.load_image)")
        height, width = self.input_size if size is None else size
        region = None if box is None else tuple(float(v) for v in box)
        return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, box=region))

    def normalize(self, pixels: np.ndarray) -> torch.Tensor:
        """(N, H, W, 3) uint8 RGB pixels -> (N, 3, H, W) float32 ``(x / 255 - mean) / std``.

        One pass for a whole stack of crops (beam's re-encoded regions); :meth:`preprocess`
        is this on one resized image.
        """
        pixels = np.require(pixels, requirements=["C", "W"])  # PIL's arrays are read-only
        tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (tensor - mean) / std

    def preprocess_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Preprocess several PIL images into one NCHW batch on the model's device."""
        if not images:
            return torch.stack([]).to(self.device)  # torch's own error for an empty batch
        return self.normalize(np.stack([self.resize_region(image) for image in images])
                              ).to(self.device)

    def to_rgb(self, images: torch.Tensor) -> np.ndarray:
        """The inverse of :meth:`preprocess`: (N, 3, H, W) batch -> (N, H, W, 3) uint8 RGB."""
        return to_rgb_uint8(images, self.mean, self.std)

    def cam_head(self, sample: torch.Tensor) -> CamHead:
        """The (feature layer, fc layer) pair of the CAM head, detected once if not named."""
        if self.feature_layer is not None and self.fc_layer is not None:
            return CamHead(self.feature_layer, self.fc_layer)
        if self._detected is None:
            self._detected = detect_cam_head(self.module, sample[:1])
        return CamHead(
            self.feature_layer or self._detected.feature_layer,
            self.fc_layer or self._detected.fc_layer,
        )


def as_classifier(
    model: Classifier | nn.Module, layer: str | None = None, fc: str | None = None
) -> Classifier:
    """Wrap a bare ``nn.Module`` as a :class:`Classifier`, or override a classifier's layers.

    Args:
        model: a :class:`Classifier` or any ``nn.Module`` returning (N, classes) logits.
        layer: feature layer name to use by default (``model.named_modules()`` naming).
        fc: name of the linear layer of the global-average-pool + linear head.
    """
    if isinstance(model, Classifier):
        if layer is None and fc is None:
            return model
        return replace(
            model,
            feature_layer=layer or model.feature_layer,
            objectness_layer=layer or model.objectness_layer,
            fc_layer=fc or model.fc_layer,
            method_layers={} if layer else model.method_layers,
            _detected=None,
        )
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module or Classifier, got {type(model).__name__}")
    return Classifier(
        module=model,
        name=type(model).__name__,
        feature_layer=layer,
        fc_layer=fc,
        objectness_layer=layer,
    )


def to_rgb_uint8(images: torch.Tensor, mean: Sequence[float],
                 std: Sequence[float]) -> np.ndarray:
    """Undo ``Classifier.preprocess``: (N, 3, H, W) normalized tensor -> (N, H, W, 3) uint8.

    ``x * std + mean`` per channel gives RGB in [0, 1], scaled to 0..255, rounded and
    clipped. This recovers the resized image up to rounding only if the batch was made with
    these ``mean`` and ``std`` (the classifier's own preprocessing).

    Raises:
        InputError: the batch does not have 3 channels.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(
            f"the dense CRF needs RGB images, (N, 3, H, W); got {tuple(images.shape)}"
        )
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    rgb = images.detach().float().cpu() * std_t + mean_t
    rgb = (rgb * 255.0).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(rgb.permute(0, 2, 3, 1).numpy())
