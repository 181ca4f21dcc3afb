"""The WSOL protocol's map grid: every map is scored at 224x224 (wsolevaluation)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from wsolkit.eval.box_accuracy import normalize_scoremap
from wsolkit.maps import HeatmapMethod

PROTOCOL_SIZE = 224

__all__ = ["PROTOCOL_SIZE", "protocol_map", "protocol_source"]


def protocol_source(method: HeatmapMethod, raw: torch.Tensor) -> np.ndarray:
    """The map the protocol resizes: the raw layer-resolution map, after the method's ReLU.

    wsolevaluation resizes the layer-resolution map itself to 224x224 with OpenCV's bicubic
    kernel; scoring the method's own (bilinear) upsampled output instead would add a second
    resampling that the protocol does not have.
    """
    source = raw.clamp(min=0) if method.relu else raw
    return source.detach().float().cpu().numpy()


def protocol_map(heatmap: np.ndarray) -> np.ndarray:
    """Resize a map to 224x224 (bicubic) and min-max normalize it (constant -> zeros)."""
    resized = cv2.resize(heatmap.astype(np.float64), (PROTOCOL_SIZE, PROTOCOL_SIZE),
                         interpolation=cv2.INTER_CUBIC)
    return normalize_scoremap(resized).astype(np.float32)
