"""Refiners: turn heatmaps into masks and boxes, and resize maps and boxes.

All functions are pure: numpy or torch in, same type out (boxes and scores are always numpy).
"""

from wsolkit.refine.components import (
    Localization,
    boxes_from_mask,
    component_masks,
    largest_component,
    localize,
)
from wsolkit.refine.resize import resize_map, scale_boxes
from wsolkit.refine.threshold import threshold_map, threshold_value

__all__ = [
    "Localization",
    "boxes_from_mask",
    "component_masks",
    "largest_component",
    "localize",
    "resize_map",
    "scale_boxes",
    "threshold_map",
    "threshold_value",
]
