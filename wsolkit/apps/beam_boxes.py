"""Multi-object boxes from beam-search heatmaps (Bency et al., ECCV 2016, sec. 3.4).

For every image, each class whose (optionally co-occurrence rescored) probability passes
``score_threshold`` is searched with :class:`~wsolkit.maps.beam.BeamSearch`; its heatmap is
thresholded (the class's tuned threshold, see ``wsolkit tune-beam``) into blobs, one box per
8-connected blob, scored by the blob's mean heat (the heatmap min-max normalized to [0, 1])
times the class score (``box_score="blob"``, ours) or, as the paper, by the mean heat inside
the box (``box_score="box"``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsolkit.apps.class_scoring import check_box_score, select_classes
from wsolkit.apps.cooccurrence import rescore
from wsolkit.checks import check_integer
from wsolkit.errors import InputError
from wsolkit.maps.base import check_images
from wsolkit.maps.beam import BeamSearch
from wsolkit.maps.hooks import eval_mode
from wsolkit.models.classifier import Classifier, as_classifier
from wsolkit.refine import box_means, localize


@dataclass(frozen=True)
class BeamBox:
    """One detection: class index, ``x0, y0, x1, y1`` in input pixels, score."""

    class_index: int
    box: np.ndarray
    score: float

    def __iter__(self):
        """Unpack as ``(class, box, score)``."""
        return iter((self.class_index, self.box, self.score))


def class_scores(classifier: Classifier, images: torch.Tensor) -> torch.Tensor:
    """(N, classes) class probabilities of a batch (no autograd, model flags restored)."""
    with torch.inference_mode(), eval_mode(classifier.module):
        return classifier.probabilities(classifier.module(images)).cpu()


def beam_boxes(
    model: Classifier | torch.nn.Module,
    images: torch.Tensor | Sequence[Image.Image | str | os.PathLike],
    classes: Sequence[int] | None = None,
    score_threshold: float = 0.1,
    thresholds: str | os.PathLike | dict | None = None,
    cooccurrence: np.ndarray | None = None,
    alpha: float = 0.0,
    beam_width: int | None = None,
    levels: int | None = None,
    batch_size: int = 8,
    box_score: str = "blob",
    crop_from: str = "image",
    preset: str = "default",
) -> list[list[BeamBox]]:
    """Boxes of every object class found in each image, by beam search.

    Args:
        model: a :class:`~wsolkit.models.Classifier` or a bare ``nn.Module``.
        images: (N, C, H, W) preprocessed batch, or RGB PIL images / paths (preprocessed with
            the model's preprocessing; boxes are then in the model's input pixels).
        classes: candidate class indices (default: all the model's classes).
        score_threshold: classes whose score reaches it are searched; the best candidate
            class is always searched.
        thresholds: per-class heatmap thresholds (``wsolkit tune-beam`` JSON file or dict);
            0.5 of the normalized heatmap where none is given.
        cooccurrence: (C, C) ``p(b_i | b_j)`` from
            :func:`~wsolkit.apps.cooccurrence.pair_probabilities`; with ``alpha`` the class
            probabilities are rescored (eq. 2) before thresholding and box scoring.
        alpha: weight of the co-occurrence term.
        beam_width: M of the search (default: the preset's).
        levels: H of the search (default: the preset's).
        batch_size: (image, class) searches run together.
        box_score: ``"blob"`` (mean heat of the blob times the class score, ours) or ``"box"``
            (mean heat inside the box, the paper's); see :func:`heat_boxes`.
        crop_from: where deeper levels crop (see :class:`~wsolkit.maps.beam.BeamSearch`);
            ``"image"`` uses the given PIL images / paths, a tensor batch is cropped as is.
        preset: the search's ``"default"`` (M = 4, H = 10) or ``"paper"`` (M = 8, H = 10)
            size (:data:`wsolkit.maps.beam.PRESETS`); the paper's box score is
            ``box_score="box"``.

    Returns:
        Per image, a list of :class:`BeamBox` ``(class, box, score)``, best first.

    Raises:
        InputError: bad images, classes, thresholds or co-occurrence matrix.
    """
    classifier = as_classifier(model)
    sources = None
    if isinstance(images, list | tuple):
        from wsolkit.data.images import load_image

        loaded = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        sources = [im.convert("RGB") for im in loaded]
        images = classifier.preprocess_batch(sources)
    images = check_images(images).to(classifier.device)
    batch_size = check_integer(batch_size, "batch_size", 1)
    tuned = load_thresholds(thresholds)
    check_box_score(box_score)
    method = BeamSearch(classifier, beam_width=beam_width, levels=levels, crop_from=crop_from,
                        preset=preset)
    scores = class_scores(classifier, images).double().numpy()
    if cooccurrence is not None:
        scores = rescore(scores, cooccurrence, alpha)
    pairs = [(n, c) for n, chosen in enumerate(select_classes(scores, score_threshold, classes))
             for c in chosen]
    found: list[list[BeamBox]] = [[] for _ in range(len(images))]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        index = torch.tensor([n for n, _ in chunk], device=images.device)
        result = method(images[index], target=[c for _, c in chunk],
                        sources=None if sources is None else [sources[n] for n, _ in chunk])
        for (n, c), heat in zip(chunk, result.maps.cpu().numpy(), strict=True):
            found[n].extend(heat_boxes(heat, threshold_for(tuned, c), c, float(scores[n, c]),
                                       box_score))
    return [sorted(boxes, key=lambda b: -b.score) for boxes in found]


def heat_boxes(heat: np.ndarray, threshold: float, class_index: int,
               class_score: float = 1.0, box_score: str = "blob") -> list[BeamBox]:
    """One box per blob of ``heat >= threshold``.

    Args:
        heat: (H, W) heatmap.
        threshold: map threshold.
        class_index: class of the boxes.
        class_score: the class's probability.
        box_score: ``"blob"``: the blob's mean heat times ``class_score`` (ours);
            ``"box"``: the mean heat inside the box (Bency et al., sec. 3.4).
    """
    check_box_score(box_score)
    if not heat.any():
        return []
    found = localize(heat, "fixed", threshold, mode="all")
    scores = (box_means(heat, found.boxes) if box_score == "box"
              else found.scores.astype(np.float64) * class_score)
    return [BeamBox(class_index, box, float(score))
            for box, score in zip(found.boxes, scores, strict=True)]


DEFAULT_THRESHOLD = 0.5
"""Map threshold of a class with no tuned value and no tuned global one."""


def load_thresholds(source: str | os.PathLike | dict | None) -> dict:
    """Read heatmap thresholds: ``{"global": t, "per_class": {"<class>": t, ...}}``.

    Args:
        source: a JSON file written by ``wsolkit tune-beam``, the same dict, or None.

    Raises:
        InputError: unreadable file, wrong structure, or a threshold outside [0, 1].
    """
    if source is None:
        return {}
    name = "thresholds"
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        name = str(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"thresholds file {path} not found") from None
        except (OSError, ValueError) as error:
            raise InputError(f"thresholds file {path}: not readable JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("per_class", {}), dict):
        raise InputError(f"{name}: expected {{'global': t, 'per_class': {{class: t}}}}")
    values = [data.get("global")] + list(data.get("per_class", {}).values())
    for value in values:
        if value is None:
            continue
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or not 0 <= value <= 1):
            raise InputError(f"{name}: threshold {value!r} is not a number in [0, 1]")
    return {"global": data.get("global"),
            "per_class": {str(k): float(v) for k, v in data.get("per_class", {}).items()}}


def threshold_for(thresholds: dict, class_index: int) -> float:
    """Map threshold of a class: its tuned value, else the tuned global one, else 0.5.

    Args:
        thresholds: as returned by :func:`load_thresholds`.
        class_index: the class.
    """
    value = thresholds.get("per_class", {}).get(str(int(class_index)), thresholds.get("global"))
    return float(DEFAULT_THRESHOLD if value is None else value)


def class_thresholds(thresholds: str | os.PathLike | dict, num_classes: int) -> np.ndarray:
    """(C,) map threshold of every class (:func:`threshold_for`) from a tune-beam file or dict."""
    tuned = load_thresholds(thresholds)
    return np.array([threshold_for(tuned, c) for c in range(num_classes)], np.float64)


__all__ = ["DEFAULT_THRESHOLD", "BeamBox", "beam_boxes", "class_scores", "class_thresholds",
           "heat_boxes", "load_thresholds", "select_classes", "threshold_for"]
