"""rCAM inside given boxes (the paper's rCAM_Box): box-to-mask segmentation.

Ha et al. run rCAM on the boxes of a detector (Faster R-CNN) to segment every instance. Each
box is cropped with a margin, the crop is preprocessed like any image (resized to the model's
input size, 224x224 for the embedded model) and run through rCAM, and the map is resized back
to the crop and cut to the box. :func:`rcam_boxes` pastes the maps of several boxes into one
image-sized map (the maximum where boxes overlap); threshold it for a mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from wsolkit.errors import InputError
from wsolkit.maps.crops import crop_heatmaps
from wsolkit.maps.rcam import STAGES, RCAMConfig
from wsolkit.maps.registry import get_method
from wsolkit.maps.targets import TargetSpec
from wsolkit.models.classifier import Classifier, as_classifier
from wsolkit.refine.boxes import box_rect, box_window


def rcam_in_box(
    model: Classifier | torch.nn.Module,
    image: Image.Image | np.ndarray,
    box: Sequence[float] | np.ndarray,
    margin: float = 0.1,
    config: RCAMConfig | None = None,
    target: TargetSpec = "top1",
    stage: str = "rcam",
) -> np.ndarray:
    """The rCAM map of one box: an (h, w) float32 map in [0, 1] covering the box's pixels.

    Args:
        model: a :class:`~wsolkit.models.Classifier` (e.g. ``wsolkit.load_model()``) or a
            bare ``nn.Module``.
        image: RGB PIL image or (H, W, 3) uint8 array.
        box: ``x0, y0, x1, y1`` in pixels, edge coordinates; the map covers pixel columns
            ``floor(x0) .. ceil(x1) - 1`` and rows likewise (clipped to the image).
        margin: context added on every side before cropping, as a fraction of the box's
            width (left/right) and height (top/bottom).
        config: rCAM settings (default: :class:`RCAMConfig`).
        target: class to explain in the crop: ``"top1"`` of the crop or a class index.
        stage: which map to return: ``rcam`` (after the CRF) or ``rcam1``/``rcam2``/``rcam3``.

    Returns:
        (h, w) float32 map with ``h = ceil(y1) - floor(y0)``, ``w = ceil(x1) - floor(x0)``
        (after clipping to the image).

    Raises:
        InputError: bad image, box, margin or stage.
    """
    boxes = np.asarray(box, dtype=np.float64).reshape(1, -1)
    return _box_maps(model, image, boxes, margin, config, target, stage)[0][0]


def rcam_boxes(
    model: Classifier | torch.nn.Module,
    image: Image.Image | np.ndarray,
    boxes: Sequence[Sequence[float]] | np.ndarray,
    margin: float = 0.1,
    config: RCAMConfig | None = None,
    target: TargetSpec = "top1",
    stage: str = "rcam",
) -> np.ndarray:
    """The rCAM maps of several boxes pasted into one (H, W) float32 map (0 outside).

    The crops go through the model as one batch. Where boxes overlap the larger value wins.
    Arguments as :func:`rcam_in_box`, with ``boxes`` a (K, 4) array (K may be 0).
    """
    rgb = _rgb(image)
    array = np.asarray(boxes, dtype=np.float64)
    canvas = np.zeros(rgb.shape[:2], dtype=np.float32)
    if array.size == 0:
        return canvas
    maps, regions = _box_maps(model, rgb, array, margin, config, target, stage)
    for heat, (left, top, right, bottom) in zip(maps, regions, strict=True):
        np.maximum(canvas[top:bottom, left:right], heat, out=canvas[top:bottom, left:right])
    return canvas


def _box_maps(model, image, boxes, margin, config, target, stage):
    """Maps of boxes (list of (h, w) arrays) and their pixel regions (x0, y0, x1, y1)."""
    if stage not in STAGES:
        raise InputError(f"stage={stage!r}: use one of {', '.join(STAGES)}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) \
            or not 0 <= margin < float("inf"):
        raise InputError(f"margin={margin!r}: must be a finite number >= 0")
    rgb = _rgb(image)
    height, width = rgb.shape[:2]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        raise InputError(f"boxes must be finite (K, 4) x0, y0, x1, y1, got {boxes.shape}")
    classifier = as_classifier(model)
    regions, windows = [], []
    for box in boxes:
        region = box_rect(box, (height, width))
        if region[2] <= region[0] or region[3] <= region[1]:
            raise InputError(
                f"box {[float(v) for v in box]} is empty inside the {width}x{height} image"
            )
        regions.append(region)
        windows.append(box_window(box, margin, (height, width)))
    method = get_method(stage)(classifier, config=config)
    maps = []
    crops = [rgb[y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
    heats = crop_heatmaps(method, classifier, crops, target=target)
    for heat, window, region in zip(heats, windows, regions, strict=True):
        top, left = region[1] - window[1], region[0] - window[0]
        maps.append(np.ascontiguousarray(
            heat[top:top + region[3] - region[1], left:left + region[2] - region[0]],
            dtype=np.float32))
    return maps, regions


def _rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 \
            and image.dtype == np.uint8 and min(image.shape[:2]) > 0:
        return image
    shape = getattr(image, "shape", None)
    raise InputError(
        f"image must be an RGB PIL image or an (H, W, 3) uint8 array, got "
        f"{type(image).__name__}{'' if shape is None else f' of shape {shape}'}"
    )
