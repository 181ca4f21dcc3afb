"""Capturing one layer's output during a forward pass, with hooks that clean up after themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


class _Reached(Exception):  # noqa: N818 - control flow, not an error
    """Raised by :func:`run_to_layer`'s hook to end a forward pass at the layer."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


@contextmanager
def run_to_layer(
    model: nn.Module, name: str
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """A function ``images -> output of layer name``, valid for the ``with`` block.

    The forward pass stops at the layer (the hook raises; the rest of the network does not
    run). The hook keeps no state, so the function may run in several threads at once
    (:func:`wsolkit.models.parallel.split_inference`). It is removed in ``finally``.

    Raises:
        LayerError: if the layer does not exist, or does not run during a forward pass.
    """

    def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
        if not isinstance(output, torch.Tensor):
            raise LayerError(f"layer {name!r} outputs {type(output)}, not a tensor")
        raise _Reached(output)

    def run(images: torch.Tensor) -> torch.Tensor:
        try:
            model(images)
        except _Reached as reached:
            return reached.output
        raise LayerError(f"layer {name!r} did not run during the forward pass")

    handle = get_layer(model, name).register_forward_hook(hook)
    try:
        yield run
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
