"""Heatmap overlays, box drawing and atomic PNG writing for RGB uint8 images."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from wsolkit.checks import RANGE_TOLERANCE, check_boxes, check_heatmap, to_numpy
from wsolkit.data.atomic import write_bytes_atomic
from wsolkit.errors import InputError
from wsolkit.refine.resize import resize_map

COLORMAPS = {
    name[len("COLORMAP_"):].lower(): getattr(cv2, name)
    for name in dir(cv2)
    if name.startswith("COLORMAP_")
}
"""OpenCV colormaps by lower-case name (``"jet"``, ``"viridis"``, ...)."""

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _check_image(image: Any, name: str = "image") -> np.ndarray:
    """Validate an (H, W, 3) uint8 numpy RGB image."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"{name} must be an (H, W, 3) uint8 RGB array, got shape {tuple(image.shape)} "
            f"and dtype {image.dtype}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"{name} must not be empty, got shape {tuple(image.shape)}")
    return image


def overlay_heatmap(
    image: np.ndarray, heatmap: Any, alpha: float = 0.5, colormap: str = "jet"
) -> np.ndarray:
    """Blend a colour-mapped heatmap over an RGB image.

    The heatmap is resized (bilinear) to the image if sizes differ, mapped to 0..255,
    coloured with ``cv2.applyColorMap`` (BGR, converted to RGB) and blended as
    ``(1 - alpha) * image + alpha * colour``.

    Args:
        image: (H, W, 3) uint8 RGB numpy array (not modified).
        heatmap: (h, w) map in [0, 1], numpy or torch.
        alpha: Heatmap weight in [0, 1].
        colormap: OpenCV colormap name, case-insensitive (see ``COLORMAPS``).

    Returns:
        New (H, W, 3) uint8 RGB array.

    Raises:
        InputError: Bad image, heatmap, alpha or colormap name.
    """
    image = _check_image(image)
    heat = np.clip(check_heatmap(heatmap, tolerance=RANGE_TOLERANCE), 0.0, 1.0)
    heat = heat.astype(np.float32)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)) \
            or not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be a number in [0, 1], got {alpha!r}")
    key = colormap.lower() if isinstance(colormap, str) else None
    if key not in COLORMAPS:
        names = ", ".join(sorted(COLORMAPS))
        raise InputError(f"colormap must be one of {names}, got {colormap!r}")
    height, width = image.shape[:2]
    if heat.shape != (height, width):
        heat = resize_map(heat, (height, width), "bilinear")
    levels = np.rint(heat * 255.0).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[key]), cv2.COLOR_BGR2RGB)
    blended = (1.0 - float(alpha)) * image.astype(np.float32) + float(alpha) * colour
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _check_color(color: Any) -> tuple[int, int, int]:
    try:
        values = tuple(int(c) for c in color)
    except (TypeError, ValueError):
        raise InputError(f"color must be three integers in 0..255, got {color!r}") from None
    if len(values) != 3 or not all(0 <= c <= 255 for c in values):
        raise InputError(f"color must be three integers in 0..255, got {color!r}")
    return values  # type: ignore[return-value]


def _ascii(text: str) -> str:
    """Replace characters Hershey fonts cannot draw (non-ASCII, control) with '?'."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in text)


def _label_text(label: Any, score: float | None) -> str:
    parts = []
    if label is not None:
        parts.append(_ascii(str(label)))
    if score is not None:
        parts.append(f"{score:.2f}")
    return " ".join(parts)


def _draw_label(
    canvas: np.ndarray, text: str, x0: int, y0: int, color: tuple[int, int, int], thickness: int
) -> None:
    """Draw ``text`` on a filled ``color`` background just above (or inside) the box top."""
    scale = 0.4 * thickness
    weight = max(1, thickness // 2)
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, scale, weight)
    pad = max(1, thickness)
    box_h = text_h + baseline + 2 * pad
    top = y0 - box_h if y0 - box_h >= 0 else y0
    left = min(max(x0, 0), max(canvas.shape[1] - text_w - 2 * pad, 0))
    cv2.rectangle(
        canvas, (left, top), (left + text_w + 2 * pad - 1, top + box_h - 1), color, cv2.FILLED
    )
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luminance > 128 else (255, 255, 255)
    cv2.putText(
        canvas, text, (left + pad, top + pad + text_h), _FONT, scale, ink, weight, cv2.LINE_AA
    )


def draw_boxes(
    image: np.ndarray,
    boxes: Any,
    labels: Sequence[Any] | None = None,
    scores: Any = None,
    color: tuple[int, int, int] = (0, 255, 0),
    thickness: int | None = None,
) -> np.ndarray:
    """Draw boxes, with optional ``"label 0.87"`` captions, on a copy of an RGB image.

    Boxes use edge coordinates, so the rectangle's last pixel column is ``x1 - 1`` (and
    row ``y1 - 1``). Non-ASCII characters in labels are drawn as ``?``.

    Args:
        image: (H, W, 3) uint8 RGB numpy array (not modified).
        boxes: (K, 4) ``x0, y0, x1, y1`` boxes, numpy or torch (not modified).
        labels: Optional K labels (converted with ``str``).
        scores: Optional K scores, numpy, torch or a sequence of numbers.
        color: RGB colour of boxes and caption backgrounds.
        thickness: Line thickness in pixels; ``None`` scales with the image
            (``max(1, round(max(H, W) / 300))``).

    Returns:
        New (H, W, 3) uint8 RGB array.

    Raises:
        InputError: Bad image, boxes not finite (K, 4), labels/scores of the wrong length,
            bad colour or thickness.
    """
    image = _check_image(image)
    boxes = check_boxes(boxes, array_like=True)
    count = boxes.shape[0]
    if labels is not None and len(labels) != count:
        raise InputError(f"labels must have {count} entries (one per box), got {len(labels)}")
    if scores is not None:
        scores = to_numpy(scores, "scores", array_like=True).astype(np.float64).reshape(-1)
        if scores.shape[0] != count:
            raise InputError(
                f"scores must have {count} entries (one per box), got {scores.shape[0]}"
            )
    rgb = _check_color(color)
    height, width = image.shape[:2]
    if thickness is None:
        thickness = max(1, round(max(height, width) / 300))
    elif isinstance(thickness, bool) or not isinstance(thickness, (int, np.integer)) \
            or thickness < 1:
        raise InputError(f"thickness must be a positive integer, got {thickness!r}")
    thickness = int(thickness)
    canvas = image.copy()
    for index, (x0, y0, x1, y1) in enumerate(np.rint(boxes).astype(np.int64)):
        left, top = int(min(x0, x1)), int(min(y0, y1))
        right = max(left, int(max(x0, x1)) - 1)
        bottom = max(top, int(max(y0, y1)) - 1)
        cv2.rectangle(canvas, (left, top), (right, bottom), rgb, thickness)
        text = _label_text(
            labels[index] if labels is not None else None,
            float(scores[index]) if scores is not None else None,
        )
        if text:
            _draw_label(canvas, text, left, top, rgb, thickness)
    return canvas


def save_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write an RGB (or grayscale) uint8 image as PNG, atomically.

    The image is encoded to a temporary file in the destination directory, which then
    replaces ``path`` with ``os.replace``; a failed write leaves no partial file.

    Args:
        path: Destination file; its directory must exist.
        image: (H, W, 3) RGB or (H, W) grayscale uint8 numpy array.

    Raises:
        InputError: Bad image, missing directory, or the file cannot be written.
    """
    target = Path(path)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ) or image.size == 0:
        raise InputError(
            f"image for {target} must be a non-empty (H, W, 3) or (H, W) uint8 numpy array"
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    write_bytes_atomic(target, buffer.getvalue())
