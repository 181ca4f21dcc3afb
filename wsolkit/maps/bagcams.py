"""BagCAMs (Zhu et al., ECCV 2022): bagging the regional localizers of a layer.

Every position of a layer's map holds a "regional localizer", the gradient ``g`` of the log of
the class score w.r.t. its feature vector ``f``, back-propagated with only positive gradients
passing each ReLU. Bagging them gives, per channel ``k`` and position ``p``:

    ``M_p = sum_k ReLU(GAP(g_k * f_k + 1) * g_kp * f_kp)``

(``GAP`` the spatial mean; the sum runs over the channels, ``dim=1`` in the authors' code,
zh460045050/BagCAMs ``libs/cams/bagcams.py``), then min-max normalization. The authors apply
it at a mid-level layer (``layer3`` of ResNet-50, their default ``target_layer``).

Log of a non-positive score: ``d log s = ds / s`` has no meaning for ``s <= 0`` (the authors'
``logits.log()`` gives NaN there and their normalization then an all-zero map). Here the
gradient of ``s`` itself is used for such a row (as if ``s = 1``), so the map stays defined.
"""

from __future__ import annotations

from typing import Any

import torch

from wsolkit.maps.base import ForwardPass, HeatmapMethod
from wsolkit.maps.hooks import clamp_relu_gradients


class BagCAMs(HeatmapMethod):
    """``sum_k ReLU(mean_p(g_k f_k + 1) * g_k f_k)`` with ReLU-clamped gradients of log(score).

    The gradient clamping (:func:`~wsolkit.maps.hooks.clamp_relu_gradients`) covers every
    ``nn.ReLU`` / ``nn.ReLU6`` module after the hooked layer, only during this method's forward
    and backward pass; functional ReLUs are not clamped.
    """

    name = "bagcams"
    summary = ("BagCAMs: bagged regional localizers, sum_k relu(mean(g*f + 1) * g*f) with "
               "ReLU-clamped gradients of log(score)")
    needs_gradients = True

    def forward(self, images: torch.Tensor, layer: str, **request: Any) -> ForwardPass:
        """The base's forward pass with the ReLUs after ``layer`` clamping gradients.

        ``request`` holds the base's target arguments (``targets``, ``target``, ``labels``).
        """
        with clamp_relu_gradients(self.module, skip=layer):
            return super().forward(images, layer, **request)

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """Bag the regional localizers ``g * f`` of every position."""
        scores = forward.scores().detach()
        # d log s = ds / s where s > 0; the plain gradient of s elsewhere (module docstring)
        scale = torch.where(scores > 0, 1 / torch.where(scores > 0, scores, 1.0), 1.0)
        grads = forward.gradients() * scale.to(forward.activations)[:, None, None, None]
        localizers = grads * forward.activations.detach()
        weights = (localizers + 1).mean(dim=(2, 3), keepdim=True)
        return (weights * localizers).clamp(min=0).sum(dim=1)
