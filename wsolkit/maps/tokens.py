"""Layer outputs that are not (N, C, h, w) maps: transformer tokens and channels-last maps.

Every heatmap method works on an (N, C, h, w) map. A vision transformer's blocks output a token
sequence (N, L, C) whose first tokens are not image patches (class, distillation and register
tokens); Swin's stages output channels-last (N, h, w, C) maps. A :class:`Reshape` turns such an
output into an (N, C, h, w) map and back; the hook gives the network the map turned back, so
gradients reach it through the patch tokens (the dropped prefix tokens are constants there).

The layout is chosen automatically (``reshape=None``):

- (N, C, h, w) outputs are left as they are, except in a Swin model (class name containing
  ``Swin``) where a 4-D output whose dims 1-2 have the input's aspect ratio (and dims 2-3 do not)
  is read as channels-last;
- (N, L, C) token outputs drop the model's prefix tokens: ``num_prefix_tokens`` when the model
  has it (timm's ViT, DeiT, and their register-token variants), else one for a ``class_token``
  or ``cls_token`` attribute (torchvision's ViT), plus one for a ``dist_token``; without any of
  these, the number of leading tokens (0..16) whose remaining tokens form the grid nearest the
  input's aspect ratio (within 10%; ties: the fewest). Small grids can be ambiguous there:
  set ``reshape`` for such models. The
  remaining tokens are a row-major (h, w) grid of the input's aspect ratio.

Or set by the user: ``"nchw"`` (as is), ``"nhwc"``, ``"tokens"`` (prefix found as above) or
``"tokens:P"`` (P prefix tokens). timm and torchvision are never imported here: their classes
are recognized by the attributes above (read from their sources; these packages do not import
with the torch build of the test machine, so only models written in the tests with the same
attributes are tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from wsolkit.errors import InputError, LayerError
from wsolkit.models.layers import is_channels_last_model

LAYOUTS = ("nchw", "nhwc", "tokens")
# The most leading non-patch tokens tried when a model does not say how many it has.
MAX_PREFIX_TOKENS = 16
# How far (a factor) a token grid's aspect ratio may be from the input's.
GRID_ASPECT_TOLERANCE = 1.1


@dataclass(frozen=True)
class Reshape:
    """How one layer's output becomes an (N, C, h, w) map.

    Attributes:
        layout: ``"nchw"``, ``"nhwc"`` or ``"tokens"``.
        prefix: leading non-patch tokens dropped (``"tokens"`` only).
        grid: (h, w) of the patch tokens (``"tokens"`` only).
    """

    layout: str
    prefix: int = 0
    grid: tuple[int, int] = (0, 0)

    def to_map(self, output: torch.Tensor) -> torch.Tensor:
        """The (N, C, h, w) map of a layer output (a view where possible)."""
        if self.layout == "nchw":
            return output
        if self.layout == "nhwc":
            return output.permute(0, 3, 1, 2)
        patches = output[:, self.prefix:]
        return patches.transpose(1, 2).reshape(len(output), -1, *self.grid)

    def from_map(self, feature_map: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The layer output with its patch part replaced by ``feature_map`` (inverse of to_map).

        The prefix tokens are taken from ``output`` unchanged.
        """
        if self.layout == "nchw":
            return feature_map
        if self.layout == "nhwc":
            return feature_map.permute(0, 2, 3, 1)
        patches = feature_map.flatten(2).transpose(1, 2)
        return torch.cat([output[:, :self.prefix].to(patches), patches], dim=1)


def check_reshape(spec: object) -> str | None:
    """Validate a ``reshape`` option (None, a layout name, or ``"tokens:P"``).

    Raises:
        InputError: naming the value and the accepted ones.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        name, _, count = spec.partition(":")
        if name in LAYOUTS and (not count or (name == "tokens" and count.isdigit())):
            return spec
    raise InputError(f"reshape={spec!r}: use none (automatic), nchw, nhwc, tokens or tokens:P "
                     "(P leading non-patch tokens)")


def resolve_reshape(spec: str | None, model: nn.Module, layer: str, output: torch.Tensor,
                    image_size: tuple[int, int] | None) -> Reshape:
    """Choose the :class:`Reshape` of ``layer``'s output (see the module docstring).

    Args:
        spec: the user's ``reshape`` option (None: automatic).
        model: the whole network (its attributes say how many prefix tokens it has).
        layer: the layer's name, for messages.
        output: the layer's output tensor.
        image_size: (H, W) of the input batch (None: assumed square).

    Raises:
        LayerError: the output cannot be read as a map in the chosen layout.
    """
    name, _, count = (spec or "").partition(":")
    if output.ndim == 3 and name in ("", "tokens"):
        prefix = int(count) if count else _model_prefix(model)
        return _token_reshape(layer, output, prefix, image_size)
    if output.ndim == 4 and name == "nhwc":
        return Reshape("nhwc")
    if output.ndim == 4 and name == "" and is_channels_last_model(model) \
            and _channels_last(output, image_size):
        return Reshape("nhwc")
    if output.ndim == 4 and name in ("", "nchw"):
        return Reshape("nchw")
    wanted = {"nhwc": "(N, h, w, C)", "tokens": "(N, L, C) tokens"}.get(name, "(N, C, h, w)")
    raise LayerError(f"layer {layer!r} outputs {tuple(output.shape)}, not an {wanted} map")


def _model_prefix(model: nn.Module) -> int | None:
    """Leading non-patch tokens the model declares (None: unknown)."""
    declared = getattr(model, "num_prefix_tokens", None)
    if isinstance(declared, int):
        return declared
    if not any(isinstance(getattr(model, a, None), torch.Tensor)
               for a in ("class_token", "cls_token")):
        return None
    return 1 + isinstance(getattr(model, "dist_token", None), torch.Tensor)


def _token_reshape(layer: str, output: torch.Tensor, prefix: int | None,
                   image_size: tuple[int, int] | None) -> Reshape:
    tokens = output.shape[1]
    height, width = image_size or (1, 1)
    tries = [prefix] if prefix is not None else range(min(MAX_PREFIX_TOKENS, tokens - 1) + 1)
    found = [(count, grid) for count in tries
             if (grid := _grid(tokens - count, height, width)) is not None]
    if found:  # the grid nearest the input's aspect ratio; ties: the fewest prefix tokens
        count, grid = min(found, key=lambda item: (_mismatch(*item[1], height, width), item[0]))
        return Reshape("tokens", count, grid)
    said = f"after {prefix} prefix tokens " if prefix is not None else ""
    raise LayerError(f"layer {layer!r} outputs {tokens} tokens: {said}they do not form a grid of "
                     f"the input's {height}:{width} aspect ratio; set reshape='tokens:P'")


def _grid(count: int, height: int, width: int) -> tuple[int, int] | None:
    """(h, w) with h * w == count whose aspect ratio is nearest height : width, or None.

    Patch grids floor the input size (227 px in 16 px patches: 14), so the ratio only has to
    be near: within ``GRID_ASPECT_TOLERANCE`` (a factor).
    """
    if count < 1:
        return None
    best = min((h for h in range(1, count + 1) if count % h == 0),
               key=lambda h: _mismatch(h, count // h, height, width))
    return (best, count // best) if _near(best, count // best, height, width) else None


def _channels_last(output: torch.Tensor, image_size: tuple[int, int] | None) -> bool:
    """Dims 1-2 of a 4-D output have the input's aspect ratio and dims 2-3 do not."""
    height, width = image_size or (1, 1)
    shape = output.shape
    return _near(shape[1], shape[2], height, width) and not _near(shape[2], shape[3], height,
                                                                     width)


def _mismatch(rows: int, cols: int, height: int, width: int) -> float:
    """|log| of the ratio between a grid's aspect ratio and the input's."""
    return abs(math.log(rows * width / (cols * height)))


def _near(rows: int, cols: int, height: int, width: int) -> bool:
    return _mismatch(rows, cols, height, width) <= math.log(GRID_ASPECT_TOLERANCE)
