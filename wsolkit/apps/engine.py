"""The streaming engine of jobs over many image files (``localize``, ``segment``).

One engine, several per-batch cores. Files are decoded in ``torch.utils.data.DataLoader``
worker processes (:class:`Decoder`) while the model runs on the previous batch; a core turns a
batch of :class:`DecodedImage` into one JSON row per image (``submit`` runs the model and may
hand CPU work to a process pool; the returned callable collects the rows, so that work
overlaps the next batch's model); rows stream into atomic JSON Lines shards
(:mod:`wsolkit.data.shards`), so a job run again with the same output folder resumes where it
stopped. Bad images become failed rows and the job goes on. The Ray engine
(:mod:`wsolkit.apps.ray_engine`) runs the same cores. See docs/scale.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from wsolkit.data.atomic import make_out_dir, write_json_atomic
from wsolkit.data.images import decode_image, load_image
from wsolkit.data.shards import ShardWriter
from wsolkit.errors import ImageError, InputError
from wsolkit.models.classifier import Classifier

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
        save_maps: ``localize``: write each image's first heatmap (model input size, float16)
            as ``<stem>.<method>.npy`` beside the rows, named in the row's ``"map"``.
        jobs: processes for the CPU work after the model (``segment``'s CRF and GrabCut);
            1: in the main process.
        mask_files: ``segment``: also write each mask as ``<stem>.mask.png`` (0 / 255), named
            in the row's target (``"mask_file"``).
    """

    workers: int = 2
    shard_size: int = 1000
    overlays: str | int = "none"
    save_maps: bool = False
    jobs: int = 1
    mask_files: bool = False

    def check(self) -> None:
        """Raise :class:`InputError` for values that cannot work."""
        for name, least in (("workers", 0), ("shard_size", 1), ("jobs", 1)):
            value = getattr(self, name)
            if value < least:
                raise InputError(f"{name} {value}: must be at least {least}")


@dataclass
class JobReport:
    """What a run did: rows written now, rows found from an earlier run, this run's failures.

    Attributes:
        written: rows written by this run (ok and failed).
        resumed: rows found in the folder from an earlier run (skipped now).
        failures: ``(image, reason)`` of this run's failed rows.
        layer: the hooked layer.
        overlays: overlay files drawn.
    """

    written: int = 0
    resumed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    layer: str | None = None
    overlays: int = 0


@dataclass
class DecodedImage:
    """One input image after decoding: the model's tensor, or why it failed.

    Attributes:
        path: the file's path (or URI) as given.
        tensor: (3, H, W) preprocessed input, None when decoding failed.
        width: original width in pixels (0 when failed).
        height: original height in pixels (0 when failed).
        error: one-line reason when decoding failed.
        pixels: the RGB pixels (H, W, 3) uint8 when the core needs them, else None.
        source: the decoded RGB image, kept for methods that re-read it
            (``HeatmapMethod.uses_sources``: rCAM's second scale, beam's crops), else None.
        overlay: the job draws this image's overlay.
    """

    path: str
    tensor: torch.Tensor | None = None
    width: int = 0
    height: int = 0
    error: str | None = None
    pixels: np.ndarray | None = None
    source: Image.Image | None = None
    overlay: bool = False


@dataclass
class Decoder:
    """How a core wants its images decoded (picklable: it travels to decoding workers).

    Attributes:
        classifier: the model's preprocessing (:func:`preprocessor`: no network).
        keep_source: keep the PIL image (``DecodedImage.source``).
        full_size: the tensor at the image's own size (a fully convolutional pass) instead
            of the model's input size.
        keep_pixels: keep the RGB pixels of every image (``DecodedImage.pixels``).
        overlay: positions of the items that get an overlay (they keep their pixels too).
    """

    classifier: Classifier
    keep_source: bool = False
    full_size: bool = False
    keep_pixels: bool = False
    overlay: frozenset[int] = frozenset()

    def path(self, path: str | Path, index: int = 0) -> DecodedImage:
        """Read and preprocess one file; a bad file gives a failed item, never raises."""
        try:
            image = load_image(path)
        except ImageError as error:
            return DecodedImage(str(path), error=str(error))
        return self.image(str(path), image, index in self.overlay)

    def bytes(self, data: bytes, name: str) -> DecodedImage:
        """As :meth:`path`, from the file's bytes (read elsewhere, e.g. a Ray read task)."""
        try:
            image = decode_image(data, name)
        except ImageError as error:
            return DecodedImage(name, error=str(error))
        return self.image(name, image)

    def image(self, name: str, image: Image.Image, overlay: bool = False) -> DecodedImage:
        """A decoded PIL image as the core's item."""
        size = (image.height, image.width) if self.full_size else None
        keep = self.keep_pixels or overlay
        return DecodedImage(name, self.classifier.preprocess(image, size=size), image.width,
                            image.height, pixels=np.asarray(image) if keep else None,
                            source=image if self.keep_source else None, overlay=overlay)


def preprocessor(classifier: Classifier) -> Classifier:
    """A copy of ``classifier`` without its network, cheap to send to decoding workers."""
    return replace(classifier, module=torch.nn.Identity(), _detected=None)


def failed_row(path: str, error: str) -> dict:
    """The row of an image that could not be processed."""
    return {"image": path, "status": "failed", "error": error}


class Core(Protocol):
    """A per-batch core: decoded images in, one ``(row, extras)`` per image out, in order."""

    layer: str | None

    def decoder(self, overlay: frozenset[int]) -> Decoder:
        """How images are decoded (``overlay``: positions of the items drawn)."""

    def submit(self, items: Sequence[DecodedImage]) -> Callable[[], list[tuple[dict, Any]]]:
        """Run the model on a batch now; the callable returns its rows when they are done."""

    def describe(self) -> dict:
        """The settings recorded beside the rows (a resumed run must match them)."""


class ImageFiles(Dataset):
    """Image files decoded by a :class:`Decoder` (in the ``DataLoader``'s workers)."""

    def __init__(self, paths: Sequence[Path], decoder: Decoder) -> None:
        self.paths, self.decoder = list(paths), decoder

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> DecodedImage:
        return self.decoder.path(self.paths[index], index)


def as_list(items: list[DecodedImage]) -> list[DecodedImage]:
    """``DataLoader`` collate function: the batch as the list of decoded items."""
    return items


def run_local(
    core: Core,
    classifier: Classifier,
    paths: Sequence[Path],
    out_dir: Path,
    batch_size: int,
    job: JobOptions,
    write_extras: Callable[[dict, Any, JobReport], None],
    progress: Callable[[int], None] | None = None,
) -> JobReport:
    """Run ``core`` over image files on this machine, streaming rows into ``out_dir``.

    Images already in the folder's shards are skipped; ``results.json`` records the core's
    settings and, at the end (complete or interrupted), the counts.

    Args:
        core: the per-batch core.
        classifier: the model (its name is recorded).
        paths: image files.
        out_dir: output folder (created if missing).
        batch_size: images per batch.
        job: workers, shard size, overlays.
        write_extras: writes an image's extra files (overlays, maps) and names them in its
            row, before the row is queued.
        progress: called with the number of images finished after each batch.
    """
    job.check()
    make_out_dir(out_dir)
    summary = start_summary(out_dir, classifier, core.describe())
    writer = ShardWriter(out_dir, prefix=ROWS_PREFIX, shard_size=job.shard_size)
    report = JobReport(resumed=len(writer.done))
    overlay_at = overlay_indices(len(paths), job.overlays)
    todo = [(i, p) for i, p in enumerate(paths) if str(p) not in writer.done]
    if progress is not None and len(todo) < len(paths):
        progress(len(paths) - len(todo))
    wanted = frozenset(pos for pos, (index, _) in enumerate(todo) if index in overlay_at)
    loader = DataLoader(ImageFiles([p for _, p in todo], core.decoder(wanted)),
                        batch_size=batch_size, num_workers=job.workers, collate_fn=as_list)
    pending: list[tuple[Callable[[], list], int]] = []

    def collect() -> None:
        finish, count = pending.pop(0)
        for row, extras in finish():
            write_extras(row, extras, report)
            if row["status"] != "ok":
                report.failures.append((row["image"], row["error"]))
            writer.add(row)
            report.written += 1
        if progress is not None:
            progress(count)

    try:
        for items in loader:
            pending.append((core.submit(items), len(items)))
            while len(pending) > 1:  # one batch's CPU work overlaps the next one's model
                collect()
        while pending:
            collect()
    finally:
        writer.flush()
        finish_summary(out_dir, summary, core.layer, writer, report, len(paths))
    return report


def start_summary(out_dir: Path, classifier: Classifier, settings: dict) -> dict:
    """``results.json`` of a job starting in ``out_dir``, checked against an earlier run's.

    Raises:
        InputError: the folder holds rows of a run with another model or other settings.
    """
    summary = {
        "model": classifier.name,
        **settings,
        "rows": f"{ROWS_PREFIX}-NNNNNN.jsonl, one JSON object per image",
        "status": "running",
    }
    previous = out_dir / RESULTS_FILE
    if previous.is_file():
        try:
            before = json.loads(previous.read_text("utf-8"))
        except (OSError, ValueError):
            before = {}
        keys = ("model", *settings)
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


def finish_summary(out_dir: Path, summary: dict, layer: str | None, writer: ShardWriter,
                   report: JobReport, total: int) -> None:
    """Write ``results.json`` at the end of a run (complete, or interrupted)."""
    report.layer = layer or summary.get("layer")
    done = report.written + report.resumed >= total
    summary.update(layer=report.layer, status="complete" if done else "interrupted",
                   counts=writer.counts)
    write_json_atomic(out_dir / RESULTS_FILE, summary)


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
