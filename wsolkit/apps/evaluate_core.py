"""The per-batch core of ``wsolkit evaluate``, and the batches it gives on each engine.

Locally the images are decoded in ``DataLoader`` worker processes and :class:`EvaluateCore`
runs here; on Ray (:mod:`wsolkit.apps.ray_engine`) the same core runs in actors and the
outputs are put back in the dataset's order. Either way :func:`wsolkit.apps.evaluate.evaluate`
accumulates every metric on this process, in the dataset's order, so the numbers are the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from wsolkit.apps.class_scoring import ClassMaps, class_maps, every_class, maps_of_result
from wsolkit.apps.engine import (
    DecodedImage,
    Decoder,
    ImageFiles,
    JobOptions,
    as_list,
    failed_row,
    preprocessor,
)
from wsolkit.data.map_files import load_map
from wsolkit.data.mask_files import image_file_size
from wsolkit.data.sample import Sample
from wsolkit.errors import InputError, WSOLError
from wsolkit.eval.protocol import protocol_source
from wsolkit.maps import make_method
from wsolkit.models.classifier import Classifier

if TYPE_CHECKING:
    from wsolkit.apps.ray_engine import RayOptions

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
        class_thresholds: multi-label scoring only: per-class thresholds of the normalized
            maps instead of the ``detection_threshold`` rule (a ``wsolkit tune-beam`` JSON
            file or its dict; classes it does not list take its global value, else 0.5).
        box_score: multi-label scoring only: a detection's score, ``"blob"`` (mean heat of
            the blob times the class probability) or ``"box"`` (mean heat inside the box,
            Bency et al.'s rule).
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
    class_thresholds: str | os.PathLike | dict | None = None
    box_score: str = "blob"


@dataclass
class Batch:
    """Maps of a batch of images, with what scoring them needs."""

    samples: list[Sample]
    maps: list[np.ndarray]
    sizes: list[tuple[int, int]]
    top5: list[list[int] | None]
    layer: str | None = None
    class_maps: list[Callable[[], ClassMaps]] = field(default_factory=list)


@dataclass
class EvaluateJob:
    """What :class:`EvaluateCore` computes (picklable: it travels to Ray actors).

    Attributes:
        settings: method, layer, options, batch size.
        target: ``gt`` or ``top1`` (resolved).
        class_count: classes scored by the every-class metrics, None: those are not computed.
        labels: image labels by absolute file path (the Ray actors look them up).
        eager: make every-class maps in the core (Ray), not when the image is scored.
    """

    settings: EvaluateSettings
    target: str
    class_count: int | None = None
    labels: dict[str, tuple[int, ...]] = field(default_factory=dict)
    eager: bool = False


class EvaluateCore:
    """Per batch of decoded images: each image's protocol source map, top-5, class maps.

    One output dict per image: ``status`` ``ok`` with ``map`` (raw layer-resolution map
    after the method's ReLU), ``size`` (width, height), ``top5``, ``layer`` and
    ``class_maps`` (a :class:`~wsolkit.apps.class_scoring.ClassMaps`, a callable making it,
    or None), or ``failed`` with the reason.
    """

    def __init__(self, classifier: Classifier, job: EvaluateJob) -> None:
        settings = job.settings
        if settings.batch_size < 1:
            raise InputError(f"batch_size={settings.batch_size}: must be at least 1")
        self.classifier, self.job = classifier, job
        self.method = make_method(settings.method, classifier, layer=settings.layer,
                                  **settings.options)

    def decoder(self, overlay: frozenset[int] = frozenset()) -> Decoder:
        """Decoding for this core: the PIL image travels too (methods that crop it)."""
        return Decoder(preprocessor(self.classifier), keep_source=True)

    def __call__(self, items: Sequence[DecodedImage]) -> list[tuple[dict, None]]:
        """Ray actor's entry: labels looked up by path."""
        labels = [self.job.labels.get(item.path, ()) for item in items]
        return [(row, None) for row in self.outputs(items, labels)]

    def outputs(self, items: Sequence[DecodedImage], labels: Sequence[tuple[int, ...]]
                ) -> list[dict]:
        """One output per item, in order (``labels``: each image's labels)."""
        job, method = self.job, self.method
        good = [(item, tuple(found)) for item, found in zip(items, labels, strict=True)
                if item.tensor is not None]
        done: dict[int, dict] = {}
        device = self.classifier.device
        if good and job.class_count and not method.maps_detected_classes_only:
            for item, present in good:
                result = every_class(method, item.tensor[None].to(device), job.class_count)
                logits = result.logits[0]
                label = present[0] if present else -1
                chosen = max(label, 0) if job.target == "gt" else int(logits.argmax())
                done[id(item)] = self._ok(
                    item, protocol_source(method, result.raw[chosen]),
                    logits.topk(min(5, len(logits))).indices.tolist(), result.layer,
                    partial(maps_of_result, method, result, job.class_count,
                            job.settings.min_class_probability, present))
        elif good:
            tensor = torch.stack([item.tensor for item, _ in good]).to(device)
            pictures = [item.source for item, _ in good]
            targets = [max(present[0] if present else -1, 0) for _, present in good]
            result = method(tensor, target="gt" if job.target == "gt" else "top1",
                            labels=targets, sources=pictures)
            top5 = result.logits.topk(min(5, result.logits.shape[1]), dim=1).indices.tolist()
            for index, (item, present) in enumerate(good):
                maps = (partial(class_maps, method, tensor[index:index + 1], job.class_count,
                                job.settings.min_class_probability, present, item.source)
                        if job.class_count else None)
                done[id(item)] = self._ok(item, protocol_source(method, result.raw[index]),
                                          top5[index], result.layer, maps)
        return [done.get(id(item)) or failed_row(item.path, item.error or "not decoded")
                for item in items]

    def _ok(self, item: DecodedImage, heatmap: np.ndarray, top5: list[int], layer: str,
            maps: Callable[[], ClassMaps] | None) -> dict:
        if maps is not None and self.job.eager:
            maps = maps()
        return {"image": item.path, "status": "ok", "map": heatmap,
                "size": (item.width, item.height), "top5": top5, "layer": layer,
                "class_maps": maps}


def computed_batches(samples: list[Sample], classifier: Classifier, job: EvaluateJob,
                      failures: list[tuple[str, str]], options: JobOptions,
                      ray: RayOptions | None) -> Iterator[tuple[Batch, int]]:
    """Batches of computed maps, in the dataset's order (with the images done per batch)."""
    core = EvaluateCore(classifier, job)
    batch_size = job.settings.batch_size
    if ray is not None:
        yield from _ray_batches(samples, classifier, job, failures, ray)
        return
    options.check()
    loader = DataLoader(ImageFiles([sample.path for sample in samples], core.decoder()),
                        batch_size=batch_size, num_workers=options.workers,
                        collate_fn=as_list)
    start = 0
    for items in loader:
        chunk = samples[start:start + len(items)]
        start += len(items)
        outputs = core.outputs(items, [sample.labels for sample in chunk])
        yield batch_of(chunk, outputs, failures), len(chunk)


def batch_of(samples: Sequence[Sample], outputs: Sequence[dict],
              failures: list[tuple[str, str]]) -> Batch:
    """The batch of the ok outputs; failed ones go to ``failures`` by image id."""
    batch = Batch([], [], [], [])
    for sample, out in zip(samples, outputs, strict=True):
        if out["status"] != "ok":
            failures.append((sample.image_id, out["error"]))
            continue
        batch.samples.append(sample)
        batch.maps.append(out["map"])
        batch.sizes.append(out["size"])
        batch.top5.append(out["top5"])
        made = out["class_maps"]
        if made is not None:
            batch.class_maps.append(made if callable(made) else partial(_given, made))
        batch.layer = out["layer"]
    return batch


def _given(value: ClassMaps) -> ClassMaps:
    return value


def _ray_batches(samples: list[Sample], classifier: Classifier, job: EvaluateJob,
                 failures: list[tuple[str, str]], options: RayOptions
                 ) -> Iterator[tuple[Batch, int]]:
    """The actors' outputs back in the dataset's order, in batches.

    The metrics then see the images in the same order as with the local engine.
    """
    from wsolkit.apps.ray_engine import default_actor_cpus, ray_rows, ray_session

    if options.actors < 1:
        raise InputError(f"actors={options.actors}: must be at least 1")
    cpus = default_actor_cpus() if options.actor_cpus is None else options.actor_cpus
    if cpus <= 0:
        raise InputError(f"actor_cpus {cpus}: must be above 0")
    where = {os.path.abspath(sample.path): index for index, sample in enumerate(samples)}
    if len(where) < len(samples):
        raise InputError("engine='ray': the dataset lists an image file twice")
    labels = {path: tuple(samples[index].labels) for path, index in where.items()}
    remote = EvaluateJob(job.settings, job.target, job.class_count, labels, eager=True)
    size, arrived, ready, done = job.settings.batch_size, {}, [], 0
    with ray_session(options):
        for out in ray_rows(EvaluateCore, classifier, remote, list(where), size, options,
                            cpus):
            arrived[where[out["image"]]] = out
            while done in arrived:
                ready.append(arrived.pop(done))
                done += 1
                if len(ready) == size:
                    yield batch_of(samples[done - size:done], ready, failures), size
                    ready = []
    if ready:
        yield batch_of(samples[done - len(ready):done], ready, failures), len(ready)


def loaded_batches(
    samples: list[Sample], maps_dir: Path, batch_size: int, failures: list[tuple[str, str]]
) -> Iterator[tuple[Batch, int]]:
    """Batches of maps read from ``<maps_dir>/<image_id>.npy`` files."""
    if not maps_dir.is_dir():
        raise InputError(f"maps_dir={maps_dir}: folder not found")
    for start in range(0, len(samples), max(batch_size, 1)):
        chunk = samples[start:start + max(batch_size, 1)]
        batch = Batch([], [], [], [])
        for sample in chunk:
            try:
                heatmap = load_map(maps_dir, sample.image_id)
                size = sample.size or image_file_size(sample.path)
            except WSOLError as error:
                failures.append((sample.image_id, str(error)))
                continue
            batch.samples.append(sample)
            batch.maps.append(heatmap)
            batch.sizes.append(size)
            batch.top5.append(None)
        yield batch, len(chunk)


