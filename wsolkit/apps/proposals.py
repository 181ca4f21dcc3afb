"""Class-agnostic object proposals from heatmap blobs (MASON, section 4.1).

:func:`propose` computes a heatmap (``objectness`` by default) of several *views* of an image,
thresholds each view's map at several levels, boxes every connected component, maps the boxes
back to image pixels, ranks them and removes near-duplicates with NMS:

1. **Views** (multi-scale): ``full`` is the whole image at the model's input size (224x224 for
   the embedded model), ``full2`` the whole image at twice that size (the network is fully
   convolutional up to its pooling, so the map gets twice the resolution), ``grid`` four
   overlapping crops (each ``GRID_FRACTION`` of the width and height, in the corners) at the
   input size, for small objects.
2. **Thresholds** (multi-threshold): each view's map is min-max normalized to [0, 1]; the
   components of ``map >= t`` for every ``t`` in ``thresholds`` give one box each
   (8-connectivity, :func:`wsolkit.refine.boxes_from_mask`).
3. **Score**: ``mean heat of the component x (box area / image area) ** area_power``.
4. **Multi-scale boxes around each blob**: every blob box is also scaled about its centre by
   ``scales`` and reshaped by ``aspects`` (width x a, height / a); these variants score
   ``variant_weight`` x their blob's score.
5. **NMS** (:func:`wsolkit.refine.nms`) at ``nms_iou`` over the boxes of all views, then the
   ``top_k`` best.

How the defaults were chosen, and their recall against selective search
(``benchmarks/proposals_eval.py``): docs/cleaning_proposals.md.

:func:`selective_search` wraps OpenCV's selective search (fast mode), the baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsolkit.data.sample import Sample
from wsolkit.errors import InputError
from wsolkit.models.classifier import Classifier
from wsolkit.refine.components import _check_mask, _components
from wsolkit.refine.nms import clip_boxes, nms, valid_boxes

__all__ = [
    "VIEWS",
    "HeatView",
    "ProposalReport",
    "ProposalSettings",
    "propose",
    "propose_files",
    "proposals_from_views",
    "selective_search",
    "view_heatmaps",
]

VIEWS = ("full", "full2", "grid")
"""Names accepted in ``ProposalSettings.views``."""

GRID_FRACTION = 0.6
"""Width and height of each ``grid`` crop as a fraction of the image's."""


@dataclass(frozen=True)
class ProposalSettings:
    """How proposals are made (the defaults and their recall: docs/cleaning_proposals.md).

    Attributes:
        method: Registered heatmap method (class-agnostic ``objectness`` by default).
        layer: Layer to hook; None for the method's default.
        views: Which views to compute (see the module doc).
        thresholds: Levels of the [0, 1] map whose components give boxes.
        area_power: Exponent of the area factor of the score.
        nms_iou: IoU above which a lower-ranked box is removed.
        top_k: Number of proposals kept per image.
        min_side: Boxes narrower or lower than this many image pixels are dropped.
    """

    method: str = "objectness"
    layer: str | None = None
    views: tuple[str, ...] = ("full", "full2", "grid")
    thresholds: tuple[float, ...] = tuple(round(float(t), 3) for t in np.linspace(0.05, 0.9, 10))
    area_power: float = 0.5
    scales: tuple[float, ...] = (0.8, 1.0, 1.25, 1.6)
    aspects: tuple[float, ...] = (0.67, 1.0, 1.5)
    variant_weight: float = 0.5
    nms_iou: float = 0.8
    top_k: int = 100
    min_side: float = 2.0

    def check(self) -> None:
        """Raise :class:`InputError` for a setting out of range."""
        unknown = [v for v in self.views if v not in VIEWS]
        if not self.views or unknown:
            raise InputError(f"views must be some of {', '.join(VIEWS)}, got {self.views}")
        if not self.thresholds or any(not 0.0 <= t <= 1.0 for t in self.thresholds):
            raise InputError(f"thresholds must lie in [0, 1], got {self.thresholds}")
        if not 0.0 <= self.nms_iou <= 1.0:
            raise InputError(f"nms_iou must lie in [0, 1], got {self.nms_iou}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise InputError(f"top_k must be a positive integer, got {self.top_k!r}")


@dataclass(frozen=True)
class HeatView:
    """One view's heatmap and where it lies in the image.

    Attributes:
        region: ``x0, y0, x1, y1`` of the view in image pixels.
        heatmap: (h, w) float map in [0, 1] over the region.
    """

    region: tuple[float, float, float, float]
    heatmap: np.ndarray


def _view_regions(width: int, height: int, views: Sequence[str]) -> list[tuple[str, tuple]]:
    regions: list[tuple[str, tuple]] = []
    for view in views:
        if view in ("full", "full2"):
            regions.append((view, (0, 0, width, height)))
        else:
            cw, ch = round(width * GRID_FRACTION), round(height * GRID_FRACTION)
            for x0 in (0, width - cw):
                for y0 in (0, height - ch):
                    regions.append((view, (x0, y0, x0 + cw, y0 + ch)))
    return regions


def view_heatmaps(
    classifier: Classifier, image: Image.Image, settings: ProposalSettings
) -> list[HeatView]:
    """Heatmaps of the views of one RGB image (the expensive part of :func:`propose`)."""
    from wsolkit.maps import get_method

    settings.check()
    runner = get_method(settings.method)(classifier, layer=settings.layer)
    width, height = image.size
    base = tuple(classifier.input_size)
    small: list[tuple[tuple, torch.Tensor]] = []
    out: list[HeatView] = []
    for view, region in _view_regions(width, height, settings.views):
        crop = image if view != "grid" else image.crop(region)
        if view == "full2":
            batch = classifier.preprocess(crop, size=(base[0] * 2, base[1] * 2))[None]
            maps = runner(batch.to(classifier.device)).maps
            out.append(HeatView(region, maps[0].cpu().numpy()))
        else:
            small.append((region, classifier.preprocess(crop, size=base)))
    if small:
        batch = torch.stack([tensor for _, tensor in small]).to(classifier.device)
        maps = runner(batch).maps.cpu().numpy()
        out.extend(HeatView(region, heat) for (region, _), heat in zip(small, maps, strict=True))
    return out


def proposals_from_views(
    views: Sequence[HeatView], size: tuple[int, int], settings: ProposalSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Ranked, de-duplicated boxes of the thresholded components of the views' heatmaps.

    Args:
        views: Heatmaps with their regions (from :func:`view_heatmaps`, or any maps).
        size: ``(H, W)`` of the image.
        settings: Thresholds, score, NMS and ``top_k``.

    Returns:
        ``(boxes, scores)``: ``(K, 4)`` float32 image-pixel boxes, best first, and ``(K,)``
        float32 scores, ``K <= top_k``.
    """
    settings.check()
    image_area = float(size[0]) * float(size[1])
    all_boxes, all_scores = [], []
    for view in views:
        heat = np.asarray(view.heatmap, np.float64)
        grid_h, grid_w = heat.shape
        x0, y0, x1, y1 = (float(v) for v in view.region)
        scale = np.array([(x1 - x0) / grid_w, (y1 - y0) / grid_h] * 2)
        offset = np.array([x0, y0, x0, y0])
        for level in settings.thresholds:
            found = _components(_check_mask(heat >= level), heat, "all")
            if not found.ids.size:
                continue
            boxes = found.boxes.astype(np.float64) * scale + offset
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / image_area
            all_scores.append(found.scores * area ** settings.area_power)
            all_boxes.append(boxes)
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    boxes, scores = _with_variants(np.concatenate(all_boxes), np.concatenate(all_scores),
                                   settings)
    boxes = clip_boxes(boxes, size)
    keep = valid_boxes(boxes, min_size=settings.min_side)
    boxes, scores = boxes[keep], scores[keep]
    order = nms(boxes, scores, settings.nms_iou)[: settings.top_k]
    return boxes[order].astype(np.float32), scores[order].astype(np.float32)


def _with_variants(boxes: np.ndarray, scores: np.ndarray, settings: ProposalSettings
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Add each box scaled by ``settings.scales`` and reshaped by ``settings.aspects``.

    Scaling is about the box's centre; an aspect ``a`` makes it ``a`` times as wide and ``1/a``
    times as high. Variants score ``settings.variant_weight`` times their box.
    """
    out_boxes, out_scores = [boxes], [scores]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2
    for factor in settings.scales:
        for aspect in settings.aspects:
            if factor == 1.0 and aspect == 1.0:
                continue
            stretch = np.array([factor * aspect, factor / aspect])
            out_boxes.append(np.concatenate([centre - half * stretch, centre + half * stretch],
                                            axis=1))
            out_scores.append(scores * settings.variant_weight)
    return np.concatenate(out_boxes), np.concatenate(out_scores)


def propose(
    classifier: Classifier,
    image: Image.Image,
    top_k: int = 100,
    settings: ProposalSettings | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Object proposals of one image from heatmap blobs.

    Args:
        classifier: The model (e.g. :func:`wsolkit.load_model`).
        image: RGB PIL image (see :func:`wsolkit.data.load_image`).
        top_k: Number of proposals to return at most (overrides ``settings.top_k``).
        settings: Views, thresholds, score and NMS; defaults to :class:`ProposalSettings`.

    Returns:
        ``(boxes, scores)``: ``(K, 4)`` float32 ``x0, y0, x1, y1`` image-pixel boxes, best
        first, and ``(K,)`` float32 scores.

    Raises:
        InputError: Not an RGB PIL image, or a setting out of range.
    """
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        raise InputError("propose expects an RGB PIL image (see wsolkit.load_image)")
    settings = settings or ProposalSettings()
    if top_k != settings.top_k:
        settings = replace(settings, top_k=top_k)
    settings.check()
    views = view_heatmaps(classifier, image, settings)
    return proposals_from_views(views, (image.height, image.width), settings)


def selective_search(
    image: Image.Image, top_k: int | None = None, mode: str = "fast"
) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's selective search proposals (``cv2.ximgproc``, opencv-contrib).

    Args:
        image: RGB PIL image.
        top_k: Keep the first ``top_k`` boxes of OpenCV's ranking (None: all).
        mode: ``"fast"`` (``switchToSelectiveSearchFast``) or ``"quality"``.

    Returns:
        ``(boxes, scores)``: ``(K, 4)`` float32 edge boxes in OpenCV's order and ``(K,)``
        float32 scores decreasing with rank (``1 / (1 + rank)``; selective search has none).

    Raises:
        InputError: Unknown mode or opencv-contrib missing.
    """
    import cv2

    if not hasattr(cv2, "ximgproc"):
        raise InputError(
            "selective search needs opencv-contrib: pip install opencv-contrib-python-headless"
        )
    if mode not in ("fast", "quality"):
        raise InputError(f"mode must be 'fast' or 'quality', got {mode!r}")
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]))
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    rects = np.asarray(search.process(), np.float64).reshape(-1, 4)
    if top_k is not None:
        rects = rects[:top_k]
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    scores = 1.0 / (1.0 + np.arange(len(boxes)))
    return boxes.astype(np.float32), scores.astype(np.float32)



@dataclass
class ProposalReport:
    """What :func:`propose_files` produced.

    Attributes:
        records: One dict per image (``image``, ``width``, ``height``, ``boxes``, ``scores``).
        failures: ``"<path>: <reason>"`` per image that could not be read.
        recall: :meth:`ProposalRecall.compute` output when GT samples were given.
        recall_table: The recall as a markdown table, or None.
    """

    records: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    recall: dict | None = None
    recall_table: str | None = None


def recall_table(recall: dict, name: str) -> str:
    """Markdown table: one row per IoU threshold, one column per proposal count."""
    counts = recall["counts"]
    lines = [f"| {name} recall @ IoU | " + " | ".join(str(c) for c in counts) + " |",
             "|---|" + "---:|" * len(counts)]
    for iou, row in recall["recall"].items():
        lines.append(f"| {iou} | " + " | ".join(f"{100 * v:.1f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def propose_files(
    classifier: Classifier | None,
    paths: Sequence[Path],
    out_dir: Path,
    settings: ProposalSettings | None,
    top_k: int = 100,
    samples: Sequence[Sample] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ProposalReport:
    """Proposals for image files, written to ``out_dir/proposals.json`` (atomically).

    Args:
        classifier: The model, or None for :func:`selective_search`.
        paths: Image files.
        out_dir: Output folder (created if missing).
        settings: Proposal settings (ignored for selective search).
        top_k: Proposals kept per image.
        samples: Optional GT samples aligned with ``paths``; then recall at IoU 0.5/0.7/0.9
            vs. the number of proposals is computed (non-ignored boxes) and written to
            ``recall.json`` and ``recall.md``.
        progress: Called with 1 after each image.

    Returns:
        A :class:`ProposalReport`; unreadable images are listed in ``failures``.
    """
    from wsolkit.data.atomic import make_out_dir, write_bytes_atomic, write_json_atomic
    from wsolkit.data.images import load_image
    from wsolkit.errors import ImageError
    from wsolkit.eval.proposals import ProposalRecall

    if settings is not None:
        settings = replace(settings, top_k=top_k)
        settings.check()
    out_dir = Path(out_dir)
    make_out_dir(out_dir)
    report = ProposalReport()
    metric = ProposalRecall() if samples is not None else None
    name = settings.method if classifier is not None and settings is not None \
        else "selective-search"
    for index, path in enumerate(paths):
        try:
            image = load_image(path)
        except ImageError as error:
            report.failures.append(str(error))
            if progress:
                progress(1)
            continue
        if classifier is None:
            boxes, scores = selective_search(image, top_k=top_k)
        else:
            boxes, scores = propose(classifier, image, top_k=top_k, settings=settings)
        report.records.append({
            "image": str(path), "width": image.width, "height": image.height,
            "boxes": [[round(float(v), 2) for v in box] for box in boxes],
            "scores": [round(float(s), 5) for s in scores],
        })
        if metric is not None:
            sample = samples[index]
            metric.update(boxes, sample.boxes, sample.box_ignore)
        if progress:
            progress(1)
    payload = {"method": name, "top_k": top_k, "box_format": "x0, y0, x1, y1 pixel edges",
               "images": report.records, "failures": report.failures}
    if settings is not None and classifier is not None:
        payload["model"] = classifier.name
        payload["settings"] = asdict(settings)
    if metric is not None:
        report.recall = metric.compute()
        report.recall_table = recall_table(report.recall, name)
        payload["recall"] = report.recall
        write_json_atomic(out_dir / "recall.json", report.recall)
        write_bytes_atomic(out_dir / "recall.md", report.recall_table.encode("utf-8"))
    write_json_atomic(out_dir / "proposals.json", payload)
    return report
