"""Capturing one layer's output during a forward pass, with hooks that clean up after themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from wsolkit.errors import LayerError
from wsolkit.maps.tokens import Reshape, resolve_reshape
from wsolkit.models.layers import get_layer


class LayerCapture:
    """The output of one layer in one forward pass.

    With ``track_gradients`` the forward pass before the layer runs without an autograd graph
    (the caller runs the model under ``torch.no_grad()``); the hook switches gradients on from the
    layer onwards, so a backward pass only goes from the score back to this layer.

    Token and channels-last outputs are read as (N, C, h, w) maps through a
    :class:`~wsolkit.maps.tokens.Reshape` (``reshape`` option, automatic by default); with
    gradients, the network continues from the leaf map turned back into its own layout.
    """

    def __init__(self, name: str, track_gradients: bool, model: nn.Module | None = None,
                 reshape: str | None = None, image_size: tuple[int, int] | None = None) -> None:
        self.name = name
        self.track_gradients = track_gradients
        self.model = model
        self.reshape_spec = reshape
        self.image_size = image_size
        self.reshape: Reshape | None = None
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
        if not isinstance(output, torch.Tensor) or output.ndim not in (3, 4):
            kind = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output)
            raise LayerError(f"layer {self.name!r} outputs {kind}, not an (N, C, h, w) map")
        model = self.model if self.model is not None else _module
        self.reshape = resolve_reshape(self.reshape_spec, model, self.name, output,
                                       self.image_size)
        if not self.track_gradients:
            # A clone, because layers after this one may modify their input in place.
            self.activation = self.reshape.to_map(output.detach()).clone()
            return None
        torch.set_grad_enabled(True)  # restored by the caller's no_grad block on exit
        leaf = self.reshape.to_map(output.detach()).contiguous()
        self.activation = leaf.requires_grad_(True)
        return self.reshape.from_map(self.activation, output.detach()).clone()


@contextmanager
def capture_layer(
    model: nn.Module, name: str, track_gradients: bool = False, reshape: str | None = None,
    image_size: tuple[int, int] | None = None,
) -> Iterator[LayerCapture]:
    """Hook layer ``name`` of ``model`` for the duration of the ``with`` block.

    The hook is removed in ``finally``, also when the forward pass raises. ``reshape`` and
    ``image_size`` (the input's (H, W)) choose how a token or channels-last output becomes a
    map (:func:`wsolkit.maps.tokens.resolve_reshape`).

    Raises:
        LayerError: if the layer does not exist.
    """
    capture = LayerCapture(name, track_gradients, model, reshape, image_size)
    handle = get_layer(model, name).register_forward_hook(capture.hook)
    try:
        yield capture
    finally:
        handle.remove()


# Activations whose backward pass multiplies by a non-negative mask: clamping the gradient of
# their output at zero equals clamping the gradient of their input (relu(g * m) = relu(g) * m).
RELU_TYPES = (nn.ReLU, nn.ReLU6)


@contextmanager
def clamp_relu_gradients(model: nn.Module, skip: str | None = None) -> Iterator[None]:
    """Let only positive gradients pass back through every ReLU module of ``model``.

    For the ``with`` block, a forward hook on each ``nn.ReLU`` / ``nn.ReLU6`` module (except
    ``skip``, the hooked layer, whose own gradient is the one a method reads) puts a tensor hook
    on its output that clamps the output's gradient at zero. The tensor hooks live on the graph
    of that forward pass only; the module hooks are removed in ``finally``. Functional ReLUs
    (``F.relu`` called in a ``forward``) are not modules and are not clamped.
    """

    def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(_positive)

    handles = [module.register_forward_hook(hook) for name, module in model.named_modules()
               if isinstance(module, RELU_TYPES) and name != skip]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _positive(grad: torch.Tensor) -> torch.Tensor:
    return grad.clamp(min=0)


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
