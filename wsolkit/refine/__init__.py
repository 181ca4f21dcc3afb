"""Refiners: turn heatmaps into masks and boxes, resize maps and boxes, and refine maps.

All functions are pure: numpy or torch in, same type out (boxes and scores are always numpy).
The guided filter, variogram and dense CRF refiners take numpy arrays only.
"""

from wsolkit.refine.boxes import (
    box_areas,
    box_rect,
    box_window,
    clip_boxes,
    expand_box,
    expand_boxes,
    valid_boxes,
)
from wsolkit.refine.components import (
    Localization,
    box_means,
    boxes_from_mask,
    component_masks,
    largest_component,
    localize,
    localize_stack,
)
from wsolkit.refine.crf import CRFParams, crf_kl_divergences, dense_crf
from wsolkit.refine.grabcut import box_prior, grabcut, grabcut_box
from wsolkit.refine.guided_filter import guided_filter, guided_upsample_x2
from wsolkit.refine.nms import nms
from wsolkit.refine.resize import resize_map, scale_boxes
from wsolkit.refine.stratify import stratify
from wsolkit.refine.threshold import threshold_map, threshold_value
from wsolkit.refine.variogram import (
    VariogramFit,
    empirical_variogram,
    empirical_variogram_counts,
    fit_cressie_variogram,
    fit_gaussian_variogram,
    variogram_radius,
)

__all__ = [
    "CRFParams",
    "Localization",
    "VariogramFit",
    "box_areas",
    "box_means",
    "box_prior",
    "box_rect",
    "box_window",
    "boxes_from_mask",
    "clip_boxes",
    "component_masks",
    "crf_kl_divergences",
    "dense_crf",
    "empirical_variogram",
    "empirical_variogram_counts",
    "expand_box",
    "expand_boxes",
    "fit_cressie_variogram",
    "fit_gaussian_variogram",
    "grabcut",
    "grabcut_box",
    "guided_filter",
    "guided_upsample_x2",
    "largest_component",
    "localize",
    "localize_stack",
    "nms",
    "resize_map",
    "scale_boxes",
    "stratify",
    "threshold_map",
    "threshold_value",
    "valid_boxes",
    "variogram_radius",
]
