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

The images are decoded in ``DataLoader`` worker processes (``job.workers``) or, with
``ray=RayOptions(...)``, the maps are made by Ray actors (:mod:`wsolkit.apps.ray_engine`) with
the same per-batch core (:class:`EvaluateCore`); every metric accumulates on this process in
the dataset's order (``update`` / ``compute``), so both give the same numbers. The protocol
grid and its scorer live in :mod:`wsolkit.eval.protocol`, map files in
:mod:`wsolkit.data.map_files`, the written report in :mod:`wsolkit.apps.report`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wsolkit.apps.beam_boxes import class_thresholds, load_thresholds
from wsolkit.apps.class_scoring import ClassScorer, check_box_score
from wsolkit.apps.engine import JobOptions
from wsolkit.apps.evaluate_core import (
    MULTI_LABEL_KINDS,
    TARGETS,
    Batch,
    EvaluateCore,
    EvaluateJob,
    EvaluateSettings,
    computed_batches,
    loaded_batches,
)
from wsolkit.data.map_files import load_map, save_map
from wsolkit.data.sample import Sample
from wsolkit.errors import InputError, WSOLError
from wsolkit.eval.protocol import PROTOCOL_SIZE, ProtocolScorer, ScoredImage, protocol_map
from wsolkit.models.classifier import Classifier

if TYPE_CHECKING:
    from wsolkit.apps.ray_engine import RayOptions


@dataclass
class Evaluation:
    """Metrics of one method on one dataset, and the images behind them."""

    method: str
    target: str
    layer: str | None
    metrics: dict
    images: list[ScoredImage]
    failures: list[tuple[str, str]]


def evaluate(
    dataset: Sequence[Sample],
    settings: EvaluateSettings,
    classifier: Classifier | None = None,
    maps_dir: Path | None = None,
    save_maps_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    job: JobOptions | None = None,
    ray: RayOptions | None = None,
) -> Evaluation:
    """Compute maps (or load them from ``maps_dir``) for a dataset and score them.

    Args:
        dataset: a dataset reader (``wsolkit.data.open_dataset``).
        settings: method, target, thresholds.
        classifier: the model; required unless ``maps_dir`` is given.
        maps_dir: folder of precomputed ``<image_id>.npy`` maps (wsolevaluation convention).
        save_maps_dir: where to save each 224x224 map as ``<image_id>.npy``.
        progress: called with the number of images done after each batch.
        job: decoding worker processes (``workers``; default 0: decode here).
        ray: run the maps on Ray Data actors (:class:`~wsolkit.apps.ray_engine.RayOptions`)
            instead of this process; the metrics are the same.

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
    scorer = ProtocolScorer(has_boxes, has_masks, settings.cam_curve_interval, target == "gt")
    class_scorer = _class_scorer(dataset, classifier, maps_dir, has_boxes, settings)
    failures: list[tuple[str, str]] = []
    images: list[ScoredImage] = []
    layer = None
    batches = (
        loaded_batches(samples, maps_dir, settings.batch_size, failures)
        if maps_dir is not None
        else computed_batches(samples, classifier,
                               EvaluateJob(settings, target,
                                           class_scorer.num_classes if class_scorer else None),
                               failures, job or JobOptions(workers=0), ray)
    )
    for batch, done in batches:
        for index, sample in enumerate(batch.samples):
            try:
                images.append(_score(batch, index, scorer, class_scorer))
            except WSOLError as error:
                failures.append((sample.image_id, str(error)))
                continue
            if save_maps_dir is not None:
                save_map(save_maps_dir, sample.image_id, images[-1].heatmap)
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


def _score(batch: Batch, index: int, scorer: ProtocolScorer,
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
    check_box_score(settings.box_score)
    tuned = None if settings.class_thresholds is None else load_thresholds(
        settings.class_thresholds)  # a bad file fails here, also where it would not be used
    if (maps_dir is not None or classifier is None or not has_boxes
            or getattr(dataset, "kind", None) not in MULTI_LABEL_KINDS
            or not labels_are_model_classes(dataset, classifier)):
        return None
    count = len(dataset.class_names)
    per_class = None if tuned is None else class_thresholds(tuned, count)
    return ClassScorer(count, float(threshold), per_class, settings.box_score)


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


__all__ = [
    "EvaluateCore",
    "EvaluateJob",
    "EvaluateSettings",
    "Evaluation",
    "PROTOCOL_SIZE",
    "ScoredImage",
    "evaluate",
    "labels_are_model_classes",
    "load_map",
    "protocol_map",
]
