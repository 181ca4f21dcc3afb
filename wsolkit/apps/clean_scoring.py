"""Scoring boxes of annotations by objectness (MASON 3.3): the steps of ``clean-boxes``.

The method (heatmap of the box's window, dominance score, automatic threshold, tightening) is
described in :mod:`wsolkit.apps.clean_boxes`; this module holds its settings and scorers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np
from PIL import Image

from wsolkit.errors import InputError
from wsolkit.maps.crops import crop_heatmaps
from wsolkit.models.classifier import Classifier
from wsolkit.refine.boxes import box_rect, expand_boxes
from wsolkit.refine.components import _check_mask, _components
from wsolkit.refine.resize import resize_map
from wsolkit.refine.threshold import _otsu

__all__ = ["AUTO_CAP", "CleanSettings", "calibrate", "judge_box", "score_boxes"]

AUTO_CAP = 0.0
"""Upper bound of the ``auto`` threshold (see :func:`calibrate`)."""

SCORINGS = ("crop", "image")


@dataclass(frozen=True)
class CleanSettings:
    """How boxes are scored, judged and rewritten.

    Attributes:
        method: Registered heatmap method.
        layer: Layer to hook (None: the method's default).
        scoring: ``"crop"`` or ``"image"`` (module doc).
        context: Width of the context ring, as a fraction of the box's size per side.
        fraction: Tightening threshold, as a fraction of the maximum heat inside the box.
        threshold: ``"auto"`` or the score at or below which a box is flagged.
        drop: Remove flagged boxes instead of marking them.
        tighten: Tighten kept boxes.
        margin: Grow tightened boxes by this fraction of their size per side.
        min_side: Boxes narrower or lower than this (pixels) are skipped as degenerate.
        batch_size: Crops per forward pass.
    """

    method: str = "objectness"
    layer: str | None = None
    scoring: str = "crop"
    context: float = 0.5
    fraction: float = 0.2
    threshold: str | float = "auto"
    drop: bool = False
    tighten: bool = True
    margin: float = 0.0
    min_side: float = 2.0
    batch_size: int = 16

    def check(self) -> None:
        """Raise :class:`InputError` for a setting out of range."""
        if self.scoring not in SCORINGS:
            raise InputError(f"scoring must be one of {', '.join(SCORINGS)}, got "
                             f"{self.scoring!r}")
        if not _number(self.context) or not 0.0 < self.context <= 4.0:
            raise InputError(f"context must lie in (0, 4], got {self.context!r}")
        if not _number(self.fraction) or not 0.0 < self.fraction <= 1.0:
            raise InputError(f"fraction={self.fraction!r}: must lie in (0, 1]")
        if self.threshold != "auto" and not _number(self.threshold):
            raise InputError(f"threshold={self.threshold!r}: expected 'auto' or a number")
        if not _number(self.margin) or not -0.5 <= self.margin <= 4.0:
            raise InputError(f"margin={self.margin!r}: must lie in [-0.5, 4]")
        if not _number(self.min_side) or self.min_side < 1:
            raise InputError(f"min_side must be >= 1, got {self.min_side!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 1:
            raise InputError(f"batch_size={self.batch_size!r}: must be a positive integer")


def _number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------- judging


def judge_box(
    heat: np.ndarray, box: np.ndarray, fraction: float = 0.2
) -> tuple[float, np.ndarray | None]:
    """Dominance score of a box on a heatmap window, and the box of its main blob.

    Args:
        heat: ``(h, w)`` float map in [0, 1] over a window of the image, one value per image
            pixel (the window: the box plus its context ring).
        box: ``(4,)`` ``x0, y0, x1, y1`` in window pixel edges; rounded to whole pixels and
            clipped to the window.
        fraction: The blob is the largest 8-connected component of
            ``heat >= fraction * max(heat inside the box)`` inside the box.

    Returns:
        ``(score, tight)``: ``score`` = mean heat inside the box minus mean heat of the rest
        of the window (0 for the rest when the box fills the window), in [-1, 1];
        ``tight`` = ``(4,)`` float64 window-pixel box of the blob, or None when the box holds
        no heat at all.
    """
    height, width = heat.shape
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
    inside = heat[y0:y1, x0:x1]
    total = float(heat.sum(dtype=np.float64))
    inside_sum = float(inside.sum(dtype=np.float64))
    ring_count = heat.size - inside.size
    ring_mean = (total - inside_sum) / ring_count if ring_count else 0.0
    score = inside_sum / inside.size - ring_mean
    peak = float(inside.max())
    if peak <= 0:
        return score, None
    found = _components(_check_mask(inside >= fraction * peak), inside, "largest")
    tight = found.boxes[0].astype(np.float64) + np.array([x0, y0, x0, y0], np.float64)
    return score, tight


def _window(box: np.ndarray, size: tuple[int, int], context: float) -> tuple[int, ...]:
    """Integer window ``x0, y0, x1, y1``: the box grown by ``context``, clipped to the image.

    The grown box is clipped and rounded to float32 (:func:`expand_boxes`) before its pixels
    are taken, unlike :func:`~wsolkit.refine.boxes.box_window` (float64): an edge that lands
    within float32 rounding of a whole pixel can differ by one, and the committed
    ``benchmarks/clean_boxes_eval.py`` numbers were made this way.
    """
    width, height = size
    grown = expand_boxes(box[None], context, size=(height, width))[0]
    return box_rect(grown, (height, width))


def _clipped(box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    return np.array([min(max(box[0], 0), width), min(max(box[1], 0), height),
                     min(max(box[2], 0), width), min(max(box[3], 0), height)], np.float64)


def _normalize(heat: np.ndarray) -> np.ndarray:
    low, high = float(heat.min()), float(heat.max())
    return (heat - low) / (high - low) if high > low else np.zeros_like(heat)


@dataclass
class _Scored:
    score: float
    tight: np.ndarray | None  # image pixels


def _judge_window(heat: np.ndarray, window: tuple[int, ...], box: np.ndarray,
                  fraction: float) -> _Scored:
    offset = np.array([window[0], window[1]] * 2, np.float64)
    score, tight = judge_box(heat, box - offset, fraction)
    return _Scored(float(score), None if tight is None else tight + offset)


def score_boxes(
    classifier: Classifier,
    image: Image.Image,
    boxes: np.ndarray,
    settings: CleanSettings,
) -> list[tuple[float, np.ndarray | None]]:
    """Dominance scores and blob boxes of boxes of one image.

    Args:
        classifier: The model.
        image: RGB PIL image.
        boxes: ``(K, 4)`` image-pixel edges, each with at least one pixel inside the image.
        settings: Method, layer, scoring, context, fraction.

    Returns:
        One ``(score, tight)`` per box; ``tight`` is the ``(4,)`` blob box in image pixels
        (inside the box) or None.
    """
    from wsolkit.maps import get_method

    size = image.size
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    clipped = [_clipped(box, size) for box in boxes]
    windows = [_window(box, size, settings.context) for box in clipped]
    runner = get_method(settings.method)(classifier, layer=settings.layer)
    out: list[tuple[float, np.ndarray | None]] = []
    if settings.scoring == "image":
        tensor = classifier.preprocess_batch([image])
        full = resize_map(runner(tensor).maps[0].cpu().numpy(), (size[1], size[0]))
        for box, window in zip(clipped, windows, strict=True):
            x0, y0, x1, y1 = window
            judged = _judge_window(_normalize(full[y0:y1, x0:x1]), window, box,
                                   settings.fraction)
            out.append((judged.score, judged.tight))
        return out
    pixels = np.asarray(image)
    crops = [pixels[y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
    heats = crop_heatmaps(runner, classifier, crops, batch_size=settings.batch_size)
    for box, window, heat in zip(clipped, windows, heats, strict=True):
        judged = _judge_window(heat, window, box, settings.fraction)
        out.append((judged.score, judged.tight))
    return out


# ----------------------------------------------------------------------------- calibration


def calibrate(scores: np.ndarray) -> tuple[float, str]:
    """The ``auto`` threshold of a dataset's scores, and a sentence explaining it.

    Otsu's threshold of the score histogram (256 bins between the lowest and highest score):
    the cut that best splits the scores into two groups, low (no dominant object) and high.
    Otsu always finds a cut, even in a dataset without bad boxes, where it would flag a large
    share of good ones; so the threshold is never above ``AUTO_CAP`` = 0: a box hotter on
    average than its surroundings is never flagged automatically, and a dataset whose scores
    are low overall gets a lower cut (what the capped threshold flags on the dev sets:
    docs/cleaning_proposals.md). Fewer than 2 distinct scores give ``AUTO_CAP``.
    """
    values = np.asarray(scores, np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2 or float(values.min()) == float(values.max()):
        return AUTO_CAP, f"auto: fewer than two distinct scores, threshold = cap {AUTO_CAP:g}"
    low, high = float(values.min()), float(values.max())
    otsu = _otsu((values - low) / (high - low))
    otsu = low + min(otsu, 1.0) * (high - low)
    if otsu > AUTO_CAP:
        return AUTO_CAP, (f"auto: Otsu's threshold of the scores ({otsu:.3f}) capped at "
                          f"{AUTO_CAP:g}")
    return otsu, "auto: Otsu's threshold of the scores"
