"""Box geometry: checks, areas, clipping, growing, and the pixels a box covers.

Boxes are ``(K, 4)`` ``x0, y0, x1, y1`` pixel-edge coordinates (``x1 = x0 + width``; a box
covering pixel columns 3..5 is ``x0=3, x1=6``), numpy arrays or torch tensors; results are
numpy. Areas are ``(x1 - x0) * (y1 - y0)`` (no ``+ 1``), as
:func:`wsolkit.eval.detection.box_iou`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np

from wsolkit import checks as _checks
from wsolkit.checks import check_scores
from wsolkit.errors import InputError

__all__ = [
    "box_areas",
    "box_rect",
    "box_window",
    "check_boxes",
    "check_scores",
    "clip_boxes",
    "expand_box",
    "expand_boxes",
    "valid_boxes",
]


def check_boxes(value: Any, name: str = "boxes", ordered: bool = False) -> np.ndarray:
    """:func:`wsolkit.checks.check_boxes`, array-likes accepted (numpy, torch, sequences)."""
    return _checks.check_boxes(value, name, array_like=True, ordered=ordered)


def _check_size(size: Any) -> tuple[float, float]:
    try:
        height, width = size
    except (TypeError, ValueError):
        raise InputError(f"size must be a pair (H, W), got {size!r}") from None
    for item in (height, width):
        if isinstance(item, bool) or not isinstance(item, Real) or not item > 0:
            raise InputError(f"size must be a pair of positive numbers (H, W), got {size!r}")
    return float(height), float(width)


def box_areas(boxes: Any) -> np.ndarray:
    """Areas ``max(x1 - x0, 0) * max(y1 - y0, 0)`` of ``(K, 4)`` boxes as ``(K,)`` float64."""
    array = check_boxes(boxes)
    return np.clip(array[:, 2] - array[:, 0], 0, None) * np.clip(array[:, 3] - array[:, 1], 0,
                                                                 None)


def clip_boxes(boxes: Any, size: tuple[int, int]) -> np.ndarray:
    """Clip boxes to an image of ``size`` ``(H, W)``: x into ``[0, W]``, y into ``[0, H]``.

    A box entirely outside the image becomes an empty box on the border (zero width or
    height); use :func:`valid_boxes` to find those.

    Returns:
        ``(K, 4)`` float32 numpy array.

    Raises:
        InputError: Boxes not finite ``(K, 4)`` or a bad size.
    """
    array = check_boxes(boxes)
    height, width = _check_size(size)
    array[:, 0::2] = np.clip(array[:, 0::2], 0.0, width)
    array[:, 1::2] = np.clip(array[:, 1::2], 0.0, height)
    return array.astype(np.float32)


def _grown(array: np.ndarray, margin: Any) -> np.ndarray:
    """float64 ``(K, 4)`` boxes grown by ``margin`` of their width / height per side."""
    if isinstance(margin, bool) or not isinstance(margin, Real) or not math.isfinite(margin) \
            or margin < -0.5:
        raise InputError(f"margin must be a finite number >= -0.5, got {margin!r}")
    width = array[:, 2] - array[:, 0]
    height = array[:, 3] - array[:, 1]
    return array + np.stack([-width, -height, width, height], axis=1) * float(margin)


def expand_boxes(boxes: Any, margin: float, size: tuple[int, int] | None = None) -> np.ndarray:
    """Grow (or, with a negative margin, shrink) each box by a fraction of its own size.

    Each side moves outwards by ``margin * width`` (left, right) or ``margin * height``
    (top, bottom), so ``margin=0.1`` makes a box 1.2 times as wide and high, about the same
    centre. A shrinking margin never inverts a box (``margin >= -0.5`` keeps at least a point).

    Args:
        boxes: ``(K, 4)`` boxes, numpy or torch.
        margin: Fraction of the box's width/height added on each side, ``>= -0.5``.
        size: Optional ``(H, W)`` to clip the result to.

    Returns:
        ``(K, 4)`` float32 numpy array.

    Raises:
        InputError: Bad boxes, margin not a finite number ``>= -0.5``, or a bad size.
    """
    out = _grown(check_boxes(boxes), margin)
    if size is not None:
        return clip_boxes(out, size)
    return out.astype(np.float32)


def expand_box(box: Sequence[float] | np.ndarray, margin: float) -> np.ndarray:
    """One box of :func:`expand_boxes`, unclipped and kept in float64: a ``(4,)`` array."""
    try:
        array = check_boxes(np.asarray(box, dtype=np.float64).reshape(1, 4), "box")
    except (TypeError, ValueError):
        raise InputError(f"box must be four numbers x0, y0, x1, y1, got {box!r}") from None
    return _grown(array, margin)[0]


def valid_boxes(boxes: Any, size: tuple[int, int] | None = None, min_size: float = 1.0
                ) -> np.ndarray:
    """Which boxes have width and height ``>= min_size`` (inside the image when ``size``).

    With ``size``, the test applies to the part of each box inside the image.

    Returns:
        ``(K,)`` bool numpy array.
    """
    array = check_boxes(boxes)
    if size is not None:
        array = clip_boxes(array, size).astype(np.float64)
    return ((array[:, 2] - array[:, 0]) >= min_size) & ((array[:, 3] - array[:, 1]) >= min_size)


def box_rect(box: Sequence[float] | np.ndarray, shape: tuple[int, int]) -> tuple[int, ...]:
    """Pixel rectangle ``(x0, y0, x1, y1)`` covered by an edge-coordinate box, clipped.

    A pixel is inside when any part of it is (``floor`` of the low edges, ``ceil`` of the high
    ones), then the rectangle is clipped to the image ``shape`` (H, W). An empty result
    (``x1 <= x0`` or ``y1 <= y0``) means the box is degenerate or outside the image.

    Raises:
        InputError: ``box`` is not four finite numbers.
    """
    try:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(-1))
    except (TypeError, ValueError):
        raise InputError(f"box must be four numbers x0, y0, x1, y1, got {box!r}") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise InputError(f"box must hold finite numbers, got {box!r}")
    height, width = shape
    left, top = max(0, math.floor(x0)), max(0, math.floor(y0))
    right, bottom = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    return left, top, max(left, right), max(top, bottom)


def box_window(box: Sequence[float] | np.ndarray, context: float, shape: tuple[int, int]
               ) -> tuple[int, ...]:
    """The pixels of a box grown by ``context`` of its size per side, clipped to the image.

    ``box_rect(expand_box(box, context), shape)``: the crop a box is seen through when its
    surroundings matter (the heatmap of a box, GrabCut's background). Empty when the box is
    degenerate or outside the image.
    """
    return box_rect(expand_box(box, context), shape)
