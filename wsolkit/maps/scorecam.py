"""Score-CAM (Wang et al., CVPRW 2020): channel weight = class score of the channel-masked image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from wsolkit.checks import normalize_minmax
from wsolkit.errors import InputError
from wsolkit.maps.base import ForwardPass, HeatmapMethod
from wsolkit.maps.forward import weighted_sum


def normalized_masks(activations: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Upsample (B, h, w) maps to ``size`` and min-max normalize each (constant -> zeros)."""
    masks = F.interpolate(activations[:, None], size=size, mode="bilinear",
                          align_corners=False)[:, 0]
    return normalize_minmax(masks)


class ScoreCAM(HeatmapMethod):
    """``w_k = softmax(f(X * H_k))_c`` with H_k the upsampled, normalized channel k.

    The masked images of all (image, channel) pairs go through the model in batches of
    ``batch_size``. A callable target's value replaces the softmax score.

    Args:
        batch_size: masked images per forward pass.
        max_channels: keep only this many channels per image, those with the highest mean
            activation (None: all channels, as published; costs one forward per channel).
    """

    name = "scorecam"
    summary = "Score-CAM: channels weighted by the class score of the image masked with them"

    def __init__(self, *args, batch_size: int = 64, max_channels: int | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size}: must be at least 1")
        if max_channels is not None and max_channels < 1:
            raise InputError(f"max_channels={max_channels}: must be at least 1 or None")
        self.batch_size, self.max_channels = batch_size, max_channels

    def layer_map(self, forward: ForwardPass) -> torch.Tensor:
        """Score every kept channel's masked image and weight the channels by those scores."""
        activations = forward.activations
        count, channels = activations.shape[:2]
        keep = channels if self.max_channels is None else min(self.max_channels, channels)
        chosen = activations.mean(dim=(2, 3)).topk(keep, dim=1).indices  # (N, keep)
        image_ids = torch.arange(count, device=activations.device).repeat_interleave(keep)
        channel_ids = chosen.reshape(-1)
        weights = torch.zeros(count, channels, device=activations.device)
        size = tuple(forward.images.shape[-2:])
        for start in range(0, len(image_ids), self.batch_size):
            rows = image_ids[start:start + self.batch_size]
            cols = channel_ids[start:start + self.batch_size]
            masks = normalized_masks(activations[rows, cols], size)
            with torch.no_grad():
                logits = self.module(forward.images[rows] * masks[:, None])
            weights[rows, cols] = self._scores(logits, forward, rows).float()
        return weighted_sum(weights, activations)

    @staticmethod
    def _scores(logits: torch.Tensor, forward: ForwardPass, rows: torch.Tensor) -> torch.Tensor:
        targets = forward.targets
        if targets.score_fn is not None:
            return targets.scores(logits)
        classes = targets.classes.to(logits.device)[rows]
        return logits.softmax(dim=1).gather(1, classes[:, None]).squeeze(1)
