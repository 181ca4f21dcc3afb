"""Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with gradients averaged over noisy copies."""

from __future__ import annotations

import torch

from wsolkit.errors import InputError
from wsolkit.maps.base import ForwardPass, HeatmapMethod
from wsolkit.maps.forward import weighted_sum
from wsolkit.maps.gradcam import gradcampp_weights


class SmoothGradCAMpp(HeatmapMethod):
    """Average activations, gradients and their 2nd/3rd powers over ``samples`` noisy inputs.

    Noise is Gaussian with standard deviation ``noise`` times each image's value range
    (SmoothGrad's recommended 10-20%), from a seeded generator so results repeat.

    Args:
        samples: number of noisy copies per image.
        noise: noise level as a fraction of the image's value range.
        seed: random seed of the noise.
    """

    name = "smoothgradcampp"
    summary = "Smooth Grad-CAM++: Grad-CAM++ terms averaged over noisy copies of the input"
    needs_gradients = True

    def __init__(self, *args, samples: int = 8, noise: float = 0.15, seed: int = 0,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if samples < 1:
            raise InputError(f"samples={samples}: must be at least 1")
        if noise < 0:
            raise InputError(f"noise={noise}: must be >= 0")
        self.samples, self.noise, self.seed = samples, noise, seed

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """Grad-CAM++ weights of the averaged terms applied to the averaged activations."""
        images = forward.images
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        spread = self.noise * (images.amax(dim=(1, 2, 3), keepdim=True)
                               - images.amin(dim=(1, 2, 3), keepdim=True))
        totals = None
        for _ in range(self.samples):
            noise = torch.randn(images.shape, generator=generator, device=images.device)
            noisy = self.forward(images + noise * spread, forward.layer, forward.targets)
            grads = noisy.gradients()
            terms = (noisy.activations.detach(), grads, grads.pow(2), grads.pow(3))
            if totals is not None:
                terms = tuple(t + u for t, u in zip(totals, terms, strict=True))
            totals = terms
        activations, grads, grads2, grads3 = (t / self.samples for t in totals)
        return weighted_sum(gradcampp_weights(activations, grads, grads2, grads3), activations)
