"""Heatmaps of image crops, each mapped back onto the crop's own pixels.

The apps that look at one box at a time (``instances``, ``clean-boxes``, ``rcam_box``) crop the
box with some context (:func:`wsolkit.refine.boxes.box_window`), run a heatmap method on the
crop at the model's input size, and read the map over the crop's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from wsolkit.errors import InputError
from wsolkit.maps.base import HeatmapMethod
from wsolkit.maps.targets import TargetSpec
from wsolkit.models.classifier import Classifier

__all__ = ["crop_heatmaps"]


def crop_heatmaps(
    method: HeatmapMethod,
    classifier: Classifier,
    crops: Sequence[np.ndarray],
    target: TargetSpec = "top1",
    batch_size: int | None = None,
    resize: bool = True,
) -> list[np.ndarray]:
    """The heatmap of each image crop, resized back to the crop's pixels.

    The crops are preprocessed by ``classifier`` (resized to its input size) and run through
    ``method`` in batches; methods that re-read their source images (``uses_sources``) get
    the crops. Each map is resized bilinearly (``cv2.INTER_LINEAR``, pixel centres) to its
    crop's height and width and clipped to [0, 1].

    Args:
        method: a heatmap method built on ``classifier``.
        classifier: its preprocessing is applied to the crops.
        crops: ``(h, w, 3)`` uint8 RGB arrays (not modified), e.g. ``image[y0:y1, x0:x1]``
            for the windows of :func:`wsolkit.refine.boxes.box_window`.
        target: class explained in each crop (``"top1"``: the crop's own top class).
        batch_size: crops per forward pass (None: all at once).
        resize: False keeps the maps at the model's input size.

    Returns:
        One float32 map in [0, 1] per crop, ``(h, w)`` (or the input size).

    Raises:
        InputError: an empty crop or a bad batch size.
    """
    if batch_size is not None and (isinstance(batch_size, bool)
                                   or not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    pictures = []
    for crop in crops:
        if crop.ndim != 3 or min(crop.shape[:2]) < 1:
            raise InputError(f"crops must be non-empty (h, w, 3) arrays, got {crop.shape}")
        pictures.append(Image.fromarray(np.ascontiguousarray(crop)))
    step = batch_size or max(len(pictures), 1)
    out: list[np.ndarray] = []
    for start in range(0, len(pictures), step):
        chunk = pictures[start:start + step]
        extra = {"sources": chunk} if method.uses_sources else {}
        result = method(classifier.preprocess_batch(chunk), target=target, **extra)
        for heat, picture in zip(result.maps.cpu().numpy(), chunk, strict=True):
            if resize:
                heat = np.clip(cv2.resize(heat, picture.size, interpolation=cv2.INTER_LINEAR),
                               0.0, 1.0)
            out.append(heat)
    return out
