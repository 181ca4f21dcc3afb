"""Whole-image foreground segmentation: a heatmap stratified into GrabCut seeds (MASON 3.1).

For each image: heatmap (any registered method, objectness by default) at the model's input
size (or of the image at its own size) -> resized to the GrabCut working size (the image,
shrunk so that its longer side is at most ``max_side``) -> optionally refined by the dense CRF
-> optionally scaled to integer levels -> :func:`~wsolkit.refine.grabcut.stratify` ->
:func:`~wsolkit.refine.grabcut.grabcut` -> mask resized back to the image.
:meth:`SegmentSettings.paper` is the paper's own pipeline (docs/segmentation.md). The job
over many files (rows, shards, process pool) is :func:`wsolkit.apps.segment_core.segment_files`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from wsolkit.data.atomic import write_npy_atomic
from wsolkit.errors import DependencyError, InputError
from wsolkit.refine.grabcut import RULES, grabcut, stratify
from wsolkit.refine.resize import INTERPOLATIONS, resize_map


@dataclass
class SegmentSettings:
    """How heatmaps become foreground masks.

    Defaults chosen by measurement on ``shared/data/davis`` (``benchmarks/segmentation_eval.py``,
    docs/segmentation.md).

    Attributes:
        method: registered heatmap method.
        layer: layer to hook (None: the method's default).
        target: class explained by class-specific methods (``top1`` or an index).
        rule: stratification rule (``paper``, ``quantile``, ``otsu``).
        fg, split, bg: rule parameters (``"default"``: the rule's defaults; None: none).
        border: sure-background frame along the image edges (fraction of the shorter side).
        crf: refine the heatmap with the dense CRF before stratifying (needs pydensecrf2).
        iterations: GrabCut iterations (with ``converge``: the most run).
        max_side: GrabCut runs on the image shrunk to this longer side (None: full size).
        batch_size: images per forward pass (``network_size="full"``: one image a pass).
        options: extra heatmap-method options.
        network_size: ``"model"``: the image is resized to the model's input size for the
            heatmap; ``"full"``: it goes through the network at its own size.
        upsample: ``"bilinear"`` or ``"bicubic"`` resizing of the layer's map to the network
            input and of the heatmap to the working size.
        levels: the [0, 1] heatmap is scaled to the integers ``0..levels`` (rounded) before
            stratifying (the paper: 255); None: left as it is.
        mean: ``rule="paper"``: its mean over ``"all"`` pixels (the paper's text) or the
            ``"nonzero"`` ones.
        converge: iterate GrabCut until its labels stop changing (``iterations`` a cap).
    """

    method: str = "objectness"
    layer: str | None = None
    target: str | int = "top1"
    rule: str = "quantile"
    fg: float | None | str = 0.99
    split: float | None | str = 0.85
    bg: float | None | str = 0.7
    border: float = 0.03
    crf: bool = True
    iterations: int = 5
    max_side: int | None = 256
    batch_size: int = 16
    options: dict = field(default_factory=dict)
    network_size: Literal["model", "full"] = "model"
    upsample: str = "bilinear"
    levels: int | None = None
    mean: str = "all"
    converge: bool = False

    @classmethod
    def paper(cls, **changes: Any) -> SegmentSettings:
        """MASON's own pipeline (section 3 and 3.1), with ``changes`` applied.

        The image at its own size through the network; objectness (the layer: the model's
        objectness layer, conv5_3 on a VGG-16); bicubic upsampling to the image size; min-max
        scaling to 0..255 (integers: our reading of "scaled between 0 and 255"); the paper's
        rule (``> mean`` sure foreground, ``(0, mean]`` probable foreground, ``0`` probable
        background, mean over all pixels); GrabCut on the full-size image, iterated until its
        labels stop changing (at most 20 times: the paper gives no cap); no CRF, no border.
        """
        paper = cls(method="objectness", rule="paper", fg="default", split="default",
                    bg="default", border=0.0, crf=False, iterations=20, max_side=None,
                    batch_size=1, network_size="full", upsample="bicubic", levels=255,
                    mean="all", converge=True)
        return replace(paper, **changes)

    def check(self) -> None:
        """Raise :class:`InputError` for values that cannot work."""
        if self.network_size not in ("model", "full"):
            raise InputError(f"network_size={self.network_size!r}: use 'model' or 'full'")
        if self.upsample not in INTERPOLATIONS:
            raise InputError(f"upsample={self.upsample!r}: use one of {', '.join(INTERPOLATIONS)}")
        if self.levels is not None and (isinstance(self.levels, bool)
                                        or not isinstance(self.levels, int) or self.levels < 1):
            raise InputError(f"levels={self.levels!r}: must be an integer >= 1 (or None)")
        if self.mean not in ("all", "nonzero"):
            raise InputError(f"mean={self.mean!r}: use 'all' or 'nonzero'")
        if self.rule not in RULES:
            raise InputError(f"rule={self.rule!r}: use one of {', '.join(RULES)}")
        if self.max_side is not None and self.max_side < 8:
            raise InputError(f"max_side={self.max_side}: must be at least 8 (or None)")
        if self.batch_size < 1:
            raise InputError(f"batch_size={self.batch_size}: must be at least 1")
        if self.iterations < 1:
            raise InputError(f"iterations={self.iterations}: must be at least 1")


def shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """The image shrunk (area interpolation) so its longer side is at most ``max_side``."""
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def grow_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a bool mask to ``shape`` (bilinear on 0/1, then >= 0.5)."""
    if mask.shape == tuple(shape):
        return mask
    resized = cv2.resize(mask.astype(np.float32), (shape[1], shape[0]),
                         interpolation=cv2.INTER_LINEAR)
    return resized >= 0.5


def save_mask_map(folder: Path, stem: str, mask: np.ndarray) -> None:
    """Write a bool mask as ``<folder>/<stem>.npy`` (float32 0 / 1), atomically.

    The file is a map in the layout ``wsolkit evaluate DATASET --maps FOLDER`` scores
    (``<image_id>.npy``; the image id of a mask folder is the file stem), so saved masks get
    the evaluation's pixel metrics (mIoU, F-measure, MAE) on its 224x224 protocol grid.
    """
    write_npy_atomic(folder / f"{stem}.npy", np.asarray(mask, dtype=np.float32))


def stratify_options(settings: Any) -> dict[str, Any]:
    """The ``fg`` / ``split`` / ``bg`` keyword arguments of :func:`stratify` for a rule."""
    if settings.rule == "paper":
        return {"mean": getattr(settings, "mean", "all")}
    names = ("fg", "split", "bg") if settings.rule == "quantile" else ("fg", "bg")
    return {name: getattr(settings, name) for name in names}


def segment_heatmap(
    image: np.ndarray, heatmap: np.ndarray, settings: SegmentSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground mask of one image from its heatmap (any size; resized here).

    Args:
        image: (H, W, 3) uint8 RGB image (not modified).
        heatmap: (h, w) float map in [0, 1] (not modified).
        settings: stratification, CRF and GrabCut settings.

    Returns:
        ``(mask, labels)``: the (H, W) bool mask and the GrabCut label map at the working
        size.
    """
    work = shrink(image, settings.max_side)
    heat = np.asarray(heatmap, np.float32)
    if heat.shape != work.shape[:2]:
        heat = resize_map(heat, work.shape[:2], settings.upsample)
    if settings.crf:
        from wsolkit.refine.crf import dense_crf

        try:  # pydensecrf refuses read-only buffers (e.g. np.asarray of a PIL image)
            heat = dense_crf(work if work.flags.writeable else work.copy(), heat)
        except DependencyError as error:
            raise DependencyError(f"{error}; or segment without it (crf=False)") from None
    if settings.levels is not None:  # v -> round(levels v): the smallest values become 0
        heat = np.round(heat * settings.levels) / settings.levels
    labels = stratify(heat, settings.rule, border=settings.border, **stratify_options(settings))
    mask = grabcut(work, labels, settings.iterations, converge=settings.converge)
    return grow_mask(mask, image.shape[:2]), labels


def image_heatmaps(method: Any, images: Sequence[Any], settings: SegmentSettings
                   ) -> tuple[list[np.ndarray], str]:
    """Heatmaps of PIL images with a built heatmap method; returns them and the layer.

    ``network_size="model"``: one batch at the model's input size (maps at that size);
    ``"full"``: each image through the network at its own size (maps at the image's size).
    """
    classifier = method.classifier
    if settings.network_size == "model":
        result = method(classifier.preprocess_batch(images), target=settings.target)
        return [row.cpu().numpy() for row in result.maps], result.layer
    maps = []
    for image in images:
        tensor = classifier.preprocess(image, size=(image.height, image.width))[None]
        result = method(tensor.to(classifier.device), target=settings.target)
        maps.append(result.maps[0].cpu().numpy())
    return maps, result.layer


def mask_overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the background darkened and the mask's outline drawn in green."""
    canvas = image.copy()
    canvas[~mask] = (canvas[~mask] * 0.35).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(min(image.shape[:2]) / 200))
    cv2.drawContours(canvas, contours, -1, (0, 255, 0), thickness)
    return canvas
