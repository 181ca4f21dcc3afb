"""Annotation cleaning with objectness (MASON, section 3.3, "dataset enhancement").

For every box of a COCO JSON file or VOC folder:

1. **Heatmap.** ``scoring="crop"`` (default): the box grown by ``context`` of its size on each
   side (clipped to the image) is cropped, resized to the model's input size and given its own
   heatmap (``objectness`` by default), which is resized back to the crop's pixels.
   ``scoring="image"``: one heatmap per image, cut to the same window and min-max normalized
   there. The crop sees small boxes at full model resolution (one forward pass per box); the
   whole-image map is one pass per image but a 7x7 map for the embedded model.
2. **Dominance score** (:func:`judge_box`): mean heat inside the box minus mean heat of the
   context ring around it, on the window's [0, 1] map. A box around the dominant object of its
   surroundings scores high; a box on background, whose window's heat lies outside it or is
   spread evenly, scores near or below 0. A box without any ring (it fills the image) is
   compared with an empty ring (score = mean heat inside).
3. **Threshold.** ``"auto"``: Otsu's threshold of the dataset's scores (:func:`calibrate`),
   never above ``AUTO_CAP`` = 0; or a given number. Boxes scoring at or below it are flagged
   (or dropped): by default, a box is flagged when it is no hotter than its surroundings.
4. **Tightening** of kept boxes: the largest 8-connected component of
   ``heat >= fraction * max`` inside the box, boxed (:func:`judge_box`), grown by ``margin`` of
   its size per side and clipped to the image.

What the defaults do on the dev sets (corrupted real boxes, ``benchmarks/clean_boxes_eval.py``,
its output committed beside the table) is in docs/cleaning_proposals.md. ``context`` 0.5,
the inside-minus-ring score and ``fraction`` 0.2 were chosen in earlier trials whose scripts are
not in the repository, so no comparison with other values is claimed here.
"""

from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from numbers import Real
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from wsolkit.apps.annotation_io import (
    SKIP_REASONS,
    AnnotatedBox,
    AnnotationSet,
    check_output,
    write_annotations,
)
from wsolkit.checks import normalize_minmax
from wsolkit.data.atomic import make_out_dir, write_bytes_atomic, write_json_atomic
from wsolkit.data.images import load_image
from wsolkit.errors import ImageError, InputError
from wsolkit.models.classifier import Classifier
from wsolkit.refine.components import _check_mask, _components
from wsolkit.refine.nms import expand_boxes
from wsolkit.refine.threshold import _otsu

__all__ = [
    "AUTO_CAP",
    "CleanResult",
    "CleanSettings",
    "calibrate",
    "clean_annotations",
    "judge_box",
    "score_boxes",
]

AUTO_CAP = 0.0
"""Upper bound of the ``auto`` threshold (see :func:`calibrate`)."""

SCORINGS = ("crop", "image")
CHANGES_FILE = "changes.json"


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
    """Integer window ``x0, y0, x1, y1``: the box grown by ``context``, clipped to the image."""
    width, height = size
    grown = expand_boxes(box[None], context, size=(height, width))[0].astype(np.float64)
    x0, y0 = math.floor(grown[0]), math.floor(grown[1])
    x1, y1 = math.ceil(grown[2]), math.ceil(grown[3])
    return max(x0, 0), max(y0, 0), min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)


def _clipped(box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    return np.array([min(max(box[0], 0), width), min(max(box[1], 0), height),
                     min(max(box[2], 0), width), min(max(box[3], 0), height)], np.float64)


def _resize(heat: np.ndarray, width: int, height: int) -> np.ndarray:
    out = cv2.resize(np.ascontiguousarray(heat, np.float32), (width, height),
                     interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0)


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
        full = _resize(runner(tensor).maps[0].cpu().numpy(), size[0], size[1])
        for box, window in zip(clipped, windows, strict=True):
            x0, y0, x1, y1 = window
            judged = _judge_window(normalize_minmax(full[y0:y1, x0:x1]), window, box,
                                   settings.fraction)
            out.append((judged.score, judged.tight))
        return out
    for start in range(0, len(boxes), settings.batch_size):
        chunk = windows[start:start + settings.batch_size]
        batch = classifier.preprocess_batch([image.crop(window) for window in chunk])
        maps = runner(batch).maps.cpu().numpy()
        for k, window in enumerate(chunk):
            x0, y0, x1, y1 = window
            heat = _resize(maps[k], x1 - x0, y1 - y0)
            judged = _judge_window(heat, window, clipped[start + k], settings.fraction)
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


# ----------------------------------------------------------------------------- the job


@dataclass
class CleanResult:
    """What :func:`clean_annotations` did.

    Attributes:
        annotations: Every box with its score, action and new box.
        threshold: The score threshold used.
        rule: How it was chosen.
        output: The annotation file or folder written (None when not written).
        report: The HTML report (None when not written).
    """

    annotations: AnnotationSet
    threshold: float
    rule: str
    settings: CleanSettings
    output: Path | None = None
    report: Path | None = None
    failures: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Boxes by outcome: ``scored``, ``kept``, ``tightened``, ``flagged``, ``skipped``."""
        boxes = self.annotations.boxes
        return {
            "boxes": len(boxes),
            "scored": sum(not math.isnan(b.score) for b in boxes),
            "kept": sum(b.action == "kept" for b in boxes),
            "tightened": sum(b.action == "tightened" for b in boxes),
            "flagged": sum(b.action in ("flagged", "dropped") for b in boxes),
            "skipped": sum(b.action == "skipped" for b in boxes),
        }


def _score_all(
    classifier: Classifier,
    annotations: AnnotationSet,
    settings: CleanSettings,
    progress: Callable[[int], None] | None,
) -> tuple[dict[int, np.ndarray | None], list[str]]:
    by_image: dict[str, list[int]] = defaultdict(list)
    for index, entry in enumerate(annotations.boxes):
        if entry.status == "ok":
            by_image[entry.image].append(index)
    tights: dict[int, np.ndarray | None] = {}
    failures: list[str] = []
    for name, indices in by_image.items():
        entries = [annotations.boxes[i] for i in indices]
        path = annotations.image_dir / name
        try:
            image = load_image(path)
        except ImageError as error:
            failures.append(str(error))
            _skip(entries, "unreadable", progress)
            continue
        expected = annotations.images.get(name)
        if expected is not None and tuple(expected) != image.size:
            failures.append(f"{path}: image is {image.size[0]}x{image.size[1]} px, the "
                            f"annotations say {expected[0]}x{expected[1]}")
            _skip(entries, "size_mismatch", progress)
            continue
        inside = []
        if expected is None:  # VOC without <size>: the file gives it
            annotations.images[name] = image.size
        for entry in entries:
            if expected is None:
                _recheck(entry, image.size, settings.min_side)
            if entry.status == "ok":
                inside.append(entry)
            else:
                entry.action = "skipped"
                if progress:
                    progress(1)
        if not inside:
            continue
        boxes = np.stack([entry.box for entry in inside])
        with torch.inference_mode():
            judged = score_boxes(classifier, image, boxes, settings)
        for entry, (score, tight) in zip(inside, judged, strict=True):
            entry.score = score
            tights[id(entry)] = tight
        if progress:
            progress(len(inside))
    return tights, failures


def _skip(entries: list[AnnotatedBox], status: str, progress: Callable[[int], None] | None
          ) -> None:
    for entry in entries:
        entry.status, entry.action = status, "skipped"
    if progress:
        progress(len(entries))


def _recheck(entry: AnnotatedBox, size: tuple[int, int], min_side: float) -> None:
    x0, y0, x1, y1 = entry.box
    clipped = _clipped(entry.box, size)
    if clipped[2] - clipped[0] < min_side or clipped[3] - clipped[1] < min_side:
        entry.status = "outside"
    entry.clipped = bool((clipped != np.array([x0, y0, x1, y1])).any())


def _decide(annotations: AnnotationSet, tights: dict[int, np.ndarray | None],
            threshold: float, settings: CleanSettings) -> None:
    for entry in annotations.boxes:
        if math.isnan(entry.score):
            continue
        if entry.score <= threshold:
            entry.action = "dropped" if settings.drop else "flagged"
            continue
        entry.action, entry.new_box = "kept", None
        tight = tights.get(id(entry))
        if not settings.tighten or tight is None:
            continue
        width, height = annotations.images[entry.image]
        new = expand_boxes(tight[None], settings.margin, size=(height, width))[0]
        new = new.astype(np.float64)
        if np.abs(new - entry.box).max() >= 0.5:
            entry.action, entry.new_box = "tightened", new


def clean_annotations(
    classifier: Classifier,
    annotations: AnnotationSet,
    out_dir: Path | None,
    settings: CleanSettings | None = None,
    progress: Callable[[int], None] | None = None,
) -> CleanResult:
    """Score, flag (or drop) and tighten every box; write new annotations and a report.

    Args:
        classifier: The model.
        annotations: From :func:`wsolkit.apps.annotation_io.read_annotations` (not modified
            on disk; its boxes get their score, action and new box).
        out_dir: Output folder for the annotations (:func:`write_annotations`), ``report.html``
            (with ``report/`` beside it: histogram and thumbnails), ``changes.json``; None
            writes nothing.
        settings: See :class:`CleanSettings`.
        progress: Called with the number of boxes finished.

    Returns:
        A :class:`CleanResult`.
    """
    settings = settings or CleanSettings()
    settings.check()
    if out_dir is not None:
        out_dir = Path(out_dir)
        target = check_output(annotations, out_dir)  # before the slow scoring
        if target.name == CHANGES_FILE:
            raise InputError(f"{annotations.source}: an annotation file named {CHANGES_FILE} "
                             f"would clash with the {CHANGES_FILE} written to out=DIR; rename it")
    tights, failures = _score_all(classifier, annotations, settings, progress)
    scores = np.array([b.score for b in annotations.boxes if not math.isnan(b.score)])
    if settings.threshold == "auto":
        threshold, rule = calibrate(scores)
    else:
        threshold, rule = float(settings.threshold), "given"
    _decide(annotations, tights, threshold, settings)
    result = CleanResult(annotations, float(threshold), rule, settings, failures=failures)
    if out_dir is not None:
        result.output = write_annotations(annotations, out_dir, drop=settings.drop)
        write_json_atomic(out_dir / CHANGES_FILE, _changes_json(result))
        result.report = write_report(result, out_dir)
    return result


def _box_list(box: np.ndarray | None) -> list[float] | None:
    return None if box is None else [round(float(v), 2) for v in box]


def _changes_json(result: CleanResult) -> dict:
    boxes = result.annotations.boxes
    return {
        "source": str(result.annotations.source),
        "threshold": result.threshold,
        "rule": result.rule,
        "settings": asdict(result.settings),
        "counts": result.counts(),
        "box_format": "x0, y0, x1, y1 pixel edges",
        "changes": [
            {"key": b.key, "image": b.image, "label": b.label, "action": b.action,
             "score": None if math.isnan(b.score) else round(b.score, 4),
             "box": _box_list(b.box), "new_box": _box_list(b.new_box)}
            for b in boxes if b.action in ("tightened", "flagged", "dropped")
        ],
        "skipped": [
            {"key": b.key, "image": b.image, "label": b.label, "reason": b.status,
             "box": _box_list(b.box)}
            for b in boxes if b.action == "skipped"
        ],
        "failures": result.failures,
    }


# ----------------------------------------------------------------------------- report

MAX_THUMBNAILS = 60
THUMB_SIDE = 160


def _png_base64(rgb: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    return base64.b64encode(data.tobytes()).decode("ascii") if ok else ""


def _thumbnail(image: np.ndarray, entry: AnnotatedBox) -> np.ndarray:
    from wsolkit.viz import draw_boxes

    height, width = image.shape[:2]
    boxes = [entry.box] + ([entry.new_box] if entry.new_box is not None else [])
    union = np.array([min(b[0] for b in boxes), min(b[1] for b in boxes),
                      max(b[2] for b in boxes), max(b[3] for b in boxes)])
    x0, y0, x1, y1 = _window(_clipped(union, (width, height)), (width, height), 0.3)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    scale = THUMB_SIDE / max(crop.shape[:2])
    crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)),
                             max(1, round(crop.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    offset = np.array([x0, y0, x0, y0], np.float64)
    crop = draw_boxes(crop, ((entry.box - offset) * scale)[None], color=(230, 40, 40),
                      thickness=2)
    if entry.new_box is not None:
        crop = draw_boxes(crop, ((entry.new_box - offset) * scale)[None], color=(40, 220, 40),
                          thickness=2)
    return crop


def _histogram_png(scores: np.ndarray, threshold: float, path: Path) -> None:
    from wsolkit.viz.plots import _pyplot, _save

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    if scores.size:
        axis.hist(scores, bins=50, color="#4a7ab5")
    axis.axvline(threshold, color="#d62728", linestyle="--", label=f"threshold {threshold:.3f}")
    axis.set_xlabel("dominance score (mean heat inside - around the box)")
    axis.set_ylabel("boxes")
    axis.legend(fontsize=8)
    _save(figure, path)


def write_report(result: CleanResult, out_dir: Path) -> Path:
    """Write ``report.html`` (self-contained) and ``report/score_histogram.png``."""
    boxes = result.annotations.boxes
    folder = out_dir / "report"
    make_out_dir(folder)
    scores = np.array([b.score for b in boxes if not math.isnan(b.score)])
    histogram = folder / "score_histogram.png"
    _histogram_png(scores, result.threshold, histogram)
    flagged = sorted((b for b in boxes if b.action in ("flagged", "dropped")),
                     key=lambda b: b.score)
    tightened = sorted((b for b in boxes if b.action == "tightened"),
                       key=lambda b: _area_ratio(b))
    chosen = flagged[: MAX_THUMBNAILS // 2]
    chosen += tightened[: MAX_THUMBNAILS - len(chosen)]
    thumbs = _thumbnails(result.annotations, chosen)
    counts = result.counts()
    settings = result.settings
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>wsolkit clean-boxes report"
        "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}figure{display:inline-block;"
        "margin:4px;font-size:11px;width:170px;vertical-align:top}</style></head><body>",
        "<h1>Annotation cleaning report</h1>",
        f"<p>Input: <code>{esc(str(result.annotations.source))}</code> "
        f"({result.annotations.kind}); output: <code>{esc(str(result.output))}</code>.</p>",
        f"<p>Method <b>{esc(settings.method)}</b> (layer {esc(str(settings.layer or 'default'))}"
        f"), scoring <b>{settings.scoring}</b>, context {settings.context:g}, tightening at "
        f"{settings.fraction:g} of the box's peak heat, margin {settings.margin:g}, "
        f"{'drop' if settings.drop else 'flag'} mode.</p>",
        f"<p><b>Threshold {result.threshold:.4f}</b> ({esc(result.rule)}). The score of a box "
        "is the mean heat inside it minus the mean heat of the ring around it (its context), "
        "on the window's heatmap scaled to [0, 1]: high when the box holds the dominant object "
        "of its surroundings, near or below zero on background. <i>auto</i> is Otsu's "
        "threshold of this dataset's score histogram (the cut best separating a low and a "
        f"high group), never above {AUTO_CAP:g}: a box hotter than its surroundings is not "
        "flagged automatically, so a clean dataset is not split in two. Boxes at or below the "
        "threshold are flagged.</p>",
        "<ul>" + "".join(f"<li>{k}: {v}</li>" for k, v in counts.items()) + "</ul>",
        "<h2>Score histogram</h2>",
        f"<img alt='score histogram' src='data:image/png;base64,"
        f"{base64.b64encode(histogram.read_bytes()).decode('ascii')}'>",
        f"<h2>Before (red) / after (green): {len(thumbs)} of "
        f"{len(flagged) + len(tightened)} changes</h2>",
    ]
    for entry, png in thumbs:
        caption = (f"{esc(entry.key)} ({esc(entry.label)})<br>{entry.action}, "
                   f"score {entry.score:.3f}")
        parts.append(f"<figure><img src='data:image/png;base64,{png}'>"
                     f"<figcaption>{caption}</figcaption></figure>")
    parts.append("<h2>Changes</h2><table><tr><th>box</th><th>image</th><th>label</th>"
                 "<th>action</th><th>score</th><th>before</th><th>after</th></tr>")
    for entry in flagged + tightened:
        parts.append(
            f"<tr><td>{esc(entry.key)}</td><td>{esc(entry.image)}</td><td>{esc(entry.label)}"
            f"</td><td>{entry.action}</td><td>{entry.score:.3f}</td>"
            f"<td>{_box_list(entry.box)}</td><td>{_box_list(entry.new_box) or ''}</td></tr>")
    parts.append("</table><h2>Skipped boxes</h2><table><tr><th>box</th><th>image</th>"
                 "<th>label</th><th>reason</th></tr>")
    for entry in boxes:
        if entry.action == "skipped":
            parts.append(f"<tr><td>{esc(entry.key)}</td><td>{esc(entry.image)}</td>"
                         f"<td>{esc(entry.label)}</td>"
                         f"<td>{esc(SKIP_REASONS.get(entry.status, entry.status))}</td></tr>")
    parts.append("</table>")
    if result.failures:
        parts.append("<h2>Problems</h2><ul>" + "".join(
            f"<li>{esc(f)}</li>" for f in result.failures) + "</ul>")
    parts.append("</body></html>\n")
    path = out_dir / "report.html"
    write_bytes_atomic(path, "\n".join(parts).encode("utf-8"))
    return path


def _area_ratio(entry: AnnotatedBox) -> float:
    def area(b: np.ndarray) -> float:
        return max(b[2] - b[0], 0) * max(b[3] - b[1], 0)

    return area(entry.new_box) / max(area(entry.box), 1e-9)


def _thumbnails(annotations: AnnotationSet, chosen: list[AnnotatedBox]
                ) -> list[tuple[AnnotatedBox, str]]:
    by_image: dict[str, list[AnnotatedBox]] = defaultdict(list)
    for entry in chosen:
        by_image[entry.image].append(entry)
    made: dict[int, str] = {}
    for name, entries in by_image.items():
        try:
            image = np.asarray(load_image(annotations.image_dir / name))
        except ImageError:
            continue
        for entry in entries:
            made[id(entry)] = _png_base64(_thumbnail(image, entry))
    return [(entry, made[id(entry)]) for entry in chosen if id(entry) in made]
