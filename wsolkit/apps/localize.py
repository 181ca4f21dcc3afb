"""The localization job: boxes for many image files, streamed to JSON Lines shards.

Runs :class:`~wsolkit.apps.localize_core.LocalizeCore` on the streaming engine
(:mod:`wsolkit.apps.engine`): decoding in ``DataLoader`` workers, atomic shards, resume,
failed rows. Overlays are drawn only on request (every image, or an evenly spread sample).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from wsolkit.apps.engine import (
    RESULTS_FILE,
    ROWS_PREFIX,
    JobOptions,
    JobReport,
    default_workers,
    overlay_indices,
    run_local,
)
from wsolkit.apps.localize_core import Extras, LocalizeCore, LocalizeSettings
from wsolkit.apps.outputs import OutputNamer
from wsolkit.data.atomic import write_npy_atomic
from wsolkit.models.classifier import Classifier
from wsolkit.viz import save_png

__all__ = [
    "RESULTS_FILE",
    "ROWS_PREFIX",
    "JobOptions",
    "JobReport",
    "LocalizeSettings",
    "default_workers",
    "localize_files",
    "overlay_indices",
]


def localize_files(
    classifier: Classifier,
    paths: Sequence[Path],
    out_dir: Path,
    settings: LocalizeSettings,
    progress: Callable[[int], None] | None = None,
    job: JobOptions | None = None,
) -> JobReport:
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
        A :class:`~wsolkit.apps.engine.JobReport`.

    Raises:
        InputError: bad options, or ``out_dir`` holds rows made with other settings.
    """
    job = job or JobOptions()
    job.check()
    core = LocalizeCore(classifier, settings, keep_maps=job.save_maps)
    wants_files = bool(overlay_indices(len(paths), job.overlays)) or job.save_maps
    namer = OutputNamer(out_dir, list(paths)) if wants_files else None

    def write_extras(row: dict, extras: Extras, report: JobReport) -> None:
        if namer is None:
            return
        stem = Path(row["image"]).stem
        if extras.overlay is not None:
            overlay = namer.name(stem, f".{settings.method}.png")
            save_png(overlay, extras.overlay)
            row["overlay"] = overlay.name
            report.overlays += 1
        if extras.heatmap is not None:
            heatmap = namer.name(stem, f".{settings.method}.npy")
            write_npy_atomic(heatmap, extras.heatmap.astype(np.float16))
            row["map"] = heatmap.name

    return run_local(core, classifier, paths, out_dir, settings.batch_size, job, write_extras,
                     progress)

