"""The per-batch core of the localization job, shared by the local and the Ray engine.

Both engines (:mod:`wsolkit.apps.engine`, :mod:`wsolkit.apps.ray_engine`) decode with the
core's :class:`~wsolkit.apps.engine.Decoder` and turn batches of decoded images into output
rows with :class:`LocalizeCore`, so they give the same row for the same image. A row is one
JSON object per image: ``status`` ``ok`` with the prediction and boxes, or ``failed`` with the
reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from wsolkit.apps.engine import DecodedImage, Decoder, failed_row, preprocessor
from wsolkit.errors import InputError
from wsolkit.maps import make_method
from wsolkit.maps.base import HeatmapResult
from wsolkit.models.classifier import Classifier
from wsolkit.refine import localize, resize_map
from wsolkit.viz import draw_boxes, overlay_heatmap

BOX_FORMAT = "x0,y0,x1,y1 pixel edges of the original image (x1 = x0 + width)"


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

    def describe(self) -> dict:
        """The settings as they are recorded beside a job's rows."""
        return {
            "method": self.method,
            "target": self.target,
            "requested_layer": self.layer,
            "threshold": {"method": self.threshold, "value": self.threshold_value},
            "components": self.components,
            "options": self.options,
        }


@dataclass
class Extras:
    """What a row may come with besides itself (the local engine writes them as files).

    Attributes:
        overlay: the drawn overlay (H, W, 3) uint8, for items decoded with pixels.
        heatmap: the first target's heatmap at the model's input size, (h, w) float32 in
            [0, 1], when the core keeps maps.
    """

    overlay: np.ndarray | None = None
    heatmap: np.ndarray | None = None


class LocalizeCore:
    """Heatmaps, boxes and rows for batches of decoded images.

    Args:
        classifier: the model, on the device to run on.
        settings: method, target and thresholds.
        keep_maps: also return each image's first heatmap (:class:`Extras`).
    """

    def __init__(self, classifier: Classifier, settings: LocalizeSettings,
                 keep_maps: bool = False) -> None:
        if settings.batch_size < 1:
            raise InputError(f"batch_size={settings.batch_size}: must be at least 1")
        self.classifier, self.settings = classifier, settings
        self.method = make_method(settings.method, classifier, layer=settings.layer,
                                  **settings.options)
        self.layer: str | None = None
        self.keep_maps = keep_maps
        self.uses_sources = bool(self.method.uses_sources)
        """Whether items must be decoded with ``keep_source=True``."""

    def describe(self) -> dict:
        """The settings recorded in ``results.json`` beside the rows."""
        return {**self.settings.describe(), "box_format": BOX_FORMAT}

    def decoder(self, overlay: frozenset[int] = frozenset()) -> Decoder:
        """Decoding for this core: pixels only for the items that get an overlay."""
        return Decoder(preprocessor(self.classifier), keep_source=self.uses_sources,
                       overlay=overlay)

    def submit(self, items: Sequence[DecodedImage]) -> Callable[[], list[tuple[dict, Extras]]]:
        """The rows of a batch, computed now (the boxes are cheap: no process pool)."""
        rows = self(items)
        return lambda: rows

    def __call__(self, items: Sequence[DecodedImage]) -> list[tuple[dict, Extras]]:
        """One ``(row, extras)`` per item, in order; overlays only for items with pixels.

        Items that failed to decode give failed rows.
        """
        good = [item for item in items if item.tensor is not None]
        done: dict[int, tuple[dict, Extras]] = {}
        if good:
            tensor = torch.stack([item.tensor for item in good]).to(self.classifier.device)
            extra = ({"sources": [item.source for item in good]}
                     if self.uses_sources else {})
            result = self.method(tensor, target=self.settings.target, **extra)
            self.layer = result.layer
            for index, item in enumerate(good):
                done[id(item)] = self._row(result, index, item)
        return [done.get(id(item))
                or (failed_row(item.path, item.error or "not decoded"), Extras())
                for item in items]

    def _row(self, result: HeatmapResult, image_index: int, item: DecodedImage
             ) -> tuple[dict, Extras]:
        classifier, settings = self.classifier, self.settings
        rows = (result.image_index == image_index).nonzero().flatten().tolist()
        probabilities = classifier.probabilities(result.logits[rows[0]]).cpu()
        top_class = int(probabilities.argmax())
        targets, drawn, labels, canvas = [], [], [], None
        for row in rows:
            heatmap = resize_map(result.maps[row].cpu().numpy(), (item.height, item.width))
            found = localize(heatmap, settings.threshold, settings.threshold_value,
                             settings.components)
            target_class = int(result.classes[row])
            name = classifier.class_name(target_class) if target_class >= 0 else "custom target"
            targets.append(_target_record(target_class, name, probabilities, found))
            if item.pixels is not None:
                drawn.extend(found.boxes)
                label = (name if target_class < 0
                         else f"{name} p={float(probabilities[target_class]):.2f}")
                labels.extend([label] * len(found.boxes))
                if row == rows[0]:
                    canvas = overlay_heatmap(item.pixels, heatmap)
        if canvas is not None:
            canvas = draw_boxes(canvas, np.asarray(drawn).reshape(-1, 4), labels)
        row = {
            "image": item.path,
            "status": "ok",
            "width": item.width,
            "height": item.height,
            "prediction": {
                "class": top_class,
                "name": classifier.class_name(top_class),
                "probability": round(float(probabilities[top_class]), 6),
            },
            "targets": targets,
        }
        kept = result.maps[rows[0]].float().cpu().numpy() if self.keep_maps else None
        return row, Extras(overlay=canvas, heatmap=kept)


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
