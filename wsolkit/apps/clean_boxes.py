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

How the defaults were chosen and what they do on the dev sets: docs/cleaning_proposals.md.
Settings and scorers live in :mod:`wsolkit.apps.clean_scoring`, the HTML report in
:mod:`wsolkit.apps.clean_report`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsolkit.apps.annotation_io import (
    AnnotatedBox,
    AnnotationSet,
    check_output,
    write_annotations,
)
from wsolkit.apps.clean_report import _box_list, write_report
from wsolkit.apps.clean_scoring import (
    AUTO_CAP,
    CleanSettings,
    _clipped,
    calibrate,
    judge_box,
    score_boxes,
)
from wsolkit.data.atomic import write_json_atomic
from wsolkit.data.images import load_image
from wsolkit.errors import ImageError, InputError
from wsolkit.models.classifier import Classifier
from wsolkit.refine.boxes import expand_boxes

__all__ = [
    "AUTO_CAP",
    "CleanResult",
    "CleanSettings",
    "calibrate",
    "clean_annotations",
    "judge_box",
    "score_boxes",
]

CHANGES_FILE = "changes.json"


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
