"""The evaluation job: score a heatmap method on a dataset with the WSOL protocol.

Every map is brought to the protocol's 224x224 grid (bicubic resize, then min-max
normalization, as wsolevaluation does; a computed map is resized from its raw layer
resolution, after the method's ReLU, not from the method's upsampled output), so computed
maps, maps of other sizes loaded from ``.npy`` files, boxes and masks are all scored the same
way:

- boxes (wsolevaluation, ImageNet-style sets): MaxBoxAcc, MaxBoxAccV2, top-1 / top-5 and
  GT-known localization (:class:`~wsolkit.eval.BoxAccuracy`), pointing game;
- masks (mask folders, OpenImages-style metadata, COCO): PxAP, pixel IoU and mIoU, F-measure
  ODS / OIS, MAE (:class:`~wsolkit.eval.PixelMetrics`), with masks resized to 224x224 by
  nearest neighbour and ignore pixels left out;
- every class (COCO, VOC, ImageNet mosaics, when the model's classes are the dataset's):
  one map per class of the dataset for every image, all from one call of the method
  (:mod:`wsolkit.apps.class_scoring`), scored by the per-class pointing game, pointing AP
  (:class:`~wsolkit.eval.PointingAP`), detection AP (:class:`~wsolkit.eval.DetectionAP`)
  and classification mAP. With other models the class spaces differ and only the
  class-agnostic scores above are computed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from wsolkit.apps.class_scoring import (
    ClassMaps,
    ClassScorer,
    class_maps,
    every_class,
    maps_of_result,
)
from wsolkit.apps.protocol import PROTOCOL_SIZE, protocol_map, protocol_source
from wsolkit.data.atomic import make_out_dir, write_bytes_atomic
from wsolkit.data.images import load_image
from wsolkit.data.sample import Sample
from wsolkit.errors import ImageError, InputError, WSOLError
from wsolkit.eval import BoxAccuracy, PixelMetrics, PointingGame
from wsolkit.maps import HeatmapMethod, make_method
from wsolkit.models.classifier import Classifier
from wsolkit.refine import scale_boxes

TARGETS = ("auto", "gt", "top1")
MULTI_LABEL_KINDS = ("coco", "voc")


@dataclass
class EvaluateSettings:
    """How maps are made and scored.

    Attributes:
        method: registered heatmap method (ignored when maps are loaded from files).
        target: ``gt`` (the image's label), ``top1``, or ``auto`` (``gt`` when the dataset's
            labels are the model's classes, else ``top1``).
        layer: layer to hook (None: the method's default).
        batch_size: images per forward pass.
        limit: score only the first N images.
        cam_curve_interval: spacing of the map thresholds (0.01: 100 thresholds).
        options: extra method options.
        detection_threshold: multi-label scoring only (see
            :class:`~wsolkit.apps.class_scoring.ClassScorer`): a class map's connected
            components at ``detection_threshold`` x its maximum are its detections.
        min_class_probability: multi-label scoring only: detections (and a box method's
            maps, e.g. ``beam``) only for the classes of an image at least this probable,
            plus its most probable class (0: every class); see
            :mod:`wsolkit.apps.class_scoring`.
    """

    method: str = "cam"
    target: str = "auto"
    layer: str | None = None
    batch_size: int = 32
    limit: int | None = None
    cam_curve_interval: float = 0.01
    options: dict = field(default_factory=dict)
    detection_threshold: float = 0.5
    min_class_probability: float = 0.001


@dataclass
class ScoredImage:
    """What the report needs of one scored image: its 224x224 map and ground truth."""

    sample: Sample
    heatmap: np.ndarray
    boxes: np.ndarray
    mask: np.ndarray | None
    predicted: int | None = None


@dataclass
class Evaluation:
    """Metrics of one method on one dataset, and the images behind them."""

    method: str
    target: str
    layer: str | None
    metrics: dict
    images: list[ScoredImage]
    failures: list[tuple[str, str]]


@dataclass
class _Batch:
    samples: list[Sample]
    maps: list[np.ndarray]
    sizes: list[tuple[int, int]]
    top5: list[list[int] | None]
    layer: str | None = None
    class_maps: list[Callable[[], ClassMaps]] = field(default_factory=list)


def evaluate(
    dataset: Sequence[Sample],
    settings: EvaluateSettings,
    classifier: Classifier | None = None,
    maps_dir: Path | None = None,
    save_maps_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Compute maps (or load them from ``maps_dir``) for a dataset and score them.

    Args:
        dataset: a dataset reader (``wsolkit.data.open_dataset``).
        settings: method, target, thresholds.
        classifier: the model; required unless ``maps_dir`` is given.
        maps_dir: folder of precomputed ``<image_id>.npy`` maps (wsolevaluation convention).
        save_maps_dir: where to save each 224x224 map as ``<image_id>.npy``.
        progress: called with the number of images done after each batch.

    Returns:
        An :class:`Evaluation`; images that could not be scored are in ``failures``. For a
        COCO or VOC dataset whose classes are the classifier's (:func:`labels_are_model_classes`)
        and computed maps, ``metrics`` also has ``pointing_per_class``, ``pointing_ap`` and
        ``detection_ap`` from the maps of every class and ``classification_map`` (see
        :class:`~wsolkit.apps.class_scoring.ClassScorer`).

    Raises:
        InputError: nothing to score, bad settings, or every image failed.
    """
    samples = list(dataset)[: settings.limit] if settings.limit else list(dataset)
    source = getattr(dataset, "annotation_file", None) or getattr(dataset, "root", "dataset")
    if not samples:
        raise InputError(f"{source}: the dataset has no images to score")
    has_boxes = any(len(s.boxes) for s in samples)
    has_masks = any(s.has_mask for s in samples)
    if not (has_boxes or has_masks):
        raise InputError(f"{source}: the dataset has neither boxes nor masks to score maps "
                         "against")
    target = _resolve_target(settings.target, dataset, classifier, maps_dir)
    scorer = _Scorer(has_boxes, has_masks, settings.cam_curve_interval, target == "gt")
    class_scorer = _class_scorer(dataset, classifier, maps_dir, has_boxes, settings)
    failures: list[tuple[str, str]] = []
    images: list[ScoredImage] = []
    layer = None
    batches = (
        _loaded_batches(samples, maps_dir, settings.batch_size, failures)
        if maps_dir is not None
        else _computed_batches(samples, classifier, settings, target, failures,
                               class_scorer.num_classes if class_scorer else None)
    )
    for batch, done in batches:
        for index, sample in enumerate(batch.samples):
            try:
                images.append(_score(batch, index, scorer, class_scorer))
            except WSOLError as error:
                failures.append((sample.image_id, str(error)))
                continue
            if save_maps_dir is not None:
                _save_map(save_maps_dir, sample.image_id, images[-1].heatmap)
        layer = layer or batch.layer
        if progress is not None:
            progress(done)
    if not images:
        raise InputError(f"no image could be scored ({len(failures)} failed)")
    metrics = scorer.compute()
    if class_scorer is not None:
        metrics.update(class_scorer.compute())
    return Evaluation(
        method=settings.method if maps_dir is None else f"maps:{maps_dir}",
        target=target,
        layer=layer,
        metrics=metrics,
        images=images,
        failures=failures,
    )


def _score(batch: _Batch, index: int, scorer: _Scorer,
           class_scorer: ClassScorer | None) -> ScoredImage:
    """Score one image of a batch; every map is made before any metric is updated."""
    sample, size = batch.samples[index], batch.sizes[index]
    class_maps = batch.class_maps[index]() if class_scorer is not None else None
    scored = scorer.add(sample, batch.maps[index], size, batch.top5[index])
    if class_scorer is not None:
        class_scorer.add(sample, class_maps, size)
    return scored


def labels_are_model_classes(dataset: object, classifier: Classifier) -> bool:
    """True when the dataset's class indices index the classifier's outputs."""
    names = getattr(dataset, "class_names", None)
    if getattr(dataset, "kind", None) == "wsol" and (names is None or classifier.class_names
                                                      is None):
        return True
    return (
        names is not None
        and classifier.class_names is not None
        and len(names) == len(classifier.class_names)
    )


def _class_scorer(dataset: object, classifier: Classifier | None, maps_dir: Path | None,
                  has_boxes: bool, settings: EvaluateSettings) -> ClassScorer | None:
    """A scorer of every class's maps when the dataset is multi-label and the classes match."""
    threshold = settings.detection_threshold
    if not (isinstance(threshold, int | float) and 0 < threshold <= 1):
        raise InputError(f"detection_threshold={threshold!r}: must be in (0, 1]")
    low = settings.min_class_probability
    if not (isinstance(low, int | float) and 0 <= low <= 1):
        raise InputError(f"min_class_probability={low!r}: must be in [0, 1]")
    if (maps_dir is not None or classifier is None or not has_boxes
            or getattr(dataset, "kind", None) not in MULTI_LABEL_KINDS
            or not labels_are_model_classes(dataset, classifier)):
        return None
    return ClassScorer(len(dataset.class_names), float(threshold))


def _resolve_target(target: str, dataset: object, classifier: Classifier | None,
                    maps_dir: Path | None) -> str:
    if target not in TARGETS:
        raise InputError(f"target={target!r}: use one of {', '.join(TARGETS)}")
    if maps_dir is not None:
        return "maps"
    if classifier is None:
        raise InputError("a model is needed to compute maps (or give maps_dir=DIR)")
    matches = labels_are_model_classes(dataset, classifier)
    if target == "gt" and not matches:
        raise InputError(
            "target='gt': the dataset's labels are not the model's classes; use target='top1'"
        )
    if target == "auto":
        return "gt" if matches else "top1"
    return target


def _computed_batches(
    samples: list[Sample],
    classifier: Classifier,
    settings: EvaluateSettings,
    target: str,
    failures: list[tuple[str, str]],
    class_count: int | None = None,
) -> Iterator[tuple[_Batch, int]]:
    if settings.batch_size < 1:
        raise InputError(f"batch_size={settings.batch_size}: must be at least 1")
    method = make_method(settings.method, classifier, layer=settings.layer, **settings.options)
    for start in range(0, len(samples), settings.batch_size):
        chunk = samples[start:start + settings.batch_size]
        loaded = []
        for sample in chunk:
            try:
                loaded.append((sample, load_image(sample.path)))
            except ImageError as error:
                failures.append((sample.image_id, str(error)))
        batch = _Batch([], [], [], [])
        if loaded and class_count and not hasattr(method, "classes_to_map"):
            _add_every_class(batch, method, loaded, classifier, target, class_count,
                             settings.min_class_probability)
        elif loaded:
            pictures = [image for _, image in loaded]
            tensor = classifier.preprocess_batch(pictures)
            labels = [max(sample.label, 0) for sample, _ in loaded]
            result = method(tensor, target="gt" if target == "gt" else "top1", labels=labels,
                            sources=pictures)
            top5 = result.logits.topk(min(5, result.logits.shape[1]), dim=1).indices.tolist()
            for index, (sample, image) in enumerate(loaded):
                batch.samples.append(sample)
                batch.maps.append(protocol_source(method, result.raw[index]))
                batch.sizes.append(image.size)
                batch.top5.append(top5[index])
                if class_count:
                    batch.class_maps.append(partial(
                        class_maps, method, tensor[index:index + 1], class_count,
                        settings.min_class_probability, tuple(sample.labels), image))
            batch.layer = result.layer
        yield batch, len(chunk)


def _add_every_class(batch: _Batch, method: HeatmapMethod, loaded: list, classifier: Classifier,
                     target: str, class_count: int, min_probability: float) -> None:
    """Every class's map of each image from one call; the scored single map is one of them."""
    for sample, image in loaded:
        result = every_class(method, classifier.preprocess_batch([image]), class_count)
        logits = result.logits[0]
        chosen = max(sample.label, 0) if target == "gt" else int(logits.argmax())
        batch.samples.append(sample)
        batch.maps.append(protocol_source(method, result.raw[chosen]))
        batch.sizes.append(image.size)
        batch.top5.append(logits.topk(min(5, len(logits))).indices.tolist())
        batch.class_maps.append(partial(maps_of_result, method, result, class_count,
                                        min_probability, tuple(sample.labels)))
        batch.layer = result.layer


def _loaded_batches(
    samples: list[Sample], maps_dir: Path, batch_size: int, failures: list[tuple[str, str]]
) -> Iterator[tuple[_Batch, int]]:
    if not maps_dir.is_dir():
        raise InputError(f"maps_dir={maps_dir}: folder not found")
    for start in range(0, len(samples), max(batch_size, 1)):
        chunk = samples[start:start + max(batch_size, 1)]
        batch = _Batch([], [], [], [])
        for sample in chunk:
            try:
                heatmap = load_map(maps_dir, sample.image_id)
                size = sample.size or _image_size(sample.path)
            except WSOLError as error:
                failures.append((sample.image_id, str(error)))
                continue
            batch.samples.append(sample)
            batch.maps.append(heatmap)
            batch.sizes.append(size)
            batch.top5.append(None)
        yield batch, len(chunk)


def load_map(maps_dir: Path, image_id: str) -> np.ndarray:
    """Load ``<maps_dir>/<image_id>.npy``, a finite 2-D map of any size and range.

    Raises:
        InputError: missing or unreadable file, wrong shape, non-finite values.
    """
    path = maps_dir / f"{image_id}.npy"
    if not path.is_file():
        raise InputError(f"{path}: map file not found")
    try:
        heatmap = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable .npy array ({error})") from None
    heatmap = np.squeeze(heatmap)
    if heatmap.ndim != 2 or heatmap.dtype.kind not in "fiub" or min(heatmap.shape) < 1:
        raise InputError(f"{path}: expected a 2-D numeric map, got shape {heatmap.shape}")
    if not np.isfinite(heatmap).all():
        raise InputError(f"{path}: map has NaN or infinite values")
    return heatmap.astype(np.float32)


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as error:
        raise ImageError(f"{path}: cannot read the image size ({error})") from None


def _save_map(folder: Path, image_id: str, heatmap: np.ndarray) -> None:
    path = folder / f"{image_id}.npy"
    if not os.path.realpath(path).startswith(os.path.join(os.path.realpath(folder), "")):
        raise InputError(f"save_maps_dir={folder}: the map of image {image_id!r} would be "
                         "written outside it")
    make_out_dir(path.parent, "save_maps_dir")
    write_bytes_atomic(path, _npy_bytes(heatmap.astype(np.float32)))


def _npy_bytes(array: np.ndarray) -> bytes:
    handle = io.BytesIO()
    np.save(handle, array, allow_pickle=False)
    return handle.getvalue()


class _Scorer:
    """Feeds one image at a time to every metric that applies to the dataset."""

    def __init__(self, boxes: bool, masks: bool, interval: float, classes_known: bool) -> None:
        self.box_accuracy = BoxAccuracy(cam_curve_interval=interval) if boxes else None
        self.pointing = PointingGame() if boxes else None
        self.pixels = PixelMetrics(num_thresholds=round(1 / interval)) if masks else None
        self.classes_known = classes_known
        self.top5_hits: list[bool] = []
        self.constant_maps = 0

    def add(self, sample: Sample, heatmap: np.ndarray, size: tuple[int, int],
            top5: list[int] | None) -> ScoredImage:
        grid = protocol_map(heatmap)
        mask = None
        if self.pixels is not None and sample.has_mask:
            mask = self._load_mask(sample, size)  # may fail: before any metric is updated
        scored = ScoredImage(sample, grid, np.zeros((0, 4), np.float32), None,
                             top5[0] if top5 else None)
        if self.box_accuracy is not None:
            scored.boxes = self._add_boxes(sample, grid, size, top5)
        if mask is not None:
            scored.mask = mask[0]
            self.pixels.update(grid, *mask)
        self.constant_maps += int(not grid.any())
        return scored

    def _add_boxes(self, sample: Sample, grid: np.ndarray, size: tuple[int, int],
                   top5: list[int] | None) -> np.ndarray:
        boxes = sample.boxes[~sample.box_ignore] if len(sample.box_ignore) else sample.boxes
        if not len(boxes):
            return np.zeros((0, 4), np.float32)
        known = top5 is not None and self.classes_known
        self.box_accuracy.update(grid, boxes, size,
                                 correct_class=top5[0] == sample.label if known else None)
        if known:
            self.top5_hits.append(sample.label in top5)
        scaled = scale_boxes(boxes, (size[1], size[0]), (PROTOCOL_SIZE, PROTOCOL_SIZE))
        self.pointing.update(grid, scaled)
        return scaled

    @staticmethod
    def _load_mask(sample: Sample,
                   size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
        foreground, ignore = sample.load_mask()
        if foreground.shape != (size[1], size[0]):
            raise InputError(
                f"{sample.image_id}: mask is {foreground.shape[1]}x{foreground.shape[0]} but "
                f"the image is {size[0]}x{size[1]}"
            )
        return _nearest(foreground), _nearest(ignore) if ignore.any() else None

    def compute(self) -> dict:
        metrics: dict = {"constant_maps": self.constant_maps}
        if self.box_accuracy is not None:
            boxes = self.box_accuracy.compute()
            metrics["boxes"] = boxes
            metrics["pointing"] = self.pointing.compute()
            if self.top5_hits:
                metrics["boxes"]["top5_loc"] = self._top5_loc(boxes)
        if self.pixels is not None:
            metrics["pixels"] = self.pixels.compute()
        return metrics

    def _top5_loc(self, boxes: dict) -> float:
        hits = self.box_accuracy.per_image_hits(boxes["best_threshold"])
        return float(np.mean(hits & np.array(self.top5_hits)) * 100)


def _nearest(mask: np.ndarray) -> np.ndarray:
    resized = cv2.resize(mask.astype(np.uint8), (PROTOCOL_SIZE, PROTOCOL_SIZE),
                         interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


__all__ = [
    "EvaluateSettings",
    "Evaluation",
    "ScoredImage",
    "evaluate",
    "labels_are_model_classes",
    "load_map",
    "protocol_map",
]
