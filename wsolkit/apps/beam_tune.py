"""Tuning the beam method's heatmap thresholds (and co-occurrence alpha) on a validation split.

For every (image, class) pair with ground-truth boxes, the beam heatmap (min-max normalized, at
the model's input size) is thresholded at every value of a grid; the blobs' boxes are matched
to the class's GT boxes (IoU >= 0.5, best score first, each GT box once) and the pair's F1 is
``2 * matches / (detections + GT boxes)``. A class's threshold maximizes its mean F1 over its
pairs (classes with at least ``min_count`` pairs); the global threshold, the fallback of every
other class, maximizes the mean over all pairs. When the dataset's labels are not the model's
classes (e.g. COCO with an ImageNet model) the top-1 class is searched against all GT boxes
and only the global threshold is tuned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from wsolkit.apps.beam_boxes import class_scores
from wsolkit.apps.cooccurrence import choose_alpha, cooccurrence_counts, pair_probabilities
from wsolkit.apps.evaluate import labels_are_model_classes
from wsolkit.data.images import load_image
from wsolkit.data.sample import Sample
from wsolkit.errors import ImageError, InputError
from wsolkit.eval.detection import box_iou
from wsolkit.maps.beam import BeamSearch
from wsolkit.models.classifier import Classifier
from wsolkit.refine import localize, scale_boxes

GRID = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))
MULTI_LABEL_KINDS = ("coco", "voc")


@dataclass
class TuneSettings:
    """What ``wsolkit tune-beam`` searches with.

    Attributes:
        limit: use only the first N images.
        beam_width: M of the search (default: the preset's).
        levels: H of the search (default: the preset's).
        preset: the search's ``"default"`` or ``"paper"`` size
            (:data:`wsolkit.maps.beam.PRESETS`).
        min_count: a class gets its own threshold with at least this many (image, class) pairs.
        grid: candidate thresholds on the normalized heatmap.
        alphas: candidate co-occurrence weights (with a training set).
    """

    limit: int | None = None
    beam_width: int | None = None
    levels: int | None = None
    preset: str = "default"
    min_count: int = 2
    grid: Sequence[float] = GRID
    alphas: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


def pair_f1(boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, iou: float = 0.5) -> float:
    """F1 of detections against GT boxes: greedy matching by score at IoU >= ``iou``."""
    if len(boxes) == 0 or len(gt) == 0:
        return 0.0
    overlaps = box_iou(boxes[np.argsort(-scores, kind="stable")], gt)
    used = np.zeros(len(gt), bool)
    matches = 0
    for row in overlaps:
        row = np.where(used, -1.0, row)
        best = int(np.argmax(row))
        if row[best] >= iou:
            used[best] = True
            matches += 1
    return 2.0 * matches / (len(boxes) + len(gt))


def _pairs(sample: Sample, predicted: int, matches: bool,
           multi_label: bool) -> list[tuple[int, np.ndarray]]:
    keep = ~sample.box_ignore.astype(bool) if len(sample.box_ignore) else np.ones(
        len(sample.boxes), bool)
    boxes, labels = sample.boxes[keep], sample.box_labels[keep] if len(
        sample.box_labels) else np.full(int(keep.sum()), -1)
    if not len(boxes):
        return []
    if not matches:
        return [(predicted, boxes)]
    if multi_label:
        return [(int(c), boxes[labels == c]) for c in np.unique(labels) if c >= 0]
    return [(sample.label, boxes)]


def tune_thresholds(dataset: Sequence[Sample], classifier: Classifier, settings: TuneSettings,
                    train: Sequence[Sample] | None = None,
                    progress: Callable[[int], None] | None = None) -> dict:
    """Per-class heatmap thresholds of ``beam`` (and alpha, with a training set) on ``dataset``.

    Args:
        dataset: the validation split (any reader of ``wsolkit.data.open_dataset``) with boxes.
        classifier: the model.
        settings: search and grid settings.
        train: a training split whose image labels give the co-occurrence counts; alpha is then
            chosen on ``dataset`` by classification mAP (multi-label sets whose labels are the
            model's classes only).
        progress: called with 1 after each image.

    Returns:
        A JSON-ready dict with ``global``, ``per_class`` (class index as a string), ``counts``,
        ``criterion`` and the settings; ``alpha`` and ``cooccurrence`` with ``train``.

    Raises:
        InputError: no image with boxes, or bad settings.
    """
    samples = list(dataset)[: settings.limit] if settings.limit else list(dataset)
    grid = np.asarray(settings.grid, np.float64)
    if not len(grid) or grid.min() < 0 or grid.max() > 1:
        raise InputError("threshold grid must hold values in [0, 1]")
    method = BeamSearch(classifier, beam_width=settings.beam_width, levels=settings.levels,
                        preset=settings.preset)
    matches = labels_are_model_classes(dataset, classifier)
    multi_label = getattr(dataset, "kind", None) in MULTI_LABEL_KINDS
    height, width = classifier.input_size
    totals: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    unary, truth = [], []
    skipped = 0
    for sample in samples:
        try:
            image = load_image(sample.path)
        except ImageError:
            skipped += 1
            continue
        tensor = classifier.preprocess_batch([image])
        probabilities = class_scores(classifier, tensor)[0].numpy()
        if multi_label and matches:
            unary.append(probabilities)
            truth.append(np.isin(np.arange(len(probabilities)), list(sample.labels)))
        pairs = _pairs(sample, int(np.argmax(probabilities)), matches, multi_label)
        if pairs:
            scaled = [(c, scale_boxes(b, (image.size[1], image.size[0]), (height, width)))
                      for c, b in pairs]
            result = method(tensor.repeat(len(scaled), 1, 1, 1), target=[c for c, _ in scaled],
                            sources=[image] * len(scaled))
            for (c, gt), heat in zip(scaled, result.maps.cpu().numpy(), strict=True):
                scores = np.zeros(len(grid))
                if heat.any():
                    for i, t in enumerate(grid):
                        found = localize(heat, "fixed", float(t), mode="all")
                        scores[i] = pair_f1(found.boxes, found.scores, gt)
                key = c if matches else -1
                totals[key] = totals.get(key, np.zeros(len(grid))) + scores
                counts[key] = counts.get(key, 0) + 1
        if progress is not None:
            progress(1)
    if not counts:
        raise InputError("no image with ground-truth boxes to tune thresholds on")
    overall = sum(totals.values()) / sum(counts.values())
    out = {
        "method": "beam",
        "criterion": "mean F1 of blob boxes vs GT boxes at IoU 0.5 per (image, class)",
        "global": float(grid[int(np.argmax(overall))]),
        "global_f1": float(overall.max()),
        "per_class": {str(c): float(grid[int(np.argmax(totals[c] / counts[c]))])
                      for c in sorted(counts) if c >= 0 and counts[c] >= settings.min_count},
        "counts": {str(c): n for c, n in sorted(counts.items())},
        "images": len(samples) - skipped,
        "class_specific": bool(matches),
        "preset": method.preset,
        "beam_width": method.beam_width,
        "levels": method.levels,
        "grid": [float(t) for t in grid],
    }
    if train is not None and unary:
        if not (multi_label and matches):
            raise InputError("co-occurrence needs a multi-label dataset of the model's classes")
        table = cooccurrence_counts((s.labels for s in train), len(unary[0]))
        alpha, by_alpha = choose_alpha(np.stack(unary), np.stack(truth),
                                       pair_probabilities(table), settings.alphas)
        out["alpha"] = alpha
        out["alpha_map"] = {str(a): m for a, m in by_alpha.items()}
        out["cooccurrence"] = table.tolist()
    return out


__all__ = ["GRID", "TuneSettings", "pair_f1", "tune_thresholds"]
