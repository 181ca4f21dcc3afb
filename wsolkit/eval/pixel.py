"""Pixel-level localization metrics: PxAP, pixel IoU, F-measure (ODS / OIS), MAE, mask mIoU.

``PixelMetrics`` accumulates, per image, histograms of the heatmap values over the foreground
and the background pixels (ignore pixels are dropped first); cumulative sums of a histogram
give the TP / FP / FN counts at every threshold at once. Two threshold sets are used:

* **WSOL thresholds** ``t_k = np.arange(0, 1, 1 / num_thresholds)`` (the first
  ``num_thresholds`` values; ``num_thresholds=100`` is wsolevaluation's
  ``cam_curve_interval=0.01``, 1000 its ``0.001``). A pixel is positive at ``t`` when
  ``heatmap >= t`` (float64 comparison). Used by PxAP and the IoU family.
* **F-measure levels**: the map is quantized as ``q = floor(heatmap * (L - 1))`` (``L = 256``
  by default, i.e. ``(heatmap * 255).astype(np.uint8)`` in float64) and a pixel is positive at
  level ``k = 0 .. L-1`` when ``q >= k``, as in pysodmetrics' ``Fmeasure.cal_pr``.

PxAP (Choe et al., CVPR 2020; ``MaskEvaluator`` of clovaai/wsolevaluation) is reproduced
exactly: pooled histograms over the bin edges ``[t_0, ..., t_{T-1}, 1, 2, 3]``, ``tp`` / ``fp``
as reversed cumulative sums (thresholds ``>= 2, >= 1, >= t_{T-1}, ..., >= t_0``),
``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)`` and
``PxAP = 100 * (precision[1:] * np.diff(recall))[(tp + fp)[1:] != 0].sum()``.

The F-measure follows pysodmetrics' ``Fmeasure`` (``fm["curve"]``, ``pr["p"]``, ``pr["r"]``):
per image and level, ``P = TP / (TP + FP)`` (0 when nothing is predicted),
``R = TP / max(|FG|, 1)``, ``F = (1 + b2) P R / (b2 P + R)`` (0 when ``P R = 0``), with
``b2 = 0.3``; the F curve is the **mean over images of the per-image F** (not the F of the mean
precision and recall). ``F_ODS = max`` of that curve (pysodmetrics' "maxFm"); ``F_OIS`` is the
mean over images of each image's best F. Unlike pysodmetrics, maps are not min-max
re-normalized and masks are not thresholded at 128: give [0, 1] maps and bool masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wsolkit.checks import check_heatmap, to_numpy
from wsolkit.errors import InputError

__all__ = ["BoxMaskIoU", "PixelMetrics", "wsol_thresholds"]


def wsol_thresholds(num_thresholds: int) -> np.ndarray:
    """WSOL score-map thresholds ``np.arange(0, 1, 1 / n)[:n]`` (float64).

    For ``n = 100`` / ``1000`` this equals wsolevaluation's ``np.arange(0, 1, 0.01)`` /
    ``np.arange(0, 1, 0.001)``; the slice drops the value near 1 that ``np.arange`` adds for
    some ``n`` through rounding.

    Args:
        num_thresholds: Number of thresholds ``n >= 1``.

    Returns:
        ``(n,)`` float64 ascending thresholds starting at 0.
    """
    return np.arange(0, 1, 1 / num_thresholds)[:num_thresholds]


def _wsol_bins(values: np.ndarray, edges: np.ndarray, num_thresholds: int) -> np.ndarray:
    """Bin of each [0, 1] value among ``edges = [t_0, ..., t_{n-1}, 1, 2, 3]``.

    Same result as ``np.searchsorted(edges, values, side="right") - 1`` (and as
    ``np.histogram(values, bins=edges)``), in O(1) per value: the thresholds are uniform, so
    ``floor(value * n)`` is off by at most one bin, fixed by comparing with the exact edges.
    """
    bins = (values * num_thresholds).astype(np.intp)
    np.minimum(bins, num_thresholds, out=bins)
    bins -= values < edges[bins]
    bins += values >= edges[bins + 1]
    return bins


def _check_mask(mask: Any, name: str, shape: tuple[int, ...], ref: str) -> np.ndarray:
    """Validate a bool mask of the given shape (``ref`` names the array it must match)."""
    arr = to_numpy(mask, name, array_like=True)
    if arr.dtype != np.bool_:
        raise InputError(
            f"{name} must be a bool (H, W) array; got dtype {arr.dtype} (binarize it first)"
        )
    if arr.shape != shape:
        raise InputError(
            f"{ref} shape {shape} differs from {name} shape {arr.shape}; resize the heatmap "
            f"to the mask size first"
        )
    return arr


def _labels(foreground: np.ndarray, ignore: np.ndarray | None) -> np.ndarray:
    """Per-pixel class: 0 background, 1 foreground, 2 ignored (ignore wins over foreground)."""
    labels = foreground.astype(np.intp)
    if ignore is not None:
        labels[ignore] = 2
    return labels.ravel()


def _safe_div(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """``num / den`` elementwise, with ``empty`` where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, empty), where=den != 0)


class PixelMetrics:
    """Accumulating pixel metrics of [0, 1] heatmaps against foreground masks.

    Call ``update`` once per image, then ``compute``; ``reset`` starts over. Each update costs
    an O(1)-per-pixel binning and one ``bincount`` per threshold set over the pixels (no loop
    over thresholds); the state is a few vectors of length ``num_thresholds`` / ``fmeasure_levels``.

    Metrics returned by ``compute`` (see the module docstring for the exact formulas):

    * ``PxAP`` (%): wsolevaluation's pixel average precision over dataset-pooled counts.
    * ``IoU`` (%): pooled ``TP / (TP + FP + FN)`` at ``best_threshold``, the WSOL threshold
      that maximizes it (the lowest one on ties).
    * ``mIoU`` (%): mean over images of the per-image IoU at ``best_threshold``.
    * ``mIoU_oracle`` (%): mean over images of each image's best IoU over the thresholds.
      A per-image IoU with an empty union (no foreground, nothing predicted) counts as 1.
    * ``F_ODS``, ``F_OIS`` (in [0, 1]): F-measure with ``beta2``, as in pysodmetrics.
    * ``MAE`` (in [0, 1]): mean over images of mean ``|heatmap - foreground|``.

    Args:
        num_thresholds: Number of WSOL thresholds (100 = wsolevaluation's
            ``cam_curve_interval=0.01``; 1000 = ``0.001``).
        fmeasure_levels: Quantization levels of the F-measure family (256 = uint8, matching
            pysodmetrics).
        beta2: The F-measure's ``beta^2`` (0.3, the salient-object-detection convention).

    Example (a map that is 1 exactly on the foreground):

    >>> import numpy as np
    >>> heat = np.zeros((8, 8))
    >>> heat[2:6, 2:6] = 1.0
    >>> metric = PixelMetrics()
    >>> metric.update(heat, heat > 0)
    >>> result = metric.compute()
    >>> result["PxAP"], result["IoU"], result["MAE"], result["counts"]["foreground"]
    (100.0, 100.0, 0.0, 16)
    """

    def __init__(
        self, num_thresholds: int = 100, fmeasure_levels: int = 256, beta2: float = 0.3
    ) -> None:
        if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, int | np.integer):
            raise InputError(f"num_thresholds must be an int >= 1; got {num_thresholds!r}")
        if num_thresholds < 1:
            raise InputError(f"num_thresholds must be an int >= 1; got {num_thresholds!r}")
        if isinstance(fmeasure_levels, bool) or not isinstance(fmeasure_levels, int | np.integer):
            raise InputError(f"fmeasure_levels must be an int >= 2; got {fmeasure_levels!r}")
        if fmeasure_levels < 2:
            raise InputError(f"fmeasure_levels must be an int >= 2; got {fmeasure_levels!r}")
        b2 = float(beta2)
        if not (np.isfinite(b2) and b2 > 0):
            raise InputError(f"beta2 must be a positive number; got {beta2!r}")
        self.num_thresholds = int(num_thresholds)
        self.fmeasure_levels = int(fmeasure_levels)
        self.beta2 = b2
        self.thresholds = wsol_thresholds(self.num_thresholds)
        # wsolevaluation's bin edges: [t_0, ..., t_{T-1}, 1, 2, 3] -> T + 2 bins.
        self._edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated image."""
        nbins = self.num_thresholds + 2
        self._count = 0
        self._fg_hist = np.zeros(nbins, dtype=np.int64)  # pooled, wsolevaluation layout
        self._bg_hist = np.zeros(nbins, dtype=np.int64)
        self._ignored = 0
        self._iou_sum = np.zeros(self.num_thresholds, dtype=np.float64)
        self._iou_best_sum = 0.0
        levels = self.fmeasure_levels
        self._prec_sum = np.zeros(levels, dtype=np.float64)
        self._rec_sum = np.zeros(levels, dtype=np.float64)
        self._f_sum = np.zeros(levels, dtype=np.float64)
        self._f_best_sum = 0.0
        self._mae_sum = 0.0

    def update(self, heatmap: Any, foreground: Any, ignore: Any | None = None) -> None:
        """Add one image.

        Args:
            heatmap: ``(H, W)`` float map in [0, 1] (numpy or torch), already at the mask's
                size.
            foreground: ``(H, W)`` bool foreground mask.
            ignore: Optional ``(H, W)`` bool mask of pixels left out of every metric (also
                when they are foreground). To reproduce wsolevaluation, pass
                ``ignore_box & ~foreground``.

        Raises:
            InputError: A shape, dtype or value is invalid, the shapes differ, or every pixel
                is ignored.
        """
        cam = check_heatmap(heatmap, array_like=True)
        fg = _check_mask(foreground, "foreground", cam.shape, "heatmap")
        ign = None if ignore is None else _check_mask(ignore, "ignore", cam.shape, "heatmap")
        labels = _labels(fg, ign)
        values = cam.ravel()
        if ign is not None:
            keep = labels != 2
            if not keep.any():
                raise InputError("every pixel is marked in ignore; nothing left to evaluate")
            values, labels = values[keep], labels[keep]
            self._ignored += int(cam.size - values.size)
        num_pos = int(np.count_nonzero(labels))

        # WSOL thresholds: bin k holds edges[k] <= value < edges[k + 1] (np.histogram's rule).
        nbins = self.num_thresholds + 2
        bins = _wsol_bins(values, self._edges, self.num_thresholds)
        hist = np.bincount(bins + nbins * labels, minlength=2 * nbins)
        bg_hist, fg_hist = hist[:nbins], hist[nbins:]
        self._fg_hist += fg_hist
        self._bg_hist += bg_hist
        tp = np.cumsum(fg_hist[::-1])[::-1][: self.num_thresholds]  # at >= t_k
        fp = np.cumsum(bg_hist[::-1])[::-1][: self.num_thresholds]
        iou = _safe_div(tp, fp + num_pos, empty=1.0)  # tp + fp + fn = fp + |FG|
        self._iou_sum += iou
        self._iou_best_sum += float(iou.max())

        # F-measure levels (pysodmetrics: (pred * 255).astype(uint8), positive when >= k).
        levels = self.fmeasure_levels
        quant = (values * (levels - 1)).astype(np.intp)
        fhist = np.bincount(quant + levels * labels, minlength=2 * levels)
        tp_f = np.cumsum(fhist[levels:][::-1])[::-1]
        pred_pos = tp_f + np.cumsum(fhist[:levels][::-1])[::-1]
        precision = _safe_div(tp_f, pred_pos, empty=0.0)
        recall = tp_f / max(num_pos, 1)
        num = (1 + self.beta2) * precision * recall
        fmeasure = _safe_div(num, np.where(num == 0, 1.0, self.beta2 * precision + recall), 0.0)
        self._prec_sum += precision
        self._rec_sum += recall
        self._f_sum += fmeasure
        self._f_best_sum += float(fmeasure.max())

        self._mae_sum += float(np.mean(np.abs(values - labels)))
        self._count += 1

    def compute(self) -> dict[str, Any]:
        """Summarize the accumulated images.

        Returns:
            ``PxAP``, ``IoU``, ``mIoU``, ``mIoU_oracle`` (%); ``F_ODS``, ``F_OIS``, ``MAE``
            (in [0, 1]); ``best_threshold`` (WSOL threshold of ``IoU`` / ``mIoU``);
            ``F_threshold`` (``k / (L - 1)`` of the ``F_ODS`` level);
            ``counts``: ``images``, ``foreground``, ``background``, ``ignored`` pixels and the
            pooled ``tp``, ``fp``, ``fn`` at ``best_threshold``;
            ``curves``: lists in ascending threshold order, ``thresholds``, pooled
            ``precision`` (1.0 where nothing is predicted), ``recall``, ``iou`` (%) and
            ``miou`` (%) at the WSOL thresholds, and ``f_thresholds`` (``k / (L - 1)``),
            ``f_precision``, ``f_recall``, ``f_measure`` (means over images) at the F levels.
            (pysodmetrics lists its curves from level 255 down to 0.)

        Raises:
            InputError: No image was added, or no image has a foreground pixel.
        """
        if self._count == 0:
            raise InputError("PixelMetrics.compute: no images were added with update()")
        num_fg = int(self._fg_hist.sum())
        if num_fg == 0:
            raise InputError(
                "PixelMetrics.compute: no foreground pixel in any image (PxAP is undefined)"
            )
        n = float(self._count)

        # PxAP exactly as wsolevaluation's MaskEvaluator.compute.
        tp = self._fg_hist[::-1].cumsum().astype(np.float64)  # >= 2, >= 1, >= t_{T-1}, ...
        fn = num_fg - tp
        fp = self._bg_hist[::-1].cumsum().astype(np.float64)
        non_zero_indices = (tp + fp) != 0
        precision = _safe_div(tp, tp + fp, empty=np.nan)
        recall = tp / (tp + fn)
        pxap = float((precision[1:] * np.diff(recall))[non_zero_indices[1:]].sum()) * 100

        # Ascending WSOL thresholds t_0 .. t_{T-1}.
        size = self.num_thresholds
        tp_t, fp_t = tp[::-1][:size], fp[::-1][:size]
        fn_t = num_fg - tp_t
        iou_curve = _safe_div(tp_t, tp_t + fp_t + fn_t, empty=1.0)
        best = int(np.argmax(iou_curve))
        miou_curve = self._iou_sum / n
        prec_curve = _safe_div(tp_t, tp_t + fp_t, empty=1.0)

        f_curve = self._f_sum / n
        f_best = int(np.argmax(f_curve))
        levels = self.fmeasure_levels
        return {
            "PxAP": pxap,
            "IoU": float(iou_curve[best]) * 100,
            "mIoU": float(miou_curve[best]) * 100,
            "mIoU_oracle": self._iou_best_sum / n * 100,
            "F_ODS": float(f_curve[f_best]),
            "F_OIS": self._f_best_sum / n,
            "MAE": self._mae_sum / n,
            "best_threshold": float(self.thresholds[best]),
            "F_threshold": f_best / (levels - 1),
            "counts": {
                "images": self._count,
                "foreground": num_fg,
                "background": int(self._bg_hist.sum()),
                "ignored": self._ignored,
                "tp": int(tp_t[best]),
                "fp": int(fp_t[best]),
                "fn": int(fn_t[best]),
            },
            "curves": {
                "thresholds": self.thresholds.tolist(),
                "precision": prec_curve.tolist(),
                "recall": (tp_t / num_fg).tolist(),
                "iou": (iou_curve * 100).tolist(),
                "miou": (miou_curve * 100).tolist(),
                "f_thresholds": (np.arange(levels) / (levels - 1)).tolist(),
                "f_precision": (self._prec_sum / n).tolist(),
                "f_recall": (self._rec_sum / n).tolist(),
                "f_measure": f_curve.tolist(),
            },
        }


class BoxMaskIoU:
    """Accumulating mean IoU of predicted bool masks against GT masks (e.g. box-to-mask).

    Per image, ``IoU = |pred & gt| / |pred | gt|`` over the pixels not in ``ignore``; an empty
    union (both masks empty) counts as IoU 1. ``compute`` gives the mean over images in %.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every accumulated image."""
        self._count = 0
        self._iou_sum = 0.0

    def update(self, pred: Any, gt: Any, ignore: Any | None = None) -> None:
        """Add one image.

        Args:
            pred: ``(H, W)`` bool predicted mask.
            gt: ``(H, W)`` bool GT mask, same shape.
            ignore: Optional ``(H, W)`` bool mask of pixels left out.

        Raises:
            InputError: A mask is not bool or the shapes differ.
        """
        p = to_numpy(pred, "pred", array_like=True)
        if p.dtype != np.bool_ or p.ndim != 2:
            raise InputError(
                f"pred must be a bool (H, W) array; got dtype {p.dtype}, shape {p.shape}"
            )
        g = _check_mask(gt, "gt", p.shape, "pred")
        inter = p & g
        union = p | g
        if ignore is not None:
            keep = ~_check_mask(ignore, "ignore", p.shape, "pred")
            inter &= keep
            union &= keep
        n_union = int(np.count_nonzero(union))
        self._iou_sum += 1.0 if n_union == 0 else np.count_nonzero(inter) / n_union
        self._count += 1

    def compute(self) -> dict[str, Any]:
        """Return ``{"mIoU": mean IoU in %, "count": number of images}``.

        Raises:
            InputError: No image was added.
        """
        if self._count == 0:
            raise InputError("BoxMaskIoU.compute: no images were added with update()")
        return {"mIoU": self._iou_sum / self._count * 100, "count": self._count}
