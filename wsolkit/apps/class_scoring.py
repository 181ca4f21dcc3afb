"""Scoring the map of every class of multi-label images (COCO, VOC, ImageNet mosaics).

Used by :func:`wsolkit.apps.evaluate.evaluate` when the model's classes are the dataset's.
Per image, ONE call of the method explains every class (:func:`class_maps`): the base class
runs one forward pass of the image and, for gradient methods, one batched backward pass, so
a 1000-class image costs about one forward pass plus the backward passes from each class
score to the hooked layer, not 1000 forward passes.

What is computed per class, and why it is enough for the metrics (identical to mapping every
class on the 224x224 protocol grid, except for the stated detection rule):

- the maximum of the raw layer-resolution map, for every class (the pointing-AP confidence);
- the protocol grid (bicubic resize to 224x224 and min-max normalization, as for single maps)
  only for the classes present in the image (any box, crowd included) and the classes
  detected (below). The pointing-AP point of a class absent from the image cannot be a true
  positive wherever it lies (:class:`~wsolkit.eval.PointingAP`), so only present classes need
  their peak location;
- detections only for the classes whose probability can matter: probability >=
  ``min_probability`` (``EvaluateSettings.min_class_probability``), plus the most probable
  class. A detection's score is its mean heat times the class probability, so a skipped
  class's detections would all score below ``min_probability``: they can only change a
  class's AP where that class has true positives scoring lower (measured in
  ``benchmarks/multiclass_speed.py``). ``min_probability=0`` detects every class. The rule
  uses the image's probabilities only, never its labels. A method whose maps cost a search per
  class (``maps_detected_classes_only``: ``beam``) maps exactly these classes; the others get
  no map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from wsolkit.data.sample import Sample
from wsolkit.errors import InputError
from wsolkit.eval import DetectionAP, PointingAP, PointingGame, peaks
from wsolkit.eval.classification import multilabel_map
from wsolkit.eval.protocol import PROTOCOL_SIZE, protocol_map, protocol_source
from wsolkit.maps import HeatmapMethod, HeatmapResult
from wsolkit.maps.hooks import eval_mode
from wsolkit.maps.targets import Targets
from wsolkit.refine import box_means, localize_stack, scale_boxes

__all__ = ["BOX_SCORES", "ClassMaps", "ClassScorer", "check_box_score", "class_maps",
           "classes_to_detect", "every_class", "maps_of_result", "select_classes"]

BOX_SCORES = ("blob", "box")


def check_box_score(box_score: str) -> str:
    """``box_score`` if it is one of :data:`BOX_SCORES`, else a one-line :class:`InputError`."""
    if box_score not in BOX_SCORES:
        raise InputError(f"box_score={box_score!r}: use one of {', '.join(BOX_SCORES)}")
    return box_score


class ClassMaps:
    """What the metrics need of every class's map of one image.

    Attributes:
        peak_values: (C,) maximum of each class's raw layer-resolution map (0 for a class a
            box method did not map).
        probabilities: (C,) class probabilities (``method.classifier.probabilities``).
        grids: protocol 224x224 float32 maps of the classes that need one.
        detect: classes whose detections are scored (:func:`classes_to_detect`).
    """

    def __init__(self, peak_values: np.ndarray, probabilities: np.ndarray,
                 grids: dict[int, np.ndarray], detect: list[int]) -> None:
        self.peak_values = peak_values
        self.probabilities = probabilities
        self.grids = grids
        self.detect = detect

    def grid(self, class_index: int) -> np.ndarray:
        """The class's protocol map (zeros when it was not mapped)."""
        found = self.grids.get(class_index)
        return found if found is not None else np.zeros((PROTOCOL_SIZE, PROTOCOL_SIZE),
                                                        np.float32)

    def points(self) -> np.ndarray:
        """(C, 2) ``x, y`` grid peak of each class with a grid, (0, 0) for the others."""
        points = np.zeros((len(self.peak_values), 2), np.int64)
        if self.grids:
            classes = list(self.grids)
            points[classes] = peaks(np.stack([self.grids[c] for c in classes]))[1]
        return points


def select_classes(scores: np.ndarray, score_threshold: float,
                   classes: Sequence[int] | None = None) -> list[list[int]]:
    """Per image, the candidate classes scoring at least ``score_threshold``, and the best one.

    Args:
        scores: (N, C) class scores.
        score_threshold: minimum score of a selected class.
        classes: candidate classes (default: all).

    Raises:
        InputError: a candidate class outside ``0 .. C - 1``.
    """
    scores = np.asarray(scores, np.float64)
    candidates = np.arange(scores.shape[1]) if classes is None else np.asarray(classes, int)
    if candidates.size == 0 or candidates.min() < 0 or candidates.max() >= scores.shape[1]:
        raise InputError(f"classes must be indices in 0 .. {scores.shape[1] - 1}")
    chosen = []
    for row in scores[:, candidates]:
        keep = candidates[row >= score_threshold].tolist()
        best = int(candidates[int(np.argmax(row))])
        chosen.append(sorted(set(keep) | {best}))
    return chosen


def classes_to_detect(probabilities: np.ndarray, min_probability: float) -> list[int]:
    """Classes with probability >= ``min_probability``, plus the most probable one."""
    return select_classes(np.asarray(probabilities, np.float64)[None], min_probability)[0]


def class_maps(method: HeatmapMethod, image: torch.Tensor, num_classes: int,
               min_probability: float = 0.0, present: tuple[int, ...] = (),
               source: Image.Image | None = None) -> ClassMaps:
    """Maps of every class of one (1, C, H, W) image, from one call of ``method``.

    Args:
        method: the heatmap method.
        image: one preprocessed image.
        num_classes: classes scored (the first ``num_classes`` outputs of the model).
        min_probability: detections (and a box method's maps) only for classes at least this
            probable, plus the most probable class.
        present: classes the image holds (their peak locations are scored).
        source: the RGB PIL image ``image`` was preprocessed from (for methods that crop it).
    """
    if method.maps_detected_classes_only:
        return _selected_class_maps(method, image, num_classes, min_probability, present,
                                    source)
    return maps_of_result(method, every_class(method, image, num_classes), num_classes,
                          min_probability, present)


def every_class(method: HeatmapMethod, image: torch.Tensor, num_classes: int) -> HeatmapResult:
    """The raw maps of the first ``num_classes`` classes of one image, from one call.

    One forward pass of the image (and one batched backward for gradient methods); the maps
    are not upsampled.
    """
    classes = torch.arange(num_classes)
    return method(image[:1], target=Targets(classes, torch.zeros_like(classes)),
                  upsample_maps=False)


def maps_of_result(method: HeatmapMethod, result: HeatmapResult, num_classes: int,
                   min_probability: float = 0.0, present: tuple[int, ...] = ()) -> ClassMaps:
    """:class:`ClassMaps` of an :func:`every_class` result (see the module docstring)."""
    probabilities = _probabilities(method, result.logits[:1])[:num_classes]
    detect = classes_to_detect(probabilities, min_probability)
    grids = {c: protocol_map(protocol_source(method, result.raw[c]))
             for c in sorted(set(present) | set(detect)) if c < num_classes}
    peak_values = result.raw.flatten(1).amax(1).cpu().numpy().astype(np.float64)
    return ClassMaps(peak_values, probabilities, grids, detect)


def _probabilities(method: HeatmapMethod, logits: torch.Tensor) -> np.ndarray:
    # the method's own classifier: a head method's logits are its own (sigmoid, multi-label)
    return method.classifier.probabilities(logits)[0].cpu().numpy().astype(np.float64)


def _selected_class_maps(method: HeatmapMethod, image: torch.Tensor, num_classes: int,
                         min_probability: float, present: tuple[int, ...],
                         source: Image.Image | None = None) -> ClassMaps:
    """A box method maps only the classes to detect; the others have no map."""
    with torch.inference_mode(), eval_mode(method.module):
        logits = method.module(image).float()
    probabilities = _probabilities(method, logits)[:num_classes]
    chosen = classes_to_detect(probabilities, min_probability)
    picked = torch.tensor(chosen)
    result = method(image, target=Targets(picked, torch.zeros_like(picked)),
                    upsample_maps=False, sources=None if source is None else [source])
    grids, peak_values = {}, np.zeros(num_classes, np.float64)
    for c, raw in zip(chosen, result.raw, strict=True):
        grids[c] = protocol_map(protocol_source(method, raw))
        peak_values[c] = float(raw.max())
    return ClassMaps(peak_values, probabilities, grids, chosen)


class ClassScorer:
    """Scores the maps of every class of multi-label images.

    Per image, with the GT boxes scaled to the 224x224 grid:

    - ``pointing_per_class``: :class:`~wsolkit.eval.PointingGame` of each class present among
      the image's non-ignored boxes, against those boxes (``class_accuracy``,
      ``mean_class_accuracy``);
    - ``pointing_ap``: :class:`~wsolkit.eval.PointingAP`, each class map's peak location (on
      the grid) as the point and the maximum of its raw layer-resolution map (before ReLU and
      normalization: for CAM, Oquab et al.'s max-pooled class score) as the confidence; every
      box, ignored ones included (a crowd region holds the class), makes the image a positive;
    - ``detection_ap``: :class:`~wsolkit.eval.DetectionAP` (VOC, IoU 0.5) where every
      8-connected component of a detected class's map (module docstring) at ``threshold`` x
      its maximum is a detection of that class, scored by its mean heat times the class
      probability, with COCO ``iscrowd`` / VOC ``difficult`` boxes ignored. A constant map
      gives no detection. With per-class map thresholds (``class_thresholds``, e.g. beam's,
      tuned by ``wsolkit tune-beam``) a normalized map is thresholded at its class's value
      instead; with ``box_score="box"`` a detection scores the mean heat inside its box (the
      paper's rule for beam);
    - ``classification_map``: :func:`~wsolkit.eval.multilabel_map` of the class probabilities
      against the image-level labels (crowd regions included), in %.

    Args:
        num_classes: classes scored.
        threshold: the detection rule's fraction of a map's maximum.
        class_thresholds: (C,) per-class thresholds of the normalized maps, replacing the
            fraction rule (None: the fraction rule).
        box_score: ``"blob"`` (mean heat of the blob times the class probability) or
            ``"box"`` (mean heat inside the box).
    """

    def __init__(self, num_classes: int, threshold: float,
                 class_thresholds: np.ndarray | None = None, box_score: str = "blob") -> None:
        check_box_score(box_score)
        if class_thresholds is not None and len(class_thresholds) != num_classes:
            raise InputError(f"class_thresholds has {len(class_thresholds)} values for "
                             f"{num_classes} classes")
        self.num_classes = num_classes
        self.threshold = threshold
        self.class_thresholds = class_thresholds
        self.box_score = box_score
        self.pointing = PointingGame()
        self.pointing_ap = PointingAP(num_classes)
        self.detection = DetectionAP(num_classes)
        self.probabilities: list[np.ndarray] = []
        self.labels: list[tuple[int, ...]] = []

    def add(self, sample: Sample, maps: ClassMaps, size: tuple[int, int]) -> None:
        """Add one image of ``size`` (width, height) with its class maps."""
        boxes = scale_boxes(sample.boxes, (size[1], size[0]), (PROTOCOL_SIZE, PROTOCOL_SIZE))
        labels, ignore = sample.box_labels, sample.box_ignore.astype(bool)
        detections = self._detections(maps)  # may fail: before any metric is updated
        self.pointing_ap.update(maps.peak_values, maps.points(), boxes, labels)
        for c in np.unique(labels[~ignore]).tolist():
            self.pointing.update(maps.grid(c), boxes[~ignore & (labels == c)], class_id=c)
        self.detection.update(*detections, boxes, labels, ignore)
        self.probabilities.append(maps.probabilities)
        self.labels.append(tuple(sample.labels))

    def _detections(self, maps: ClassMaps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        classes = [c for c in maps.detect
                   if c in maps.grids and maps.grids[c].any()]  # a constant map: no detection
        if not classes:
            return np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, int)
        grids = np.stack([maps.grids[c] for c in classes])
        if self.class_thresholds is None:  # the "fraction" rule of localize, every map at once
            levels = self.threshold * grids.reshape(len(classes), -1).max(1).astype(np.float64)
        else:
            levels = np.asarray([self.class_thresholds[c] for c in classes], np.float64)
        found = localize_stack(grids, levels)
        boxes = [b for b, _ in found]
        if self.box_score == "box":
            scores = [box_means(maps.grids[c], b) for c, (b, _) in zip(classes, found,
                                                                        strict=True)]
        else:
            scores = [s * maps.probabilities[c]
                      for c, (_, s) in zip(classes, found, strict=True)]
        labels = [np.full(len(b), c) for c, (b, _) in zip(classes, found, strict=True)]
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)

    def compute(self) -> dict:
        """The sections of the metrics that have something to report."""
        metrics = {}
        for key, metric in (("pointing_per_class", self.pointing),
                            ("pointing_ap", self.pointing_ap), ("detection_ap", self.detection)):
            try:
                metrics[key] = metric.compute()
            except InputError:  # e.g. only crowd boxes: nothing to score
                continue
        if self.probabilities:
            targets = np.zeros((len(self.labels), self.num_classes), bool)
            for row, labels in enumerate(self.labels):
                targets[row, [c for c in labels if c < self.num_classes]] = True
            mean, per_class = multilabel_map(np.stack(self.probabilities), targets)
            if mean is not None:
                metrics["classification_map"] = {
                    "mAP": 100.0 * mean, "count": len(self.labels),
                    "AP": {c: 100.0 * ap for c, ap in enumerate(per_class) if ap is not None}}
        return metrics
