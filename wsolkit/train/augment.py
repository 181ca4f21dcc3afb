"""Training augmentation: random rotation, horizontal flip and white Gaussian noise.

Bency et al. (ECCV 2016, sec. 4.1) make the oversampled copies differ by "a combination of adding
white gaussian noise and random rotations in the +-30 degree range"; a horizontal flip is added
here. All randomness comes from the ``numpy`` generator passed in, so a seeded epoch is
reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from wsolkit.errors import InputError

__all__ = ["Augment"]


@dataclass(frozen=True)
class Augment:
    """Random rotation, flip and pixel noise for one image.

    Attributes:
        rotation: Largest rotation in degrees (uniform in ``[-rotation, rotation]``); 0: none.
        flip: Probability of a horizontal flip.
        noise: Standard deviation of the Gaussian noise, in units of RGB values in [0, 1].
    """

    rotation: float = 30.0
    flip: float = 0.5
    noise: float = 0.03

    def __post_init__(self) -> None:
        if not 0.0 <= self.rotation <= 180.0:
            raise InputError(f"rotation must be in [0, 180] degrees; got {self.rotation}")
        if not 0.0 <= self.flip <= 1.0:
            raise InputError(f"flip must be a probability in [0, 1]; got {self.flip}")
        if self.noise < 0.0:
            raise InputError(f"noise must be >= 0; got {self.noise}")

    def image(
        self, image: Image.Image, rng: np.random.Generator, fill: tuple[int, int, int]
    ) -> Image.Image:
        """Rotate (corners filled with ``fill``) and maybe flip an RGB PIL image."""
        angle = rng.uniform(-self.rotation, self.rotation) if self.rotation else 0.0
        flip = rng.random() < self.flip
        if angle:
            image = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def tensor(
        self, tensor: torch.Tensor, rng: np.random.Generator, std: tuple[float, float, float]
    ) -> torch.Tensor:
        """Add white noise to a normalized CHW tensor (``noise`` / ``std`` per channel)."""
        if not self.noise:
            return tensor
        values = rng.standard_normal(tuple(tensor.shape), dtype=np.float32)
        scale = torch.tensor(std, dtype=tensor.dtype).view(3, 1, 1)
        return tensor + torch.from_numpy(values) * (self.noise / scale)
