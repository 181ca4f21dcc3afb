"""Capturing one layer's output during a forward pass, with hooks that clean up after themselves."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from wsolkit.errors import LayerError
from wsolkit.models.layers import get_layer


class LayerCapture:
    """The output of one layer in one forward pass.

    With ``track_gradients`` the forward pass before the layer runs without an autograd graph
    (the caller runs the model under ``torch.no_grad()``); the hook switches gradients on from the
    layer onwards, so a backward pass only goes from the score back to this layer.
    """

    def __init__(self, name: str, track_gradients: bool) -> None:
        self.name = name
        self.track_gradients = track_gradients
        self.activation: torch.Tensor | None = None
        self.calls = 0

    def hook(self, _module: nn.Module, _inputs: tuple, output: object) -> torch.Tensor | None:
        """Forward hook: store the output; with gradients, continue from a fresh leaf."""
        self.calls += 1
        if self.calls > 1:
            raise LayerError(
                f"layer {self.name!r} runs more than once per forward pass; "
                "choose a layer that runs once"
            )
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            kind = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise LayerError(f"layer {self.name!r} outputs {kind}, not an (N, C, h, w) map")
        if not self.track_gradients:
            # A clone, because layers after this one may modify their input in place.
            self.activation = output.detach().clone()
            return None
        torch.set_grad_enabled(True)  # restored by the caller's no_grad block on exit
        self.activation = output.detach().requires_grad_(True)
        return self.activation.clone()


@contextmanager
def capture_layer(
    model: nn.Module, name: str, track_gradients: bool = False
) -> Iterator[LayerCapture]:
    """Hook layer ``name`` of ``model`` for the duration of the ``with`` block.

    The hook is removed in ``finally``, also when the forward pass raises.

    Raises:
        LayerError: if the layer does not exist.
    """
    capture = LayerCapture(name, track_gradients)
    handle = get_layer(model, name).register_forward_hook(capture.hook)
    try:
        yield capture
    finally:
        handle.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's own flag afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


FORWARD_CHUNK = 1
"""Images per forward pass of the extra (scale-2) forward: per image, in channels-last
layout, is fastest on CPUs (a 448x448 batch's activations overflow the caches; measured in
``benchmarks/rcam_speed.py``)."""


def forward_capturing(module: nn.Module, images: torch.Tensor,
                     names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the outputs of layers ``names``, running ``FORWARD_CHUNK`` images at a time.

    No autograd (``torch.no_grad``); the input is passed in channels-last layout (the same
    numbers up to float rounding, faster for the depthwise convolutions on CPUs).
    """
    logits, outputs = [], {name: [] for name in names}
    for start in range(0, len(images), FORWARD_CHUNK):
        chunk = images[start:start + FORWARD_CHUNK].contiguous(memory_format=torch.channels_last)
        with ExitStack() as stack:
            captures = [stack.enter_context(capture_layer(module, name)) for name in names]
            with torch.no_grad():
                logits.append(module(chunk))
        for capture in captures:
            if capture.activation is None:
                raise LayerError(f"layer {capture.name!r} did not run during the forward pass")
            outputs[capture.name].append(capture.activation.contiguous())
    return torch.cat(logits), {name: torch.cat(parts) for name, parts in outputs.items()}
