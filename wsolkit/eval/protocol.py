"""The WSOL protocol: every map is scored on a 224x224 grid (wsolevaluation), by one scorer.

:func:`protocol_map` brings any map to the grid (bicubic resize, min-max normalization);
:class:`ProtocolScorer` feeds each image's grid to every metric that applies to a dataset
(box accuracy and pointing game for boxes, pixel metrics for masks resized to the grid by
nearest neighbour, ignore pixels left out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from wsolkit.data.sample import Sample
from wsolkit.errors import InputError
from wsolkit.eval.box_accuracy import BoxAccuracy, normalize_scoremap
from wsolkit.eval.pixel import PixelMetrics
from wsolkit.eval.pointing import PointingGame
from wsolkit.refine import scale_boxes

if TYPE_CHECKING:
    import torch

    from wsolkit.maps import HeatmapMethod

PROTOCOL_SIZE = 224

__all__ = ["PROTOCOL_SIZE", "ProtocolScorer", "ScoredImage", "protocol_map", "protocol_source"]


def protocol_source(method: HeatmapMethod, raw: torch.Tensor) -> np.ndarray:
    """The map the protocol resizes: the raw layer-resolution map, after the method's ReLU.

    wsolevaluation resizes the layer-resolution map itself to 224x224 with OpenCV's bicubic
    kernel; scoring the method's own (bilinear) upsampled output instead would add a second
    resampling that the protocol does not have.
    """
    source = raw.clamp(min=0) if method.relu else raw
    return source.detach().float().cpu().numpy()


def protocol_map(heatmap: np.ndarray) -> np.ndarray:
    """Resize a map to 224x224 (bicubic) and min-max normalize it (constant -> zeros)."""
    resized = cv2.resize(heatmap.astype(np.float64), (PROTOCOL_SIZE, PROTOCOL_SIZE),
                         interpolation=cv2.INTER_CUBIC)
    return normalize_scoremap(resized).astype(np.float32)


@dataclass
class ScoredImage:
    """What the report needs of one scored image: its 224x224 map and ground truth."""

    sample: Sample
    heatmap: np.ndarray
    boxes: np.ndarray
    mask: np.ndarray | None
    predicted: int | None = None


class ProtocolScorer:
    """Feeds one image at a time to every metric that applies to the dataset.

    Args:
        boxes: the dataset has boxes (MaxBoxAcc, pointing game).
        masks: the dataset has masks (pixel metrics).
        interval: spacing of the map thresholds (0.01: 100 thresholds).
        classes_known: the images' labels are the model's classes (top-1/top-5 loc).
    """

    def __init__(self, boxes: bool, masks: bool, interval: float, classes_known: bool) -> None:
        self.box_accuracy = BoxAccuracy(cam_curve_interval=interval) if boxes else None
        self.pointing = PointingGame() if boxes else None
        self.pixels = PixelMetrics(num_thresholds=round(1 / interval)) if masks else None
        self.classes_known = classes_known
        self.top5_hits: list[bool] = []
        self.constant_maps = 0

    def add(self, sample: Sample, heatmap: np.ndarray, size: tuple[int, int],
            top5: list[int] | None) -> ScoredImage:
        """Score one image's map (any size; brought to the grid here) of ``size`` (w, h)."""
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
        """Every metric's result, with ``constant_maps`` (maps with nothing above 0)."""
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
