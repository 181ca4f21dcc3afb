"""Evaluation plots: accuracy curves, heatmap value histograms, worst/best example grids.

matplotlib is imported inside each function (it is only needed for reports).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsolkit.data.atomic import write_bytes_atomic
from wsolkit.errors import DependencyError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise DependencyError("plots need matplotlib: pip install matplotlib") from error
    return plt


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def plot_curves(metrics: dict, path: Path, title: str) -> None:
    """Box accuracy vs. map threshold and/or pixel precision-recall and IoU curves."""
    plt = _pyplot()
    panels = [key for key in ("boxes", "pixels") if key in metrics]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, key in zip(axes[0], panels, strict=True):
        data = metrics[key]
        if key == "boxes":
            thresholds = data["thresholds"]
            axis.plot(thresholds, data["curve_v1"], label="MaxBoxAcc (largest box, IoU 0.5)",
                      linewidth=2)
            for iou, curve in data["curve"].items():
                axis.plot(thresholds, curve, linestyle="--", label=f"V2 all boxes, IoU 0.{iou}")
            axis.set_xlabel("map threshold")
            axis.set_ylabel("box accuracy (%)")
        else:
            curves = data["curves"]
            axis.plot(curves["recall"], curves["precision"], label="pixel precision-recall")
            axis.plot(curves["thresholds"], np.asarray(curves["iou"]) / 100,
                      label="IoU vs threshold")
            axis.set_xlabel("recall / map threshold")
            axis.set_ylabel("precision / IoU")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    _save(figure, path)


def plot_histogram(inside: np.ndarray, outside: np.ndarray, path: Path, title: str) -> None:
    """Histogram of map values inside and outside the ground truth."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4))
    bins = np.linspace(0, 1, 51)
    axis.hist(outside, bins=bins, alpha=0.6, density=True, label="outside ground truth")
    axis.hist(inside, bins=bins, alpha=0.6, density=True, label="inside ground truth")
    axis.set_xlabel("heatmap value")
    axis.set_ylabel("density")
    axis.legend(fontsize=8)
    axis.set_title(title)
    _save(figure, path)


def plot_examples(
    panels: Sequence[tuple[np.ndarray, str]], path: Path, title: str, columns: int = 6
) -> None:
    """A grid of RGB images (already drawn) with captions."""
    plt = _pyplot()
    rows = max(1, -(-len(panels) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows),
                                squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, (image, caption) in zip(axes.ravel(), panels, strict=False):
        axis.imshow(image)
        axis.set_title(caption, fontsize=7)
    figure.suptitle(title)
    _save(figure, path)
