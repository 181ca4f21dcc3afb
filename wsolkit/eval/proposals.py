"""Object-proposal recall: the fraction of ground-truth boxes covered by the top-N proposals.

A GT box counts as recalled at IoU ``t`` with ``N`` proposals when one of the image's first
``N`` proposals (in ranked order) has IoU ``>= t`` with it (Hosang et al., "What makes for
effective detection proposals?", TPAMI 2016). Recall is pooled over the dataset: recalled GT
boxes / all non-ignored GT boxes. Images with fewer than ``N`` proposals use all they have.
IoU is :func:`wsolkit.eval.detection.box_iou` (pixel edges, no ``+ 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from wsolkit.errors import InputError
from wsolkit.eval.detection import box_iou, check_boxes

__all__ = ["DEFAULT_COUNTS", "DEFAULT_IOUS", "ProposalRecall"]

DEFAULT_IOUS = (0.5, 0.7, 0.9)
"""IoU thresholds reported by default."""

DEFAULT_COUNTS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
"""Numbers of proposals reported by default (log-spaced, 1..1000)."""


class ProposalRecall:
    """Accumulating recall of ranked proposals at several IoU thresholds and proposal counts.

    Args:
        ious: IoU thresholds in ``(0, 1]``.
        counts: Positive, increasing numbers of proposals.

    Example:
        >>> metric = ProposalRecall()
        >>> metric.update(proposals, gt_boxes)   # once per image, proposals best first
        >>> metric.compute()["recall"]["0.5"]    # recall at IoU 0.5 for each count
    """

    def __init__(
        self, ious: Sequence[float] = DEFAULT_IOUS, counts: Sequence[int] = DEFAULT_COUNTS
    ) -> None:
        ious = [float(v) for v in ious]
        counts = [int(v) for v in counts]
        if not ious or any(not 0.0 < v <= 1.0 for v in ious):
            raise InputError(f"ious must be non-empty values in (0, 1], got {ious}")
        increasing = all(b > a for a, b in zip(counts, counts[1:], strict=False))
        if not counts or counts[0] < 1 or not increasing:
            raise InputError(f"counts must be positive and increasing, got {counts}")
        self.ious = np.asarray(ious, np.float64)
        self.counts = np.asarray(counts, np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._hits = np.zeros((len(self.ious), len(self.counts)), np.int64)
        self._gt = 0
        self._images = 0
        self._proposals = 0

    def update(self, proposals: Any, gt_boxes: Any, ignore: Any = None) -> np.ndarray:
        """Add one image.

        Args:
            proposals: ``(P, 4)`` ``x0, y0, x1, y1`` boxes, best first (``P`` may be 0).
            gt_boxes: ``(G, 4)`` ground-truth boxes (``G`` may be 0).
            ignore: Optional ``(G,)`` bool, GT boxes to leave out (e.g. COCO crowd).

        Returns:
            ``(G_kept,)`` best IoU of each kept GT box over all proposals (for diagnostics).

        Raises:
            InputError: Malformed boxes or ``ignore`` of the wrong length.
        """
        props = check_boxes(proposals, "proposals")
        gt = check_boxes(gt_boxes, "gt_boxes")
        if ignore is not None:
            flags = np.asarray(ignore, bool).reshape(-1)
            if flags.shape[0] != gt.shape[0]:
                raise InputError(
                    f"ignore must have {gt.shape[0]} entries (one per GT box), got "
                    f"{flags.shape[0]}"
                )
            gt = gt[~flags]
        self._images += 1
        self._proposals += props.shape[0]
        self._gt += gt.shape[0]
        if not gt.shape[0]:
            return np.zeros(0)
        if not props.shape[0]:
            return np.zeros(gt.shape[0])
        # best[n, g]: best IoU of GT g among the first n + 1 proposals.
        best = np.maximum.accumulate(box_iou(props, gt), axis=0)
        rows = np.minimum(self.counts, props.shape[0]) - 1
        at_count = best[rows]  # (C, G)
        self._hits += (at_count[None, :, :] >= self.ious[:, None, None]).sum(axis=2)
        return best[-1]

    def compute(self) -> dict:
        """Recall per IoU threshold and proposal count.

        Returns:
            ``{"counts": [...], "ious": [...], "recall": {"0.5": [...], ...}, "gt_boxes",
            "images", "mean_proposals"}``; recalls are fractions in [0, 1] (0 without GT).
        """
        denominator = max(self._gt, 1)
        recall = self._hits / denominator
        return {
            "counts": self.counts.tolist(),
            "ious": self.ious.tolist(),
            "recall": {
                f"{iou:g}": row.tolist() for iou, row in zip(self.ious, recall, strict=True)
            },
            "gt_boxes": int(self._gt),
            "images": int(self._images),
            "mean_proposals": self._proposals / max(self._images, 1),
        }
