"""The F-CAM decoder (Belharbi et al., WACV 2022): a U-Net over a frozen classifier's features.

The decoder reads the outputs of named *skip layers* of the classifier (shallow to deep; the
deepest one is the U-Net's bottom), and upsamples step by step: each block doubles the size
(nearest), resizes to the next skip if the sizes differ, concatenates the skip and applies two
``3x3 conv + BN + ReLU``; a last block without skip reaches the input size, and a 3x3 conv
head gives 2 channels (background, foreground). The F-CAM is ``softmax(logits)[:, 1]``: one
forward pass, class-agnostic.

Unlike the authors' ResNet50 decoder (widths 256, 128, 64, 32, 16 straight on the 2048-channel
bottom), the default here is narrow and first projects the bottom with a ``1x1 conv`` to
``reduce`` channels: on EfficientNet-Lite0 (0.4 GMAC) the full-width decoder would cost about
six forward passes of the classifier, and the inference budget is 1.5 (see docs/fcam.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsolkit.errors import InputError, LayerError, ModelError
from wsolkit.models.layers import get_layer
from wsolkit.models.loading import read_torch_file

__all__ = [
    "DEFAULT_DECODER",
    "DecoderSpec",
    "FCAMDecoder",
    "capture_skips",
    "default_skip_layers",
    "load_decoder",
    "save_decoder",
]

FORMAT = "wsolkit-fcam-decoder"
VERSION = 1
DEFAULT_DECODER = Path(__file__).parent / "weights" / "fcam_efficientnet_lite0.pt"
# Skip layers of known classifiers, shallow to deep (sizes at 224: 112, 56, 28, 14, 7).
KNOWN_SKIPS: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": ("features.stage1", "features.stage2", "features.stage3",
                           "features.stage5", "features.head"),
}


def default_skip_layers(model_name: str) -> tuple[str, ...]:
    """Skip layers of a known classifier.

    Raises:
        InputError: for a classifier whose skip layers are not known (name them instead).
    """
    try:
        return KNOWN_SKIPS[model_name]
    except KeyError:
        raise InputError(
            f"no known F-CAM skip layers for model {model_name!r}; name them (comma-separated, "
            "shallow to deep, e.g. layer1,layer2,layer3,layer4 for a ResNet)"
        ) from None


@dataclass(frozen=True)
class DecoderSpec:
    """The architecture of a decoder (what a decoder file must match).

    Attributes:
        skip_layers: classifier layers read, shallow to deep (the last is the bottom).
        skip_channels: channels of each skip layer's output.
        widths: output channels of the ``len(skip_layers)`` decoder blocks.
        reduce: channels of the 1x1 projection of the bottom (0: none).
    """

    skip_layers: tuple[str, ...]
    skip_channels: tuple[int, ...]
    widths: tuple[int, ...] = (64, 32, 16, 8, 4)
    reduce: int = 64
    extra: dict = field(default_factory=dict, compare=False)

    def check(self) -> None:
        """Raise :class:`InputError` for an inconsistent architecture."""
        if len(self.skip_layers) < 1 or len(self.skip_layers) != len(self.skip_channels):
            raise InputError(f"F-CAM needs one channel count per skip layer; got "
                             f"{list(self.skip_layers)} and {list(self.skip_channels)}")
        if len(self.widths) != len(self.skip_layers) or min(self.widths) < 1:
            raise InputError(f"F-CAM decoder widths must be {len(self.skip_layers)} positive "
                             f"numbers (one per skip layer); got {list(self.widths)}")
        if self.reduce < 0:
            raise InputError(f"F-CAM reduce must be >= 0; got {self.reduce}")


def _conv_bn_relu(inputs: int, outputs: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs),
            nn.ReLU(inplace=True)]


class DecoderBlock(nn.Module):
    """Nearest x2 upsampling, resize to the skip, concatenation, two conv-BN-ReLU."""

    def __init__(self, inputs: int, skip: int, outputs: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(*_conv_bn_relu(inputs + skip, outputs),
                                   *_conv_bn_relu(outputs, outputs))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None,
                size: Sequence[int] | None = None) -> torch.Tensor:
        """Upsample ``x`` to ``skip`` (or ``size``, or x2), concatenate and convolve."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        target = tuple(skip.shape[-2:]) if skip is not None else size
        if target is not None and tuple(x.shape[-2:]) != tuple(target):
            x = F.interpolate(x, size=tuple(target), mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip.to(x.dtype)], dim=1)
        return self.convs(x)


class FCAMDecoder(nn.Module):
    """U-Net decoder over skip features; returns (N, 2, H, W) logits (background, foreground).

    Args:
        spec: the architecture (:class:`DecoderSpec`).
    """

    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        spec.check()
        self.spec = spec
        bottom = spec.skip_channels[-1]
        if spec.reduce:
            self.reduce = nn.Sequential(nn.Conv2d(bottom, spec.reduce, 1, bias=False),
                                        nn.BatchNorm2d(spec.reduce), nn.ReLU(inplace=True))
            bottom = spec.reduce
        else:
            self.reduce = nn.Identity()
        skips = list(reversed(spec.skip_channels[:-1])) + [0]  # the last block has no skip
        blocks, inputs = [], bottom
        for skip, width in zip(skips, spec.widths, strict=True):
            blocks.append(DecoderBlock(inputs, skip, width))
            inputs = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(inputs, 2, 3, padding=1)

    def forward(self, skips: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """Decode skip features (shallow to deep) to logits at ``size`` (H, W)."""
        x = self.reduce(skips[-1].float())
        shallow = list(reversed(skips[:-1])) + [None]
        for block, skip in zip(self.blocks, shallow, strict=True):
            x = block(x, None if skip is None else skip.float(),
                      size=tuple(size) if skip is None else None)
        logits = self.head(x)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear",
                                   align_corners=False)
        return logits


@contextlib.contextmanager
def capture_skips(module: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Collect the (detached) first output of each named layer in the ``with`` block.

    The hooks are removed on exit.

    Raises:
        LayerError: a layer is missing (names it) or its output is not an (N, C, h, w) map.
    """
    found: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):  # noqa: ANN202 - a forward hook
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if name in found:
                return
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise LayerError(f"F-CAM skip layer {name!r} does not output an (N, C, h, w) map")
            found[name] = output.detach()
        return hook

    try:
        for name in layers:
            try:
                layer = get_layer(module, name)
            except LayerError as error:
                raise LayerError(f"F-CAM skip {error}") from None
            handles.append(layer.register_forward_hook(hook_for(name)))
        yield found
    finally:
        for handle in handles:
            handle.remove()


def save_decoder(decoder: FCAMDecoder, path: str | Path, meta: dict | None = None,
                 half: bool = True) -> bytes:
    """Serialize a decoder (fp16 weights by default) and return the bytes written to ``path``.

    The file is written atomically; ``meta`` (model name, seed CAM, settings, scores) is kept
    beside the weights for the record.
    """
    from wsolkit.data.atomic import write_torch_atomic

    state = {k: (v.half() if half and v.is_floating_point() else v).clone()
             for k, v in decoder.state_dict().items()}
    spec = decoder.spec
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "skip_layers": list(spec.skip_layers),
        "skip_channels": list(spec.skip_channels),
        "widths": list(spec.widths),
        "reduce": spec.reduce,
        "meta": meta or {},
        "state_dict": state,
    }
    return write_torch_atomic(path, payload)


def load_decoder(path: str | Path) -> tuple[FCAMDecoder, dict]:
    """Load a decoder file written by :func:`save_decoder`; returns (decoder in eval mode, meta).

    Raises:
        InputError: the file is missing, unreadable or not an F-CAM decoder file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"F-CAM decoder file {path} not found")
    payload = read_torch_file(path, "F-CAM decoder file", InputError)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"{path}: not an F-CAM decoder file (written by wsolkit train-fcam)")
    if payload.get("version") != VERSION:
        raise InputError(f"{path}: F-CAM decoder file version {payload.get('version')!r}; "
                         f"this wsolkit reads version {VERSION}")
    spec = DecoderSpec(tuple(payload["skip_layers"]), tuple(int(c) for c in
                       payload["skip_channels"]), tuple(int(w) for w in payload["widths"]),
                       int(payload["reduce"]))
    decoder = FCAMDecoder(spec)
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in payload["state_dict"].items()}
    try:
        decoder.load_state_dict(state)
    except RuntimeError as error:
        raise InputError(f"{path}: F-CAM decoder weights do not match its architecture "
                         f"({str(error).splitlines()[0]})") from None
    return decoder.eval(), dict(payload.get("meta") or {})


def check_skip_channels(spec: DecoderSpec, skips: Sequence[torch.Tensor], source: str) -> None:
    """Raise :class:`ModelError` when the classifier's skip features do not fit the decoder."""
    channels = tuple(int(s.shape[1]) for s in skips)
    if channels != tuple(spec.skip_channels):
        raise ModelError(
            f"{source}: the decoder expects skip channels {list(spec.skip_channels)} at "
            f"{list(spec.skip_layers)}, but the classifier gives {list(channels)}; train a "
            "decoder for this classifier with wsolkit train-fcam"
        )
