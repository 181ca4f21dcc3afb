"""The HTML report of ``wsolkit clean-boxes``: score histogram, before/after thumbnails."""

from __future__ import annotations

import base64
import html
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from wsolkit.apps.annotation_io import SKIP_REASONS, AnnotatedBox, AnnotationSet
from wsolkit.apps.clean_scoring import AUTO_CAP, _clipped, _window
from wsolkit.data.atomic import make_out_dir, write_bytes_atomic
from wsolkit.data.images import load_image
from wsolkit.errors import ImageError

if TYPE_CHECKING:
    from wsolkit.apps.clean_boxes import CleanResult

__all__ = ["write_report"]


def _box_list(box: np.ndarray | None) -> list[float] | None:
    return None if box is None else [round(float(v), 2) for v in box]


MAX_THUMBNAILS = 60
THUMB_SIDE = 160


def _png_base64(rgb: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    return base64.b64encode(data.tobytes()).decode("ascii") if ok else ""


def _thumbnail(image: np.ndarray, entry: AnnotatedBox) -> np.ndarray:
    from wsolkit.viz import draw_boxes

    height, width = image.shape[:2]
    boxes = [entry.box] + ([entry.new_box] if entry.new_box is not None else [])
    union = np.array([min(b[0] for b in boxes), min(b[1] for b in boxes),
                      max(b[2] for b in boxes), max(b[3] for b in boxes)])
    x0, y0, x1, y1 = _window(_clipped(union, (width, height)), (width, height), 0.3)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    scale = THUMB_SIDE / max(crop.shape[:2])
    crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)),
                             max(1, round(crop.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    offset = np.array([x0, y0, x0, y0], np.float64)
    crop = draw_boxes(crop, ((entry.box - offset) * scale)[None], color=(230, 40, 40),
                      thickness=2)
    if entry.new_box is not None:
        crop = draw_boxes(crop, ((entry.new_box - offset) * scale)[None], color=(40, 220, 40),
                          thickness=2)
    return crop


def _histogram_png(scores: np.ndarray, threshold: float, path: Path) -> None:
    from wsolkit.viz.plots import _pyplot, _save

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    if scores.size:
        axis.hist(scores, bins=50, color="#4a7ab5")
    axis.axvline(threshold, color="#d62728", linestyle="--", label=f"threshold {threshold:.3f}")
    axis.set_xlabel("dominance score (mean heat inside - around the box)")
    axis.set_ylabel("boxes")
    axis.legend(fontsize=8)
    _save(figure, path)


def write_report(result: CleanResult, out_dir: Path) -> Path:
    """Write ``report.html`` (self-contained) and ``report/score_histogram.png``."""
    boxes = result.annotations.boxes
    folder = out_dir / "report"
    make_out_dir(folder)
    scores = np.array([b.score for b in boxes if not math.isnan(b.score)])
    histogram = folder / "score_histogram.png"
    _histogram_png(scores, result.threshold, histogram)
    flagged = sorted((b for b in boxes if b.action in ("flagged", "dropped")),
                     key=lambda b: b.score)
    tightened = sorted((b for b in boxes if b.action == "tightened"),
                       key=lambda b: _area_ratio(b))
    chosen = flagged[: MAX_THUMBNAILS // 2]
    chosen += tightened[: MAX_THUMBNAILS - len(chosen)]
    thumbs = _thumbnails(result.annotations, chosen)
    counts = result.counts()
    settings = result.settings
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>wsolkit clean-boxes report"
        "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}figure{display:inline-block;"
        "margin:4px;font-size:11px;width:170px;vertical-align:top}</style></head><body>",
        "<h1>Annotation cleaning report</h1>",
        f"<p>Input: <code>{esc(str(result.annotations.source))}</code> "
        f"({result.annotations.kind}); output: <code>{esc(str(result.output))}</code>.</p>",
        f"<p>Method <b>{esc(settings.method)}</b> (layer {esc(str(settings.layer or 'default'))}"
        f"), scoring <b>{settings.scoring}</b>, context {settings.context:g}, tightening at "
        f"{settings.fraction:g} of the box's peak heat, margin {settings.margin:g}, "
        f"{'drop' if settings.drop else 'flag'} mode.</p>",
        f"<p><b>Threshold {result.threshold:.4f}</b> ({esc(result.rule)}). The score of a box "
        "is the mean heat inside it minus the mean heat of the ring around it (its context), "
        "on the window's heatmap scaled to [0, 1]: high when the box holds the dominant object "
        "of its surroundings, near or below zero on background. <i>auto</i> is Otsu's "
        "threshold of this dataset's score histogram (the cut best separating a low and a "
        f"high group), never above {AUTO_CAP:g}: a box hotter than its surroundings is not "
        "flagged automatically, so a clean dataset is not split in two. Boxes at or below the "
        "threshold are flagged.</p>",
        "<ul>" + "".join(f"<li>{k}: {v}</li>" for k, v in counts.items()) + "</ul>",
        "<h2>Score histogram</h2>",
        f"<img alt='score histogram' src='data:image/png;base64,"
        f"{base64.b64encode(histogram.read_bytes()).decode('ascii')}'>",
        f"<h2>Before (red) / after (green): {len(thumbs)} of "
        f"{len(flagged) + len(tightened)} changes</h2>",
    ]
    for entry, png in thumbs:
        caption = (f"{esc(entry.key)} ({esc(entry.label)})<br>{entry.action}, "
                   f"score {entry.score:.3f}")
        parts.append(f"<figure><img src='data:image/png;base64,{png}'>"
                     f"<figcaption>{caption}</figcaption></figure>")
    parts.append("<h2>Changes</h2><table><tr><th>box</th><th>image</th><th>label</th>"
                 "<th>action</th><th>score</th><th>before</th><th>after</th></tr>")
    for entry in flagged + tightened:
        parts.append(
            f"<tr><td>{esc(entry.key)}</td><td>{esc(entry.image)}</td><td>{esc(entry.label)}"
            f"</td><td>{entry.action}</td><td>{entry.score:.3f}</td>"
            f"<td>{_box_list(entry.box)}</td><td>{_box_list(entry.new_box) or ''}</td></tr>")
    parts.append("</table><h2>Skipped boxes</h2><table><tr><th>box</th><th>image</th>"
                 "<th>label</th><th>reason</th></tr>")
    for entry in boxes:
        if entry.action == "skipped":
            parts.append(f"<tr><td>{esc(entry.key)}</td><td>{esc(entry.image)}</td>"
                         f"<td>{esc(entry.label)}</td>"
                         f"<td>{esc(SKIP_REASONS.get(entry.status, entry.status))}</td></tr>")
    parts.append("</table>")
    if result.failures:
        parts.append("<h2>Problems</h2><ul>" + "".join(
            f"<li>{esc(f)}</li>" for f in result.failures) + "</ul>")
    parts.append("</body></html>\n")
    path = out_dir / "report.html"
    write_bytes_atomic(path, "\n".join(parts).encode("utf-8"))
    return path


def _area_ratio(entry: AnnotatedBox) -> float:
    def area(b: np.ndarray) -> float:
        return max(b[2] - b[0], 0) * max(b[3] - b[1], 0)

    return area(entry.new_box) / max(area(entry.box), 1e-9)


def _thumbnails(annotations: AnnotationSet, chosen: list[AnnotatedBox]
                ) -> list[tuple[AnnotatedBox, str]]:
    by_image: dict[str, list[AnnotatedBox]] = defaultdict(list)
    for entry in chosen:
        by_image[entry.image].append(entry)
    made: dict[int, str] = {}
    for name, entries in by_image.items():
        try:
            image = np.asarray(load_image(annotations.image_dir / name))
        except ImageError:
            continue
        for entry in entries:
            made[id(entry)] = _png_base64(_thumbnail(image, entry))
    return [(entry, made[id(entry)]) for entry in chosen if id(entry) in made]
