"""Refiners: turn heatmaps into masks and boxes, resize maps and boxes, and refine maps.

All functions are pure: numpy or torch in, same type out (boxes and scores are always numpy).
The guided filter, variogram and dense CRF refiners take numpy arrays only.
"""

from wsolkit.refine.components import (
    Localization,
    boxes_from_mask,
    component_masks,
    largest_component,
    localize,
)
from wsolkit.refine.crf import CRFParams, crf_kl_divergences, dense_crf
from wsolkit.refine.guided_filter import guided_filter, guided_upsample_x2
from wsolkit.refine.resize import resize_map, scale_boxes
from wsolkit.refine.threshold import threshold_map, threshold_value
from wsolkit.refine.variogram import (
    VariogramFit,
    empirical_variogram,
    fit_gaussian_variogram,
    variogram_radius,
)

__all__ = [
    "CRFParams",
    "Localization",
    "VariogramFit",
    "boxes_from_mask",
    "component_masks",
    "crf_kl_divergences",
    "dense_crf",
    "empirical_variogram",
    "fit_gaussian_variogram",
    "guided_filter",
    "guided_upsample_x2",
    "largest_component",
    "localize",
    "resize_map",
    "scale_boxes",
    "threshold_map",
    "threshold_value",
    "variogram_radius",
]
