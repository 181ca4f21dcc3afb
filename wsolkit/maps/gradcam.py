"""Gradient-based class maps: Grad-CAM, Grad-CAM++, XGrad-CAM and LayerCAM."""

from __future__ import annotations

import torch

from wsolkit.maps.base import ForwardPass, HeatmapMethod
from wsolkit.maps.forward import weighted_sum


def gradcampp_weights(
    activations: torch.Tensor,
    grads: torch.Tensor,
    grads2: torch.Tensor | None = None,
    grads3: torch.Tensor | None = None,
) -> torch.Tensor:
    """Grad-CAM++ channel weights (Chattopadhay et al., WACV 2018, eq. 19 with exp scores).

    ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)`` (0 where the denominator is 0) and
    ``w_k = sum_ij alpha_ij relu(g_ij)``. With the exponential score the exp(S) factors cancel
    in alpha and only scale w, which normalization removes. ``grads2``/``grads3`` default to
    ``g^2``/``g^3``; Smooth Grad-CAM++ passes their averages over noisy copies instead.
    """
    grads2 = grads.pow(2) if grads2 is None else grads2
    grads3 = grads.pow(3) if grads3 is None else grads3
    denominator = 2 * grads2 + activations.sum(dim=(2, 3), keepdim=True) * grads3
    safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    alpha = torch.where(denominator != 0, grads2 / safe, torch.zeros_like(grads2))
    return (alpha * grads.clamp(min=0)).sum(dim=(2, 3))


class GradCAM(HeatmapMethod):
    """Grad-CAM (Selvaraju et al., ICCV 2017): channel weight = spatial mean of the gradient."""

    name = "gradcam"
    summary = "Grad-CAM: feature maps weighted by their spatially averaged gradients"
    needs_gradients = True

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """``sum_k mean_ij(dS/dA_k) A_k``."""
        weights = forward.gradient_means()
        return forward.weighted_sum(weights)


class GradCAMpp(HeatmapMethod):
    """Grad-CAM++: pixel-wise weighted positive gradients (better for several instances)."""

    name = "gradcampp"
    summary = "Grad-CAM++: higher-order pixel weighting of positive gradients"
    needs_gradients = True

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """``sum_k w_k A_k`` with the Grad-CAM++ weights."""
        activations = forward.activations.detach()
        return weighted_sum(gradcampp_weights(activations, forward.gradients()), activations)


class XGradCAM(HeatmapMethod):
    """XGrad-CAM (Fu et al., BMVC 2020): gradients weighted by normalized activations."""

    name = "xgradcam"
    summary = "XGrad-CAM: axiom-based weights sum_ij (A_ij / sum A) * gradient_ij"
    needs_gradients = True

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """``w_k = sum_ij A_kij g_kij / sum_ij A_kij`` (0 for an all-zero channel)."""
        activations = forward.activations.detach()
        totals = activations.sum(dim=(2, 3))
        safe = torch.where(totals != 0, totals, torch.ones_like(totals))
        numerators = (activations * forward.gradients()).sum(dim=(2, 3))
        weights = torch.where(totals != 0, numerators / safe, torch.zeros_like(totals))
        return weighted_sum(weights, activations)


class LayerCAM(HeatmapMethod):
    """LayerCAM (Jiang et al., TIP 2021): element-wise positive gradient times activation."""

    name = "layercam"
    summary = "LayerCAM: positive gradients weight every activation location (any layer)"
    needs_gradients = True

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """``sum_k relu(g_k) * A_k``."""
        return (forward.gradients().clamp(min=0) * forward.activations.detach()).sum(dim=1)
