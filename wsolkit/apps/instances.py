"""Box-to-mask instance segmentation (MASON 3.2): a heatmap of each box seeds GrabCut in it.

For every box of an image:

1. the box, grown by ``context`` on each side and clipped to the image, is cropped;
2. the heatmap of the crop (objectness by default; all crops of an image in one batch) is
   resized to the crop, which is shrunk so that its longer side is at most ``max_side``;
3. inside the box grown by ``margin`` the heatmap is stratified into GrabCut's labels
   (:func:`~wsolkit.refine.grabcut.stratify` with ``region``); the rest of the crop is sure
   background, so the context only teaches GrabCut the colours of the background;
4. GrabCut runs on the crop; the mask is resized back and pasted into the image.

Overlapping instances: the smaller mask is on top (it keeps the shared pixels).

:func:`instances_from_json` reads boxes from COCO JSON (a dataset file with ``annotations``, or
detector results: a list of ``{"image_id", "category_id", "bbox", "score"}``) and writes a new
COCO JSON whose entries carry RLE masks (``pycocotools.mask.encode``), atomically. Crowd
annotations are not segmented (they are copied unchanged into a dataset output, left out of a
results output) and are counted; boxes that are degenerate, non-finite or outside their image
are reported and handled the same way. Input files are never modified.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsolkit.apps.segment import grow_mask, save_mask_map, shrink, stratify_options
from wsolkit.data.atomic import write_json_atomic
from wsolkit.data.coco_json import (
    bbox_edges,
    box_entries,
    check_entry,
    encode_rle,
    entry_name,
    image_files,
    read_json,
)
from wsolkit.data.images import IMAGE_EXTENSIONS, load_image
from wsolkit.errors import ImageError, InputError
from wsolkit.maps.crops import crop_heatmaps
from wsolkit.models.classifier import Classifier
from wsolkit.refine.boxes import box_rect, box_window, expand_box
from wsolkit.refine.grabcut import box_prior, grabcut
from wsolkit.refine.resize import resize_map
from wsolkit.refine.stratify import FGD, PR_FGD, RULES, stratify


@dataclass
class InstanceSettings:
    """How each box becomes a mask.

    Defaults chosen by measurement on coco-mval and davis (box-to-mask) together
    (docs/segmentation.md, ``benchmarks/segmentation_eval.py boxes --grid``).

    Attributes:
        method: registered heatmap method.
        layer: layer to hook (None: the method's default).
        target: class explained by class-specific methods.
        context: growth of the box for the crop (background for GrabCut), fraction of its size.
        margin: growth of the box for the region GrabCut may label foreground.
        prior_sigma: the seed map is the heatmap times a Gaussian centred on the region
            (:func:`~wsolkit.refine.grabcut.box_prior`: 1/e half-width ``prior_sigma`` x its
            size, i.e. std ``prior_sigma / sqrt(2)`` x its size); None: the heatmap alone.
        heat_power: exponent of the heatmap in that product (0: the prior alone).
        rule, fg, split, bg: stratification of the seed map inside the region.
        iterations: GrabCut iterations.
        max_side: the crop is shrunk to this longer side for GrabCut (None: full size).
        overlap: ``"smaller_on_top"`` (paper) or ``"none"`` (masks may overlap).
        options: extra heatmap-method options.
    """

    method: str = "objectness"
    layer: str | None = None
    target: str | int = "top1"
    context: float = 0.25
    margin: float = 0.02
    prior_sigma: float | None = 0.4
    heat_power: float = 0.5
    rule: str = "quantile"
    fg: float | None | str = 0.9
    split: float | None | str = 0.2
    bg: float | None | str = None
    iterations: int = 5
    max_side: int | None = 224
    overlap: str = "smaller_on_top"
    options: dict = field(default_factory=dict)

    def check(self) -> None:
        """Raise :class:`InputError` for values that cannot work."""
        if self.rule not in RULES:
            raise InputError(f"rule={self.rule!r}: use one of {', '.join(RULES)}")
        for name in ("context", "margin"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"{name}={value!r}: must be a number >= 0")
        if self.prior_sigma is not None and not (
            isinstance(self.prior_sigma, (int, float)) and self.prior_sigma > 0
        ):
            raise InputError(f"prior_sigma={self.prior_sigma!r}: must be a number > 0")
        if not (isinstance(self.heat_power, (int, float)) and 0 <= self.heat_power < math.inf):
            raise InputError(f"heat_power={self.heat_power!r}: must be a number >= 0")
        if self.context < self.margin:
            raise InputError(f"context={self.context} must be >= margin={self.margin}")
        if self.max_side is not None and self.max_side < 8:
            raise InputError(f"max_side={self.max_side}: must be at least 8 (or None)")
        if self.iterations < 1:
            raise InputError(f"iterations={self.iterations}: must be at least 1")
        if self.overlap not in ("smaller_on_top", "none"):
            raise InputError(f"overlap={self.overlap!r}: use smaller_on_top or none")


def box_problem(box: Sequence[float], shape: tuple[int, int]) -> str | None:
    """Why a box cannot be segmented (non-finite, empty, outside the image), or None."""
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.size != 4 or not np.isfinite(values).all():
        return "box is not four finite numbers"
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        return "box has zero or negative size"
    left, top, right, bottom = box_rect(values, shape)
    if right <= left or bottom <= top:
        return "box lies outside the image"
    return None


class CropHeatmaps:
    """Heatmaps of image crops with a registered method (one batched forward per call)."""

    def __init__(self, classifier: Classifier, settings: InstanceSettings) -> None:
        from wsolkit.maps import make_method

        self.classifier = classifier
        self.target = settings.target
        self.method = make_method(
            settings.method, classifier, layer=settings.layer, **settings.options
        )

    def __call__(self, crops: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(h, w) float32 maps in [0, 1] at the model's input size, one per RGB crop."""
        return crop_heatmaps(self.method, self.classifier, crops, target=self.target,
                             resize=False)


def box_seeds(
    crop_heatmap: np.ndarray,
    shape: tuple[int, int],
    region_box: np.ndarray,
    settings: InstanceSettings,
) -> np.ndarray:
    """GrabCut labels of a crop: the seed map stratified inside ``region_box``, BGD outside.

    The seed map is ``box_prior(region_box, prior_sigma) * heatmap ** heat_power`` (the heatmap
    alone when ``prior_sigma`` is None; a constant heatmap counts as all ones).

    Args:
        crop_heatmap: (h, w) [0, 1] heatmap of the crop (any size; resized to ``shape``).
        shape: (H, W) of the crop at the GrabCut working size.
        region_box: ``x0, y0, x1, y1`` of the region in the crop's working coordinates.
        settings: stratification rule and parameters.
    """
    heat = resize_map(np.asarray(crop_heatmap, np.float32), shape)
    if settings.prior_sigma is not None:
        if float(heat.max()) <= float(heat.min()):
            heat = np.ones(shape, np.float32)
        seed = box_prior(shape, region_box, settings.prior_sigma) * heat ** settings.heat_power
        heat = (seed / max(float(seed.max()), 1e-12)).astype(np.float32)
    x0, y0, x1, y1 = box_rect(region_box, shape)
    region = np.zeros(shape, bool)
    region[y0:y1, x0:x1] = True
    return stratify(heat, settings.rule, region=region, **stratify_options(settings))


def instance_masks(
    image: np.ndarray,
    boxes: np.ndarray,
    heatmaps: Callable[[Sequence[np.ndarray]], list[np.ndarray]],
    settings: InstanceSettings,
) -> tuple[np.ndarray, list[str | None]]:
    """One mask per box of an image (before overlap resolution).

    Args:
        image: (H, W, 3) uint8 RGB image (not modified).
        boxes: (K, 4) ``x0, y0, x1, y1`` boxes in pixel edges.
        heatmaps: maps a list of RGB crops to their [0, 1] heatmaps (e.g.
            :class:`CropHeatmaps`).
        settings: see :class:`InstanceSettings`.

    Returns:
        ``(masks, problems)``: (K, H, W) bool masks (all False for a box that cannot be
        segmented) and, per box, None or why it was skipped. A valid box whose GrabCut result
        is empty gets its stratified foreground seeds instead, or its region if it has none.
    """
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    masks = np.zeros((len(boxes), height, width), bool)
    problems = [box_problem(box, (height, width)) for box in boxes]
    jobs = []
    for k, box in enumerate(boxes):
        if problems[k] is not None:
            continue
        jobs.append((k, box_window(box, settings.context, (height, width))))
    crops = [image[y0:y1, x0:x1] for _, (x0, y0, x1, y1) in jobs]
    maps = heatmaps(crops)
    for (k, (x0, y0, x1, y1)), crop, heat in zip(jobs, crops, maps, strict=True):
        work = shrink(crop, settings.max_side)
        scale = np.array([work.shape[1] / crop.shape[1], work.shape[0] / crop.shape[0]] * 2)
        region = (expand_box(boxes[k], settings.margin) - [x0, y0, x0, y0]) * scale
        labels = box_seeds(heat, work.shape[:2], region, settings)
        mask = grabcut(work, labels, settings.iterations)
        if not mask.any():
            mask = (labels == FGD) | (labels == PR_FGD)
        if not mask.any():
            rx0, ry0, rx1, ry1 = box_rect(region, work.shape[:2])
            mask[ry0:ry1, rx0:rx1] = True
        masks[k, y0:y1, x0:x1] = grow_mask(mask, crop.shape[:2])
    return masks, problems


def resolve_overlaps(masks: np.ndarray) -> np.ndarray:
    """Make masks disjoint with the smaller mask on top (it keeps the shared pixels).

    Ties in area keep the earlier mask on top. Returns new (K, H, W) bool masks.
    """
    masks = np.asarray(masks, dtype=bool)
    out = np.zeros_like(masks)
    taken = np.zeros(masks.shape[1:], bool)
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    for k in np.argsort(areas, kind="stable"):
        out[k] = masks[k] & ~taken
        taken |= masks[k]
    return out


@dataclass
class InstancesReport:
    """What :func:`instances_from_json` did.

    Attributes:
        segmented: number of boxes given a mask.
        crowd: number of crowd annotations skipped.
        skipped: ``(entry, reason)`` of boxes not segmented for another reason.
        failures: ``(image, message)`` of images that could not be read.
        images: number of images processed.
    """

    segmented: int = 0
    crowd: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    images: int = 0


def _images_of_folder(folder: Path) -> dict[Any, tuple[Path, tuple]]:
    """Image id -> file for a folder: by file name, by stem, and by integer stem."""
    table: dict[Any, tuple[Path, tuple]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        entry = (path, (None, None))
        table.setdefault(path.name, entry)
        table.setdefault(path.stem, entry)
        if path.stem.isdigit():
            table.setdefault(int(path.stem), entry)
    return table


def _image_table(images: Path, boxes_data: Any, boxes_path: Path) -> dict[Any, tuple[Path, tuple]]:
    if images.is_dir():
        if isinstance(boxes_data, dict) and isinstance(boxes_data.get("images"), list):
            return image_files(boxes_data, boxes_path, images)
        return _images_of_folder(images)
    if images.suffix.lower() != ".json" or not images.is_file():
        raise InputError(f"{images}: not an image folder or a COCO JSON file")
    from wsolkit.data.coco import CocoDataset

    dataset = CocoDataset(images, include_empty=True)  # validates; resolves the image folder
    return image_files(read_json(images, "COCO annotation file"), images, dataset.image_dir)


def instances_from_json(
    classifier: Classifier,
    images: Path,
    boxes_json: Path | None,
    out_json: Path,
    settings: InstanceSettings,
    progress: Callable[[int], None] | None = None,
    heatmaps: Callable[[Sequence[np.ndarray]], list[np.ndarray]] | None = None,
    maps_dir: Path | None = None,
) -> InstancesReport:
    """Masks for the boxes of a COCO JSON file, written as a new COCO JSON with RLE masks.

    Args:
        classifier: the model.
        images: a folder of images, or a COCO annotation file (its ``images`` give the files).
        boxes_json: COCO detections (results list) or annotation file; None: the annotations
            of ``images`` (a COCO file) are the boxes.
        out_json: output file (must not be one of the inputs).
        settings: see :class:`InstanceSettings`.
        progress: called with 1 after each image.
        heatmaps: crop-heatmap function (default :class:`CropHeatmaps` of ``settings``).
        maps_dir: if given, the union of each image's masks is also saved there as
            ``<file stem>.npy`` (:func:`~wsolkit.apps.segment.save_mask_map`), the layout
            ``wsolkit evaluate DATASET --maps`` scores. On a mask folder with one instance per
            image (coco-mval) its mIoU is the box-to-mask IoU on the protocol's 224x224 grid.

    Returns:
        An :class:`InstancesReport`.

    Raises:
        InputError: unreadable or malformed JSON, unknown image id, output equal to an input.
    """
    settings.check()
    inputs = [p for p in (images, boxes_json) if p is not None]
    if any(os.path.realpath(out_json) == os.path.realpath(p) for p in inputs):
        raise InputError(f"out={out_json}: would overwrite an input file")
    if boxes_json is None:
        if images.is_dir():
            raise InputError(f"{images}: a folder of images needs boxes=FILE")
        boxes_path = images
    else:
        boxes_path = boxes_json
    boxes_data = read_json(boxes_path, "boxes file")
    entries = box_entries(boxes_data, boxes_path)
    table = _image_table(images, boxes_data, boxes_path)
    output = copy.deepcopy(boxes_data)
    out_entries = box_entries(output, boxes_path)
    results_format = isinstance(boxes_data, list)

    report = InstancesReport()
    if maps_dir is not None:
        maps_dir.mkdir(parents=True, exist_ok=True)
    by_image: dict[Any, list[int]] = {}
    keep = [True] * len(entries)
    for index, entry in enumerate(entries):
        check_entry(entry, index, table, boxes_path)
        name = entry_name(entry, index)
        if entry.get("iscrowd"):
            report.crowd += 1
            keep[index] = not results_format
            continue
        bbox = entry.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox
        ):
            report.skipped.append((name, "'bbox' must be [x, y, width, height]"))
            keep[index] = not results_format
            continue
        by_image.setdefault(entry["image_id"], []).append(index)

    if heatmaps is None:
        heatmaps = CropHeatmaps(classifier, settings)
    for image_id, indices in by_image.items():
        path, (width, height) = table[image_id]
        try:
            pixels = np.asarray(load_image(path))
        except ImageError as error:
            report.failures.append((str(path), str(error)))
            for index in indices:
                keep[index] = not results_format
            continue
        if width is not None and (pixels.shape[1], pixels.shape[0]) != (width, height):
            report.failures.append((str(path), f"{path}: image is {pixels.shape[1]}x"
                                    f"{pixels.shape[0]} but the JSON says {width}x{height}"))
            for index in indices:
                keep[index] = not results_format
            continue
        boxes = np.array([bbox_edges(entries[i]["bbox"]) for i in indices], np.float64)
        masks, problems = instance_masks(pixels, boxes, heatmaps, settings)
        if settings.overlap == "smaller_on_top":
            valid = [k for k, problem in enumerate(problems) if problem is None]
            masks[valid] = resolve_overlaps(masks[valid])
        for k, index in enumerate(indices):
            if problems[k] is not None:
                report.skipped.append((entry_name(entries[index], index), problems[k]))
                keep[index] = not results_format
                continue
            out_entries[index]["segmentation"] = encode_rle(masks[k])
            out_entries[index]["area"] = int(masks[k].sum())
            report.segmented += 1
        if maps_dir is not None:
            save_mask_map(maps_dir, path.stem, masks.any(axis=0))
        report.images += 1
        if progress is not None:
            progress(1)

    if results_format:
        output = [entry for entry, kept in zip(out_entries, keep, strict=True) if kept]
    if not out_json.parent.exists():
        out_json.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_json, output)
    return report


def check_inputs(images: Path, boxes_json: Path | None, out_json: Path) -> int:
    """Check the inputs of :func:`instances_from_json` before any work; count their images.

    Raises the same one-line :class:`InputError` as :func:`instances_from_json` for a missing
    or malformed boxes file, a folder of images without ``--boxes`` and an output that would
    overwrite an input, so that a command can fail before it loads a model.

    Returns:
        The number of distinct images that non-crowd boxes refer to (for a progress bar).
    """
    inputs = [p for p in (images, boxes_json) if p is not None]
    if any(os.path.realpath(out_json) == os.path.realpath(p) for p in inputs):
        raise InputError(f"out={out_json}: would overwrite an input file")
    if boxes_json is None and images.is_dir():
        raise InputError(f"{images}: a folder of images needs boxes=FILE")
    path = boxes_json or images
    data = read_json(path, "boxes file")
    entries = box_entries(data, path)
    table = _image_table(images, data, path)
    ids = set()
    for index, entry in enumerate(entries):
        check_entry(entry, index, table, path)
        if not entry.get("iscrowd"):
            ids.add(entry["image_id"])
    return len(ids)
