"""Finding layers of a model by name and detecting its global-average-pool + linear head."""

from __future__ import annotations

import difflib
import weakref
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from wsolkit.errors import LayerError, ModelError


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called ``name`` (as in ``model.named_modules()``).

    Raises:
        LayerError: naming the layer and the closest existing names.
    """
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise LayerError(f"layer {name!r} not found in {type(model).__name__}{hint}")


@dataclass(frozen=True)
class CamHead:
    """The layer feeding global average pooling and the linear layer that follows it."""

    feature_layer: str
    fc_layer: str


def find_linear(model: nn.Module, name: str | None, in_features: int | None = None) -> nn.Linear:
    """Return the named linear layer, or the last ``nn.Linear`` with ``in_features`` inputs.

    Raises:
        LayerError: if the named module is not ``nn.Linear``.
        ModelError: if no suitable linear layer exists.
    """
    if name is not None:
        layer = get_layer(model, name)
        if not isinstance(layer, nn.Linear):
            raise LayerError(f"layer {name!r} is a {type(layer).__name__}, not nn.Linear")
        return layer
    linears = [
        m for m in model.modules()
        if isinstance(m, nn.Linear) and (in_features is None or m.in_features == in_features)
    ]
    if not linears:
        raise ModelError(
            f"no nn.Linear classifier with {in_features} inputs found in "
            f"{type(model).__name__}; name it with fc=..."
        )
    return linears[-1]


def is_channels_last_model(model: nn.Module) -> bool:
    """Whether the model's 4-D maps may be channels-last (N, h, w, C): Swin transformers.

    timm's and torchvision's Swin classes (``SwinTransformer``, ``SwinTransformerV2``) keep
    their stage outputs channels-last; they are recognized by class name, without importing
    either package.
    """
    return "Swin" in type(model).__name__


@dataclass(frozen=True)
class ModuleProbe:
    """One forward pass of a model, seen by every named module.

    Attributes:
        shapes: output shape of each module whose output is a tensor.
        calls: how many times each module ran.
        order: tensor-output modules in completion order (a module that runs twice twice).
        output: the model's output shape, or None when it is not a tensor.
    """

    shapes: dict[str, torch.Size]
    calls: Counter
    order: list[str]
    output: torch.Size | None


_PROBED: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def probe_modules(model: nn.Module, sample: torch.Tensor, cached: bool = True) -> ModuleProbe:
    """One forward pass of the first image of ``sample``, hooks on every named module.

    The hooks are removed in ``finally``. With ``cached`` the result is kept per model and
    input shape (for a model whose modules do not change). The one probe behind the choices
    that depend on the architecture: the CAM head (:func:`detect_cam_head`, not cached: a
    fine-tuned model gets a new head), rCAM's shape layers, beam's feature layer.
    """
    key = tuple(sample.shape[-3:])
    cache = _PROBED.setdefault(model, {}) if cached else {}
    if key in cache:
        return cache[key]
    shapes: dict[str, torch.Size] = {}
    calls: Counter[str] = Counter()
    order: list[str] = []

    def record(name: str):
        def hook(_module, _inputs, output):
            calls[name] += 1
            if isinstance(output, torch.Tensor):
                shapes[name] = output.shape
                order.append(name)
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            output = model(sample[:1])
    finally:
        for handle in handles:
            handle.remove()
    result = ModuleProbe(shapes, calls, order,
                         output.shape if isinstance(output, torch.Tensor) else None)
    cache[key] = result
    return result


def detect_cam_head(model: nn.Module, sample: torch.Tensor) -> CamHead:
    """Find the layer whose output is globally pooled into the final linear classifier.

    Runs one forward pass on ``sample`` (one image is enough) with temporary hooks on every
    module and picks the last module, in completion order, whose output is a spatial map with
    as many channels as the last linear layer has inputs: an (N, C, h, w) map, an (N, L, C)
    token sequence (a transformer whose head pools tokens: the class token or their mean), or,
    in a Swin model, a channels-last (N, h, w, C) map.

    Raises:
        ModelError: if the model has no such head.
    """
    probe = probe_modules(model, sample, cached=False)
    shapes, order = probe.shapes, probe.order
    if probe.output is None or len(probe.output) != 2:
        raise ModelError(f"{type(model).__name__} does not return (N, classes) logits")
    linears = [
        (n, m) for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and m.out_features == probe.output[1]
    ]
    if not linears:
        raise ModelError(
            f"{type(model).__name__} has no nn.Linear producing its {probe.output[1]} logits; "
            "CAM needs a global-average-pool + linear head (name it with fc=...)"
        )
    fc_name, fc = linears[-1]
    channels_last = is_channels_last_model(model)
    candidates = [n for n in order if _feeds(shapes[n], fc.in_features, channels_last)]
    if not candidates:
        raise ModelError(
            f"no spatial layer with {fc.in_features} channels feeds {fc_name!r}; "
            "name the feature layer with layer=..."
        )
    return CamHead(feature_layer=candidates[-1], fc_layer=fc_name)


def _feeds(shape: torch.Size, channels: int, channels_last: bool) -> bool:
    """A map or token sequence with ``channels`` features at more than one position."""
    if len(shape) == 4 and shape[1] == channels:
        return shape[2:].numel() > 1
    if len(shape) == 3 or (len(shape) == 4 and channels_last):
        return shape[-1] == channels and shape[1:-1].numel() > 1
    return False
