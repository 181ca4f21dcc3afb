"""The localization job: boxes for many image files, streamed to JSON Lines shards.

Decoding and resizing run in ``torch.utils.data.DataLoader`` worker processes while the model
runs on the previous batch; rows are written as atomic shards (:mod:`wsolkit.data.shards`), so
an interrupted job run again with the same output folder resumes where it stopped. Overlays
are drawn only on request (every image, or an evenly spread sample).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from wsolkit.apps.localize_core import (
    BOX_FORMAT,
    DecodedImage,
    LocalizeCore,
    LocalizeSettings,
    decode_path,
    preprocessor,
)
from wsolkit.apps.outputs import OutputNamer
from wsolkit.data.atomic import make_out_dir, write_bytes_atomic, write_json_atomic
from wsolkit.data.shards import ShardWriter
from wsolkit.errors import InputError
from wsolkit.models.classifier import Classifier
from wsolkit.viz import save_png

__all__ = [
    "RESULTS_FILE",
    "ROWS_PREFIX",
    "JobOptions",
    "LocalizeReport",
    "LocalizeSettings",
    "localize_files",
]

RESULTS_FILE = "results.json"
ROWS_PREFIX = "rows"


@dataclass
class JobOptions:
    """How a job runs (not what it computes; results do not depend on these).

    Attributes:
        workers: decoding worker processes (0: decode in the main process).
        shard_size: rows per output shard.
        overlays: ``"all"``, ``"none"``, or a number N: overlays of N images spread evenly
            over the inputs.
        save_maps: write each image's first heatmap (model input size, float16) as
            ``<stem>.<method>.npy`` beside the rows, named in the row's ``"map"``.
    """

    workers: int = 2
    shard_size: int = 1000
    overlays: str | int = "none"
    save_maps: bool = False


@dataclass
class LocalizeReport:
    """What a run did: rows written now, rows found from an earlier run, this run's failures."""

    written: int = 0
    resumed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    layer: str | None = None
    overlays: int = 0


class _ImageFiles(Dataset):
    """Decoded, preprocessed images for the DataLoader's workers."""

    def __init__(self, paths: Sequence[Path], classifier: Classifier, overlay: set[int],
                 keep_source: bool = False):
        self.paths, self.classifier, self.overlay = list(paths), classifier, overlay
        self.keep_source = keep_source

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> DecodedImage:
        return decode_path(self.paths[index], self.classifier, index in self.overlay,
                           self.keep_source)


def _as_list(items: list[DecodedImage]) -> list[DecodedImage]:
    return items


def localize_files(
    classifier: Classifier,
    paths: Sequence[Path],
    out_dir: Path,
    settings: LocalizeSettings,
    progress: Callable[[int], None] | None = None,
    job: JobOptions | None = None,
) -> LocalizeReport:
    """Localize objects in image files, streaming one JSON row per image into ``out_dir``.

    Rows go to ``rows-NNNNNN.jsonl`` shards; ``results.json`` records the settings and counts.
    Images already in the folder's shards (an interrupted earlier run with the same settings)
    are skipped. Bad images become failed rows and the job goes on; nothing is written outside
    ``out_dir`` and inputs are never overwritten.

    Args:
        classifier: the model, on the device to run on.
        paths: image files.
        out_dir: output folder (created if missing).
        settings: method, target, thresholds.
        progress: called with the number of images finished after each batch.
        job: workers, shard size, overlays (defaults: :class:`JobOptions`).

    Returns:
        A :class:`LocalizeReport`.

    Raises:
        InputError: bad options, or ``out_dir`` holds rows made with other settings.
    """
    job = job or JobOptions()
    if job.workers < 0:
        raise InputError(f"workers={job.workers}: must be at least 0")
    core = LocalizeCore(classifier, settings, keep_maps=job.save_maps)
    make_out_dir(out_dir)
    summary = start_summary(out_dir, classifier, settings)
    writer = ShardWriter(out_dir, prefix=ROWS_PREFIX, shard_size=job.shard_size)
    report = LocalizeReport(resumed=len(writer.done))
    overlay_at = overlay_indices(len(paths), job.overlays)
    todo = [(i, p) for i, p in enumerate(paths) if str(p) not in writer.done]
    if progress is not None and len(todo) < len(paths):
        progress(len(paths) - len(todo))
    namer = OutputNamer(out_dir, list(paths)) if overlay_at or job.save_maps else None
    wanted = {position for position, (index, _) in enumerate(todo) if index in overlay_at}
    loader = DataLoader(
        _ImageFiles([p for _, p in todo], preprocessor(classifier), wanted, core.uses_sources),
        batch_size=settings.batch_size,
        num_workers=job.workers,
        collate_fn=_as_list,
    )
    try:
        for items in loader:
            for row, extras in core(items):
                stem = Path(row["image"]).stem
                if extras.overlay is not None and namer is not None:
                    overlay = namer.name(stem, f".{settings.method}.png")
                    save_png(overlay, extras.overlay)
                    row["overlay"] = overlay.name
                    report.overlays += 1
                if extras.heatmap is not None and namer is not None:
                    heatmap = namer.name(stem, f".{settings.method}.npy")
                    _save_map(heatmap, extras.heatmap)
                    row["map"] = heatmap.name
                if row["status"] != "ok":
                    report.failures.append((row["image"], row["error"]))
                writer.add(row)
                report.written += 1
            if progress is not None:
                progress(len(items))
    finally:
        writer.flush()
        finish_summary(out_dir, summary, core.layer, writer, report, len(paths))
    return report


def finish_summary(out_dir: Path, summary: dict, layer: str | None, writer: ShardWriter,
                   report: LocalizeReport, total: int) -> None:
    """Write ``results.json`` at the end of a run (complete, or interrupted)."""
    report.layer = layer or summary.get("layer")
    done = report.written + report.resumed >= total
    summary.update(layer=report.layer, status="complete" if done else "interrupted",
                   counts=writer.counts)
    write_json_atomic(out_dir / RESULTS_FILE, summary)


def _save_map(path: Path, heatmap: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, heatmap.astype(np.float16))
    write_bytes_atomic(path, buffer.getvalue())


def start_summary(out_dir: Path, classifier: Classifier, settings: LocalizeSettings) -> dict:
    """``results.json`` of a job starting in ``out_dir``, checked against an earlier run's.

    Raises:
        InputError: the folder holds rows of a run with another model or other settings.
    """
    summary = {
        "model": classifier.name,
        **settings.describe(),
        "box_format": BOX_FORMAT,
        "rows": f"{ROWS_PREFIX}-NNNNNN.jsonl, one JSON object per image",
        "status": "running",
    }
    previous = out_dir / RESULTS_FILE
    if previous.is_file():
        try:
            before = json.loads(previous.read_text("utf-8"))
        except (OSError, ValueError):
            before = {}
        keys = ("model", *settings.describe())
        changed = [k for k in keys if before.get(k) != summary[k]]
        if "rows" in before and changed:
            raise InputError(
                f"out={out_dir}: holds rows made with other settings "
                f"({', '.join(f'{k}={before.get(k)!r}' for k in changed)}); "
                "use another folder to start afresh"
            )
        summary["layer"] = before.get("layer")
    write_json_atomic(previous, summary)
    return summary


def overlay_indices(count: int, overlays: str | int) -> set[int]:
    """Indices of the inputs that get an overlay: all, none, or N spread evenly."""
    if overlays == "all":
        return set(range(count))
    if overlays == "none":
        return set()
    if isinstance(overlays, bool) or not isinstance(overlays, int) or overlays < 0:
        raise InputError(f"overlays {overlays!r}: expected 'all', 'none' or a count >= 0")
    if overlays == 0 or count == 0:
        return set()
    picks = np.linspace(0, count - 1, num=min(overlays, count))
    return {int(round(value)) for value in picks}


def default_workers() -> int:
    """Decoding workers: one per CPU core beyond the first, at least one, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))

