"""Resizing heatmaps and rescaling boxes between image sizes."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from wsolkit.errors import InputError

INTERPOLATIONS = ("bilinear", "bicubic")
"""Names accepted by the ``interpolation`` argument."""

_CV2_FLAGS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def _check_size(size: Any, name: str) -> tuple[int, int]:
    """Validate an ``(H, W)`` pair of positive integers."""
    try:
        height, width = size
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a pair (H, W), got {size!r}") from None
    for item in (height, width):
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)) or item < 1:
            raise InputError(f"{name} must be a pair of positive integers (H, W), got {size!r}")
    return int(height), int(width)


def _in_unit_range_numpy(array: np.ndarray) -> bool:
    return array.size > 0 and bool(np.all((array >= 0) & (array <= 1)))


def _resize_numpy(array: np.ndarray, height: int, width: int, flag: int) -> np.ndarray:
    work = array if array.dtype in (np.float32, np.float64) else array.astype(np.float32)
    stack = work.reshape((-1, *work.shape[-2:]))
    out = np.empty((stack.shape[0], height, width), dtype=work.dtype)
    for index, plane in enumerate(stack):
        out[index] = cv2.resize(
            np.ascontiguousarray(plane), (width, height), interpolation=flag
        )
    if _in_unit_range_numpy(array):
        np.clip(out, 0.0, 1.0, out=out)
    return out.reshape((*array.shape[:-2], height, width)).astype(array.dtype, copy=False)


def _resize_torch(tensor: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    work = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
    batch = work.reshape(-1, 1, *work.shape[-2:])
    out = F.interpolate(batch, size=(height, width), mode=mode, align_corners=False)
    if tensor.numel() > 0 and bool(((tensor >= 0) & (tensor <= 1)).all()):
        out = out.clamp(0.0, 1.0)
    return out.reshape(*tensor.shape[:-2], height, width).to(tensor.dtype)


def resize_map(heatmap: Any, size: tuple[int, int], interpolation: str = "bilinear") -> Any:
    """Resize a heatmap or a stack of heatmaps to ``size``.

    numpy uses ``cv2.resize`` (``INTER_LINEAR`` / ``INTER_CUBIC``), torch uses
    ``F.interpolate`` with ``align_corners=False``; both sample at pixel centres. If every
    input value lies in [0, 1] the result is clipped to [0, 1] (bicubic overshoots).

    Args:
        heatmap: (H, W) or (N, H, W) floating numpy array or torch tensor (not modified).
        size: Output ``(H, W)``, positive integers.
        interpolation: ``"bilinear"`` or ``"bicubic"``.

    Returns:
        A new array of the input's type, dtype (and device) with the last two dims resized.

    Raises:
        InputError: Unknown interpolation, bad size, wrong rank or non-floating dtype.
    """
    if not isinstance(interpolation, str) or interpolation not in INTERPOLATIONS:
        raise InputError(
            f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}"
        )
    height, width = _check_size(size, "size")
    if isinstance(heatmap, torch.Tensor):
        floating = heatmap.is_floating_point()
    elif isinstance(heatmap, np.ndarray):
        floating = np.issubdtype(heatmap.dtype, np.floating)
    else:
        raise InputError(
            f"heatmap must be a numpy array or torch tensor, got {type(heatmap).__name__}"
        )
    if heatmap.ndim not in (2, 3):
        raise InputError(
            f"heatmap must be (H, W) or (N, H, W), got shape {tuple(heatmap.shape)}"
        )
    if not floating:
        raise InputError(f"heatmap must have a floating dtype, got {heatmap.dtype}")
    if min(heatmap.shape[-2:]) < 1:
        raise InputError(f"heatmap must have H, W >= 1, got shape {tuple(heatmap.shape)}")
    if isinstance(heatmap, torch.Tensor):
        return _resize_torch(heatmap, height, width, interpolation)
    return _resize_numpy(heatmap, height, width, _CV2_FLAGS[interpolation])


def scale_boxes(boxes: Any, from_size: tuple[int, int], to_size: tuple[int, int]) -> Any:
    """Rescale boxes from one image size to another.

    x coordinates are multiplied by ``W_to / W_from`` and y coordinates by
    ``H_to / H_from``; with edge coordinates this maps the full image onto the full image.

    Args:
        boxes: (K, 4) ``x0, y0, x1, y1`` boxes, numpy array or torch tensor (not modified).
        from_size: ``(H, W)`` of the image the boxes refer to.
        to_size: ``(H, W)`` of the target image.

    Returns:
        New (K, 4) boxes of the input's type: float32 for numpy; for torch the input's
        floating dtype (float32 for integer input) on the input's device.

    Raises:
        InputError: Boxes not (K, 4) or a size not a pair of positive integers.
    """
    from_h, from_w = _check_size(from_size, "from_size")
    to_h, to_w = _check_size(to_size, "to_size")
    if not isinstance(boxes, (np.ndarray, torch.Tensor)):
        raise InputError(f"boxes must be a numpy array or torch tensor, got {type(boxes).__name__}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"boxes must have shape (K, 4), got {tuple(boxes.shape)}")
    factors = [to_w / from_w, to_h / from_h, to_w / from_w, to_h / from_h]
    if isinstance(boxes, torch.Tensor):
        dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
        work = torch.float64 if dtype == torch.float64 else torch.float32
        scale = torch.tensor(factors, dtype=work, device=boxes.device)
        return (boxes.to(work) * scale).to(dtype)
    return (boxes.astype(np.float64) * np.asarray(factors)).astype(np.float32)
