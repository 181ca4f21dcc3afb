"""The localization job: heatmaps, boxes and overlays for many image files."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsolkit.apps.outputs import OutputNamer
from wsolkit.data.atomic import make_out_dir, write_json_atomic
from wsolkit.data.images import load_image
from wsolkit.errors import ImageError, InputError
from wsolkit.maps import get_method
from wsolkit.maps.base import HeatmapResult
from wsolkit.models.classifier import Classifier
from wsolkit.refine import localize, resize_map
from wsolkit.viz import draw_boxes, overlay_heatmap, save_png

RESULTS_FILE = "results.json"


@dataclass
class LocalizeSettings:
    """What to compute for every image.

    Attributes:
        method: registered heatmap method.
        target: ``top1``, ``topK`` or a class index.
        layer: layer to hook (None: the method's default).
        batch_size: images per forward pass.
        threshold: threshold method of :func:`wsolkit.refine.threshold_map`.
        threshold_value: its parameter (None: the method's default).
        components: ``largest`` (one box per map) or ``all``.
        options: extra method options (e.g. ``max_channels`` for Score-CAM).
    """

    method: str = "gradcam"
    target: str | int = "top1"
    layer: str | None = None
    batch_size: int = 16
    threshold: str = "fraction"
    threshold_value: float | None = 0.25
    components: str = "largest"
    options: dict = field(default_factory=dict)


@dataclass
class LocalizeReport:
    """What a job produced: one record per localized image and the items that failed."""

    records: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    layer: str | None = None


def localize_files(
    classifier: Classifier,
    paths: Sequence[Path],
    out_dir: Path,
    settings: LocalizeSettings,
    progress: Callable[[int], None] | None = None,
) -> LocalizeReport:
    """Localize objects in image files, writing overlays and ``results.json`` into ``out_dir``.

    Bad images are skipped and reported; nothing is written outside ``out_dir``.

    Args:
        classifier: the model.
        paths: image files.
        out_dir: output folder (created if missing).
        settings: method, target, thresholds.
        progress: called with the number of images finished after each batch.

    Returns:
        A :class:`LocalizeReport`.
    """
    if settings.batch_size < 1:
        raise InputError(f"--batch-size {settings.batch_size}: must be at least 1")
    method = get_method(settings.method)(classifier, layer=settings.layer, **settings.options)
    make_out_dir(out_dir)
    namer = OutputNamer(out_dir, list(paths))
    report = LocalizeReport()
    for batch in _batches(paths, settings.batch_size):
        images = _load_batch(batch, report)
        if images:
            tensor = classifier.preprocess_batch([image for _, image in images])
            result = method(tensor, target=settings.target,
                            sources=[image for _, image in images])
            report.layer = result.layer
            for index, (path, image) in enumerate(images):
                report.records.append(
                    _record(classifier, result, index, path, image, settings, namer)
                )
        if progress is not None:
            progress(len(batch))
    write_json_atomic(out_dir / RESULTS_FILE, _summary(classifier, settings, report))
    return report


def _batches(paths: Sequence[Path], size: int) -> Iterable[Sequence[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start:start + size]


def _load_batch(paths: Sequence[Path], report: LocalizeReport) -> list[tuple[Path, Image.Image]]:
    loaded = []
    for path in paths:
        try:
            loaded.append((path, load_image(path)))
        except ImageError as error:
            report.failures.append((str(path), str(error)))
    return loaded


def _record(
    classifier: Classifier,
    result: HeatmapResult,
    image_index: int,
    path: Path,
    image: Image.Image,
    settings: LocalizeSettings,
    namer: OutputNamer,
) -> dict:
    rows = (result.image_index == image_index).nonzero().flatten().tolist()
    probabilities = classifier.probabilities(result.logits[rows[0]])
    top_class = int(probabilities.argmax())
    pixels = np.asarray(image)
    targets, drawn, labels = [], [], []
    for row in rows:
        heatmap = resize_map(result.maps[row].cpu().numpy(), (image.height, image.width))
        found = localize(heatmap, settings.threshold, settings.threshold_value,
                         settings.components)
        target_class = int(result.classes[row])
        name = classifier.class_name(target_class) if target_class >= 0 else "custom target"
        targets.append(_target_record(target_class, name, probabilities, found))
        drawn.extend(found.boxes)
        label = name if target_class < 0 else f"{name} p={float(probabilities[target_class]):.2f}"
        labels.extend([label] * len(found.boxes))
        if row == rows[0]:
            canvas = overlay_heatmap(pixels, heatmap)
    canvas = draw_boxes(canvas, np.asarray(drawn).reshape(-1, 4), labels)
    overlay = namer.name(path.stem, f".{settings.method}.png")
    save_png(overlay, canvas)
    return {
        "image": str(path),
        "width": image.width,
        "height": image.height,
        "overlay": overlay.name,
        "prediction": {
            "class": top_class,
            "name": classifier.class_name(top_class),
            "probability": round(float(probabilities[top_class]), 6),
        },
        "targets": targets,
    }


def _target_record(target_class: int, name: str, probabilities: torch.Tensor, found) -> dict:
    probability = float(probabilities[target_class]) if target_class >= 0 else None
    return {
        "class": target_class,
        "name": name,
        "probability": None if probability is None else round(probability, 6),
        "boxes": [
            {"box": [round(float(v), 2) for v in box], "score": round(float(score), 6)}
            for box, score in zip(found.boxes, found.scores, strict=True)
        ],
    }


def _summary(classifier: Classifier, settings: LocalizeSettings, report: LocalizeReport) -> dict:
    return {
        "model": classifier.name,
        "method": settings.method,
        "layer": report.layer,
        "target": settings.target,
        "threshold": {"method": settings.threshold, "value": settings.threshold_value},
        "components": settings.components,
        "box_format": "x0,y0,x1,y1 pixel edges of the original image (x1 = x0 + width)",
        "images": report.records,
        "failures": [{"path": p, "error": e} for p, e in report.failures],
    }
