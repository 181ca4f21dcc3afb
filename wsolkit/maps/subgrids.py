"""The geometry of beam search (Bency et al., ECCV 2016, sec. 3.3-3.4): sub-grids and crops.

Children of a sub-grid (eq. 6), the crop-resize of feature maps to a sub-grid (as
``F.interpolate`` of the crop, or its global average directly), image crops, back-projection
of children to image regions (eq. 5), beam selection and the sum-pooled heatmap. Pure torch
functions, used by :class:`wsolkit.maps.beam.BeamSearch`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

GridBox = tuple[int, int, int, int]
# Regions closer than this fraction of the image size count as the same region.
_SAME_REGION = 1e-4


def grid_children(box: GridBox) -> list[GridBox]:
    """Children of a sub-grid node (eq. 6): one cell narrower or one cell shorter, inside it.

    Args:
        box: ``(x, y, w, h)`` of the parent, in cells.

    Returns:
        ``(x, y, w - 1, h)``, ``(x + 1, y, w - 1, h)``, ``(x, y, w, h - 1)``,
        ``(x, y + 1, w, h - 1)``; a side of one cell is not shrunk.
    """
    x, y, w, h = box
    children: list[GridBox] = []
    if w > 1:
        children += [(x, y, w - 1, h), (x + 1, y, w - 1, h)]
    if h > 1:
        children += [(x, y, w, h - 1), (x, y + 1, w, h - 1)]
    return children


def resize_matrix(start: int, length: int, size: int) -> torch.Tensor:
    """(size, size) matrix ``A`` with ``A @ v == resize(v[start:start + length], size)``.

    The 1-D bilinear kernel of ``F.interpolate(..., align_corners=False)``; applied along both
    axes it is that function's 2-D bilinear resize of the cropped cells.
    """
    eye = torch.eye(length, dtype=torch.float64)[None]  # (1, length, length): one impulse each
    weights = F.interpolate(eye, size=size, mode="linear", align_corners=False)[0]  # (in, out)
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix[:, start:start + length] = weights.T
    return matrix


def crop_resize(features: torch.Tensor, boxes: list[GridBox]) -> torch.Tensor:
    """Crop every feature map to every sub-grid and resize it back to the grid size.

    Args:
        features: (B, K, h, w) feature maps.
        boxes: C sub-grids ``(x, y, w, h)``.

    Returns:
        (B * C, K, h, w): row ``b * C + c`` is map ``b`` cropped to box ``c``, bilinearly
        resized (as ``F.interpolate(..., align_corners=False)`` of the crop).
    """
    count, channels, height, width = features.shape
    rows, cols = _resize_matrices(tuple(boxes), height, width)
    rows, cols = rows.to(features), cols.to(features)
    # rows of every box at once: (C*h, h) @ (h, B*K*w), then columns box by box: two big GEMMs
    # instead of B*C*K tiny ones
    by_row = features.permute(2, 0, 1, 3).reshape(height, -1)
    resized_rows = (rows.reshape(-1, height) @ by_row).reshape(len(boxes), height, count,
                                                                 channels, width)
    out = torch.stack([resized_rows[c] @ cols[c].T for c in range(len(boxes))])  # (C,h,B,K,w)
    return out.permute(2, 0, 3, 1, 4).reshape(-1, channels, height, width)


def crop_resize_pooled(features: torch.Tensor, boxes: list[GridBox]) -> torch.Tensor:
    """Global average pool of :func:`crop_resize`, without making the resized maps.

    The resize is linear, so the mean of a resized crop is a weighted sum of its cells (the
    column sums of the resize matrices): (B * C, K), equal to
    ``crop_resize(features, boxes).mean(dim=(2, 3))`` up to rounding, many times faster.
    """
    height, width = features.shape[-2:]
    rows, cols = _resize_matrices(tuple(boxes), height, width)
    row_weights = (rows.sum(1) / height).to(features)  # (C, h): weight of each input row
    col_weights = (cols.sum(1) / width).to(features)  # (C, w)
    pooled = torch.einsum("cY,bkYX,cX->bck", row_weights, features, col_weights)
    return pooled.reshape(-1, features.shape[1])


@functools.lru_cache(maxsize=64)
def _resize_matrices(boxes: tuple[GridBox, ...], height: int,
                     width: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.stack([resize_matrix(y, h, height) for _, y, _, h in boxes])
    cols = torch.stack([resize_matrix(x, w, width) for x, _, w, _ in boxes])
    return rows, cols


def crop_images(images: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Bilinear crops of ``regions`` (pixel edge coordinates), each resized to the input size.

    Args:
        images: (B, C, H, W) one image per region.
        regions: (B, 4) ``x0, y0, x1, y1`` in pixels of ``images``.
    """
    count, channels, height, width = images.shape
    x0, y0, x1, y1 = regions.to(images).unbind(1)
    theta = torch.zeros(count, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = (x1 - x0) / width
    theta[:, 0, 2] = (x0 + x1) / width - 1
    theta[:, 1, 1] = (y1 - y0) / height
    theta[:, 1, 2] = (y0 + y1) / height - 1
    grid = F.affine_grid(theta, [count, channels, height, width], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def region_heat(regions: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor, count: int,
                size: tuple[int, int]) -> torch.Tensor:
    """Sum-pool scored regions into (count, H, W) maps, pixels weighted by their coverage.

    Args:
        regions: (B, 4) ``x0, y0, x1, y1`` in pixels.
        scores: (B,) weight of each region.
        rows: (B,) output map of each region.
        count: number of maps.
        size: (H, W) of the maps.
    """
    height, width = size
    regions = regions.to(torch.float32)
    xs = torch.arange(width, dtype=torch.float32, device=regions.device)
    ys = torch.arange(height, dtype=torch.float32, device=regions.device)
    cover_x = (torch.minimum(regions[:, 2:3], xs + 1) - torch.maximum(regions[:, 0:1], xs))
    cover_y = (torch.minimum(regions[:, 3:4], ys + 1) - torch.maximum(regions[:, 1:2], ys))
    weighted = cover_y.clamp(min=0) * scores.to(torch.float32)[:, None]
    heat = torch.einsum("bh,bw->bhw", weighted, cover_x.clamp(min=0))
    out = torch.zeros(count, height, width, dtype=torch.float32, device=regions.device)
    return out.index_add_(0, rows.to(regions.device), heat)


def project(regions: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """(B * C, 4) image regions of the C children (grid fractions) of B parent regions (eq. 5)."""
    x0, y0, x1, y1 = regions[:, None].unbind(2)
    fx0, fy0, fx1, fy1 = fractions[None].unbind(2)
    width, height = x1 - x0, y1 - y0
    out = torch.stack([x0 + fx0 * width, y0 + fy0 * height, x0 + fx1 * width,
                       y0 + fy1 * height], dim=2)
    return out.reshape(-1, 4)


def select_beams(regions: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor,
            width: int) -> torch.Tensor:
    """Indices of the best ``width`` distinct regions of each row, rows in order, best first."""
    keep: list[int] = []
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    keys = torch.round(regions / _SAME_REGION).long().tolist()
    seen: dict[int, set[tuple[int, ...]]] = {}
    chosen: dict[int, list[int]] = {}
    for index in order:
        row = int(rows[index])
        kept = chosen.setdefault(row, [])
        key = tuple(keys[index])
        if len(kept) >= width or key in seen.setdefault(row, set()):
            continue
        seen[row].add(key)
        kept.append(index)
    for row in sorted(chosen):
        keep.extend(chosen[row])
    return torch.tensor(keep, dtype=torch.long)


__all__ = [
    "GridBox",
    "crop_images",
    "crop_resize",
    "crop_resize_pooled",
    "grid_children",
    "project",
    "region_heat",
    "resize_matrix",
    "select_beams",
]
