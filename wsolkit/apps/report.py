"""Writing an evaluation: metrics.json, a markdown table and plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsolkit.apps.evaluate import Evaluation
from wsolkit.data.atomic import make_out_dir, write_bytes_atomic, write_json_atomic
from wsolkit.data.images import load_image
from wsolkit.eval.detection import box_iou
from wsolkit.eval.protocol import PROTOCOL_SIZE, ScoredImage
from wsolkit.refine import localize
from wsolkit.viz import draw_boxes, overlay_heatmap
from wsolkit.viz.plots import plot_curves, plot_examples, plot_histogram

# (section, key, column title, scale): the numbers of the summary tables.
HEADLINE = (
    ("boxes", "MaxBoxAcc", "MaxBoxAcc", 1),
    ("boxes", "MaxBoxAccV2", "MaxBoxAccV2", 1),
    ("boxes", "top1_loc", "top-1 loc", 1),
    ("boxes", "top5_loc", "top-5 loc", 1),
    ("pointing", "accuracy", "pointing", 1),
    ("pointing_ap", "mAP", "pointing mAP", 1),
    ("detection_ap", "mAP", "detection mAP", 1),
    ("classification_map", "mAP", "classification mAP", 1),
    ("pixels", "PxAP", "PxAP", 1),
    ("pixels", "F_ODS", "F ODS", 1),
    ("pixels", "F_OIS", "F OIS", 1),
    ("pixels", "MAE", "MAE", 1),
    ("pixels", "mIoU", "mIoU", 1),
    ("pixels", "mIoU_oracle", "mIoU oracle", 1),
)
EXAMPLES_PER_ROW = 6


def headline(metrics: dict) -> dict[str, float]:
    """The summary numbers present in ``metrics``, by column title."""
    numbers = {}
    for section, key, title, scale in HEADLINE:
        value = metrics.get(section, {}).get(key)
        if value is not None:
            numbers[title] = float(value) * scale
    return numbers


def markdown_table(rows: Sequence[tuple[str, dict[str, float]]]) -> str:
    """A markdown table with one row per (name, numbers) and the union of the columns."""
    columns = [title for _, _, title, _ in HEADLINE if any(title in n for _, n in rows)]
    lines = ["| method | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, numbers in rows:
        cells = [_format(numbers[c], c) if c in numbers else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format(value: float, column: str) -> str:
    return f"{value:.3f}" if column in ("F ODS", "F OIS", "MAE") else f"{value:.1f}"


def write_report(evaluation: Evaluation, out_dir: Path, dataset_name: str) -> dict:
    """Write ``metrics.json``, ``metrics.md``, ``curves.png``, ``histogram.png``, ``examples.png``.

    Returns:
        The headline numbers.
    """
    make_out_dir(out_dir)
    numbers = headline(evaluation.metrics)
    title = f"{evaluation.method} on {dataset_name} ({len(evaluation.images)} images)"
    write_json_atomic(out_dir / "metrics.json", {
        "dataset": dataset_name,
        "method": evaluation.method,
        "layer": evaluation.layer,
        "target": evaluation.target,
        "images": len(evaluation.images),
        "summary": numbers,
        "metrics": evaluation.metrics,
        "failures": [{"image_id": i, "error": e} for i, e in evaluation.failures],
    })
    table = f"# {title}\n\ntarget: {evaluation.target}\n\n" + markdown_table(
        [(evaluation.method, numbers)])
    write_bytes_atomic(out_dir / "metrics.md", table.encode("utf-8"))
    plot_curves(evaluation.metrics, out_dir / "curves.png", title)
    inside, outside = _value_split(evaluation.images)
    plot_histogram(inside, outside, out_dir / "histogram.png", title)
    _write_examples(evaluation, out_dir / "examples.png", title)
    return numbers


def _truth_mask(image: ScoredImage) -> np.ndarray:
    if image.mask is not None:
        return image.mask
    mask = np.zeros((PROTOCOL_SIZE, PROTOCOL_SIZE), bool)
    for x0, y0, x1, y1 in np.round(image.boxes).astype(int):
        mask[max(y0, 0):y1, max(x0, 0):x1] = True
    return mask


def _value_split(images: Sequence[ScoredImage], limit: int = 200) -> tuple[np.ndarray, ...]:
    step = max(1, len(images) // limit)
    inside, outside = [], []
    for image in images[::step]:
        truth = _truth_mask(image)
        inside.append(image.heatmap[truth])
        outside.append(image.heatmap[~truth])
    return np.concatenate(inside), np.concatenate(outside)


def image_quality(image: ScoredImage, threshold: float) -> float:
    """IoU of an image's prediction at ``threshold``: best box IoU, or mask IoU."""
    found = localize(image.heatmap, "fixed", threshold)
    if image.mask is not None:
        union = np.logical_or(found.mask, image.mask).sum()
        return float(np.logical_and(found.mask, image.mask).sum() / union) if union else 1.0
    if not len(image.boxes) or not len(found.boxes):
        return 0.0
    return float(box_iou(found.boxes, image.boxes).max())


def _best_threshold(metrics: dict) -> float:
    if "boxes" in metrics:
        return metrics["boxes"]["best_threshold"]
    return metrics["pixels"]["best_threshold"]


def _write_examples(evaluation: Evaluation, path: Path, title: str) -> None:
    threshold = _best_threshold(evaluation.metrics)
    scored = sorted(
        ((image_quality(image, threshold), index) for index, image in
         enumerate(evaluation.images)),
    )
    count = min(EXAMPLES_PER_ROW, len(scored) // 2) or 1
    picks = [("worst", s) for s in scored[:count]] + [("best", s) for s in scored[-count:]]
    panels = []
    for label, (quality, index) in picks:
        image = evaluation.images[index]
        panels.append((_example_panel(image, threshold),
                       f"{label}: IoU {quality:.2f}\n{Path(image.sample.image_id).name[:28]}"))
    plot_examples(panels, path, f"{title}; green: ground truth, red: prediction at "
                  f"threshold {threshold:.2f}", columns=EXAMPLES_PER_ROW)


def _example_panel(image: ScoredImage, threshold: float) -> np.ndarray:
    try:
        photo = load_image(image.sample.path).resize((PROTOCOL_SIZE, PROTOCOL_SIZE))
        pixels = np.asarray(photo)
    except Exception:  # noqa: BLE001 - a plot must not fail on a vanished image
        pixels = np.zeros((PROTOCOL_SIZE, PROTOCOL_SIZE, 3), np.uint8)
    canvas = overlay_heatmap(pixels, image.heatmap)
    if len(image.boxes):
        canvas = draw_boxes(canvas, image.boxes, color=(0, 255, 0))
    found = localize(image.heatmap, "fixed", threshold)
    if len(found.boxes):
        canvas = draw_boxes(canvas, found.boxes, color=(255, 0, 0))
    return canvas
