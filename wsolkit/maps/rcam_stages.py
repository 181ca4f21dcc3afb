"""rCAM's array stages: the stage record, the guided upsampling chains, batch helpers.

The method classes (:mod:`wsolkit.maps.rcam`) run the forwards and call these on what they
captured; everything here is numpy / torch arithmetic without the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from wsolkit.maps.rcam_config import RCAMConfig
from wsolkit.maps.shape import ShapeMaps
from wsolkit.refine.guided_filter import upsample_chain
from wsolkit.refine.variogram import variogram_radius

__all__ = ["RCAMStages", "Scale", "concatenated", "finer", "guided_chains", "resize_square",
           "unique_rows"]


@dataclass
class RCAMStages:
    """Every intermediate result of rCAM for a batch; stages not computed are None.

    Maps are numpy float32; ``(N, H, W)`` maps are at the input tensor's size.

    Attributes:
        classes: (N,) target class per map (from scale 1).
        shape_layers: the layers of the x2 steps, coarse to fine.
        p1: (N,) softmax probability of the class at scale 1.
        p2: (N,) the same at scale 2.
        cam1: (N, h1, w1) raw CAM at scale 1.
        cam2: (N, h2, w2) raw CAM at scale 2.
        shapes1: per shape layer, one :class:`ShapeMaps` per map at scale 1 (maps of one
            image, e.g. one per class, share it).
        shapes2: the same at scale 2.
        radii1: (N, steps) guided filter radius of each step of the scale-1 chain.
        radii2: the same for the scale-2 chain.
        rcam1: (N, H, W) upsampled ``CAM_1`` (chain output, bilinear to the input size; CAM
            units, not normalized).
        rcam2: the same for ``CAM_2``.
        fused: (N, H, W) ``rCAM_1 * P_1 + rCAM_2 * P_2`` before normalization.
        rcam3: (N, H, W) ``fused`` min-max normalized to [0, 1].
        rcam: (N, H, W) dense CRF foreground marginal, in [0, 1].
    """

    classes: np.ndarray
    shape_layers: tuple[str, ...]
    p1: np.ndarray | None = None
    p2: np.ndarray | None = None
    cam1: np.ndarray | None = None
    cam2: np.ndarray | None = None
    shapes1: list[list[ShapeMaps]] | None = None
    shapes2: list[list[ShapeMaps]] | None = None
    radii1: np.ndarray | None = None
    radii2: np.ndarray | None = None
    rcam1: np.ndarray | None = None
    rcam2: np.ndarray | None = None
    fused: np.ndarray | None = None
    rcam3: np.ndarray | None = None
    rcam: np.ndarray | None = None


@dataclass
class Scale:
    """One scale's forward pass: CAM, class probabilities and shape maps of unique images."""

    cam: np.ndarray  # (N, h, w)
    probs: np.ndarray  # (N,)
    shapes: list[list[ShapeMaps]]  # [layer][unique image]


def guided_chains(config: RCAMConfig, cams: np.ndarray, shapes: list[list[ShapeMaps]],
                  extra: list[ShapeMaps] | None, inverse: torch.Tensor, size: tuple[int, int],
                  radius_of: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Upsample each row's CAM through its image's guides, then bilinear to ``size``.

    ``radius_of`` caches the variogram radius per shape map (by id) across chains: the
    finest scale-2 map guides the last step of both chains but is fitted once.
    """
    per_image = []
    for index in range(len(shapes[0])):
        guides = [layer[index] for layer in shapes]
        if extra is not None and finer(extra[index].maps, guides[-1].maps):
            guides.append(extra[index])
        for guide in guides:
            if config.radius is not None:
                radius_of[id(guide)] = config.radius
            elif id(guide) not in radius_of:
                radius_of[id(guide)] = variogram_radius(
                    guide.guide(), config.min_radius, config.max_radius,
                    config.radius_scale, config.variogram_fit, config.sigma_as)
        per_image.append(([g.maps for g in guides], [radius_of[id(g)] for g in guides]))
    maps, radii_rows = [], []
    for row, cam in enumerate(cams):
        guides, radii = per_image[int(inverse[row])]
        chained = upsample_chain(cam, guides, config.eps, radii)
        maps.append(cv2.resize(chained, (size[1], size[0]), interpolation=cv2.INTER_LINEAR))
        radii_rows.append(radii)
    return np.stack(maps).astype(np.float32), np.asarray(radii_rows, dtype=np.int64)


def concatenated(captured: dict[str, torch.Tensor], group: Sequence[str]) -> torch.Tensor:
    """The outputs of a group of layers stacked along channels, at the first one's size."""
    parts = [captured[name] for name in group]
    size = parts[0].shape[-2:]
    parts = [part if part.shape[-2:] == size else
             F.interpolate(part.float(), size=tuple(size), mode="bilinear", align_corners=False)
             for part in parts]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def resize_square(images: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear resize of an NCHW batch to side x side (pixel centres, no antialiasing)."""
    if tuple(images.shape[-2:]) == (side, side):
        return images
    return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)


def unique_rows(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the distinct images of a batch and, per row, its distinct image's position.

    Batches of one image repeated once per class (every-class maps) then cost one forward
    and one set of shape maps per scale. Rows are compared exactly, after a cheap signature.
    """
    signatures = images.detach().flatten(1).double().sum(dim=1).tolist()
    firsts: list[int] = []
    inverse = []
    for row, signature in enumerate(signatures):
        for position, first in enumerate(firsts):
            if signatures[first] == signature and torch.equal(images[row], images[first]):
                inverse.append(position)
                break
        else:
            inverse.append(len(firsts))
            firsts.append(row)
    return torch.tensor(firsts, dtype=torch.long), torch.tensor(inverse, dtype=torch.long)


def finer(extra: np.ndarray, last: np.ndarray) -> bool:
    """Whether map ``extra`` is larger than ``last`` in both spatial dimensions."""
    return extra.shape[-2] > last.shape[-2] and extra.shape[-1] > last.shape[-1]
