"""Localization metrics (accumulating ``update`` / ``compute`` / ``reset``)."""

from wsolkit.eval.box_accuracy import BoxAccuracy
from wsolkit.eval.classification import multilabel_map
from wsolkit.eval.detection import DetectionAP, average_precision, box_iou
from wsolkit.eval.pixel import BoxMaskIoU, PixelMetrics
from wsolkit.eval.pointing import PointingAP, PointingGame, peak, peaks, point_hits
from wsolkit.eval.proposals import ProposalRecall

__all__ = [
    "BoxAccuracy",
    "BoxMaskIoU",
    "DetectionAP",
    "PixelMetrics",
    "PointingAP",
    "PointingGame",
    "ProposalRecall",
    "average_precision",
    "box_iou",
    "multilabel_map",
    "peak",
    "peaks",
    "point_hits",
]
