"""The segmentation job: its per-batch core (shared by the local and the Ray engine) and its run.

The model runs on the calling process (a batch at the model's input size, or each image at
its own size with ``network_size="full"``); the CPU-heavy part (dense CRF, GrabCut) of each
image runs in a process pool when ``jobs > 1``. GrabCut's random generator is seeded before
every call (:func:`~wsolkit.refine.grabcut.grabcut`), so a mask does not depend on the process
it was made in, nor on the engine. A row: the prediction, and per target its class,
probability, the mask as COCO RLE (compressed counts), the mask's box (pixel edges, scored by
the target's probability) and its foreground fraction.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from wsolkit.apps.engine import (
    DecodedImage,
    Decoder,
    JobOptions,
    JobReport,
    failed_row,
    preprocessor,
    run_local,
)
from wsolkit.apps.outputs import OutputNamer
from wsolkit.apps.segment import SegmentSettings, mask_overlay, save_mask_map, segment_heatmap
from wsolkit.data.atomic import make_out_dir
from wsolkit.data.rle import encode_rle
from wsolkit.errors import InputError
from wsolkit.maps import make_method
from wsolkit.models.classifier import Classifier

BOX_FORMAT = "x0,y0,x1,y1 pixel edges of the original image (x1 = x0 + width)"
MASK_FORMAT = "COCO RLE, compressed counts string (column-major runs, 0s first)"


@dataclass
class SegmentExtras:
    """Besides a row: the mask and the overlay, when the job writes them as files."""

    mask: np.ndarray | None = None
    overlay: np.ndarray | None = None


def mask_record(mask: np.ndarray, probability: float | None) -> dict:
    """The row fields of one mask: COCO RLE, its box (pixel edges) and foreground fraction."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    boxes = []
    if len(rows):
        box = [int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1]
        boxes.append({"box": box, "score": probability})
    return {"boxes": boxes, "mask": encode_rle(mask),
            "foreground_fraction": round(float(mask.mean()), 6)}


def _mask_task(pixels: np.ndarray, heatmap: np.ndarray, settings: SegmentSettings,
               probability: float | None, keep: bool) -> tuple[dict, np.ndarray | None]:
    """Pool task: one image's mask (CRF, GrabCut) as row fields, and the mask if kept."""
    mask, _ = segment_heatmap(pixels, heatmap, settings)
    return mask_record(mask, probability), mask if keep else None


def _worker_start() -> None:
    import cv2

    cv2.setNumThreads(1)  # the pool's processes are the parallelism
    torch.set_num_threads(1)


class _Deferred:
    """``jobs=1``: the task runs in this process when its result is asked for."""

    def __init__(self, fn: Callable, *args: object) -> None:
        self.fn, self.args = fn, args

    def result(self) -> object:
        return self.fn(*self.args)


class SegmentCore:
    """Heatmaps, masks and rows for batches of decoded images.

    Args:
        classifier: the model, on the device to run on.
        settings: heatmap method and the heatmap-to-mask pipeline.
        jobs: processes for the CRF and GrabCut (1: in this process, when the rows are
            collected).
        keep_masks: also return every mask (:class:`SegmentExtras`), for mask files.
    """

    def __init__(self, classifier: Classifier, settings: SegmentSettings, jobs: int = 1,
                 keep_masks: bool = False) -> None:
        settings.check()
        if jobs < 1:
            raise InputError(f"jobs {jobs}: must be at least 1")
        options = dict(settings.options)
        if settings.upsample != "bilinear":  # every method's own default
            options.setdefault("upsample", settings.upsample)
        self.classifier, self.settings, self.keep_masks = classifier, settings, keep_masks
        self.method = make_method(settings.method, classifier, layer=settings.layer, **options)
        self.uses_sources = bool(self.method.uses_sources)
        self.layer: str | None = None
        self.jobs = jobs
        self._pool: ProcessPoolExecutor | None = None

    def describe(self) -> dict:
        """The settings recorded in ``results.json`` beside the rows."""
        return {"method": self.settings.method, "target": self.settings.target,
                "requested_layer": self.settings.layer, "settings": asdict(self.settings),
                "box_format": BOX_FORMAT, "mask_format": MASK_FORMAT}

    def decoder(self, overlay: frozenset[int] = frozenset()) -> Decoder:
        """Decoding for this core: every image keeps its pixels (GrabCut reads them)."""
        return Decoder(preprocessor(self.classifier), keep_source=self.uses_sources,
                       full_size=self.settings.network_size == "full", keep_pixels=True,
                       overlay=overlay)

    def close(self) -> None:
        """Shut the process pool down (a later batch starts a new one)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _submit(self, *args: object) -> Future | _Deferred:
        if self.jobs == 1:
            return _Deferred(_mask_task, *args)
        if self._pool is None:
            self.start()
        return self._pool.submit(_mask_task, *args)

    def start(self) -> None:
        """Start the process pool now (with ``jobs > 1``).

        Its processes get ready while the model runs its first batch.
        """
        if self.jobs == 1 or self._pool is not None:
            return
        # forkserver (spawn off Linux): no fork of a process whose torch and OpenCV threads
        # run; the server imports this module once and every worker is forked from it
        if sys.platform.startswith("linux"):
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__])
        else:
            context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(self.jobs, mp_context=context,
                                         initializer=_worker_start)
        for _ in range(self.jobs):
            self._pool.submit(int)  # each submit starts a worker process

    def __call__(self, items: Sequence[DecodedImage]) -> list[tuple[dict, SegmentExtras]]:
        """One ``(row, extras)`` per item, in order (failed items give failed rows)."""
        return self.submit(items)()

    def submit(self, items: Sequence[DecodedImage]
               ) -> Callable[[], list[tuple[dict, SegmentExtras]]]:
        """Run the model on a batch now and hand each mask to the pool; collect later."""
        good = [item for item in items if item.tensor is not None]
        pending: dict[int, tuple[dict, Future | _Deferred]] = {}
        if good:
            for item, (heatmap, logits, target) in zip(good, self._heatmaps(good), strict=True):
                head, probability = self._head(item, logits, target)
                keep = self.keep_masks or item.overlay
                pending[id(item)] = (head, self._submit(item.pixels, heatmap, self.settings,
                                                        probability, keep))

        def collect() -> list[tuple[dict, SegmentExtras]]:
            out = []
            for item in items:
                if id(item) not in pending:
                    out.append((failed_row(item.path, item.error or "not decoded"),
                                SegmentExtras()))
                    continue
                row, future = pending[id(item)]
                fields, mask = future.result()
                row["targets"][0].update(fields)
                overlay = (mask_overlay(item.pixels, mask)
                           if item.overlay and mask is not None else None)
                out.append((row, SegmentExtras(mask if self.keep_masks else None, overlay)))
            return out

        return collect

    def _heatmaps(self, good: list[DecodedImage]
                  ) -> list[tuple[np.ndarray, torch.Tensor, int]]:
        """Per image: its heatmap (model input size, or its own size), logits, target class."""
        device, target = self.classifier.device, self.settings.target
        if self.settings.network_size == "model":
            batches = [good]
        else:
            batches = [[item] for item in good]
        out = []
        for batch in batches:
            tensor = torch.stack([item.tensor for item in batch]).to(device)
            extra = {"sources": [item.source for item in batch]} if self.uses_sources else {}
            result = self.method(tensor, target=target, **extra)
            self.layer = result.layer
            for index in range(len(batch)):
                row = int((result.image_index == index).nonzero().flatten()[0])
                out.append((result.maps[row].cpu().numpy(), result.logits[row].cpu(),
                            int(result.classes[row])))
        return out

    def _head(self, item: DecodedImage, logits: torch.Tensor, target_class: int
              ) -> tuple[dict, float | None]:
        """The row without its mask fields, and the target's probability."""
        classifier = self.classifier
        probabilities = classifier.probabilities(logits)
        top = int(probabilities.argmax())
        probability = (round(float(probabilities[target_class]), 6)
                       if target_class >= 0 else None)
        name = classifier.class_name(target_class) if target_class >= 0 else "custom target"
        row = {
            "image": item.path, "status": "ok", "width": item.width, "height": item.height,
            "prediction": {"class": top, "name": classifier.class_name(top),
                           "probability": round(float(probabilities[top]), 6)},
            "targets": [{"class": target_class, "name": name, "probability": probability}],
        }
        return row, probability


def segment_files(
    classifier: Classifier,
    paths: Sequence[Path],
    out_dir: Path,
    settings: SegmentSettings,
    progress: Callable[[int], None] | None = None,
    maps_dir: Path | None = None,
    job: JobOptions | None = None,
) -> JobReport:
    """Segment the foreground of image files, streaming one JSON row per image into ``out_dir``.

    Rows (prediction, and per target the mask as COCO RLE, its box and foreground fraction) go
    to ``rows-NNNNNN.jsonl`` shards written atomically; ``results.json`` records the settings
    and counts; images already in the folder's shards are skipped (resume). On request
    (``job``): ``<stem>.mask.png`` (0 / 255, the image's size; ``mask_files``) and
    ``<stem>.segment.png`` (background darkened, outline drawn; ``overlays``), named in the
    row. Bad images become failed rows and the job goes on; nothing is written outside
    ``out_dir`` (and ``maps_dir``) and inputs are never overwritten.

    Args:
        classifier: the model, on the device to run on.
        paths: image files.
        out_dir: output folder (created if missing).
        settings: see :class:`~wsolkit.apps.segment.SegmentSettings`.
        progress: called with the number of images finished after each batch.
        maps_dir: if given, each mask is also saved there as ``<stem>.npy``
            (:func:`~wsolkit.apps.segment.save_mask_map`) for ``wsolkit evaluate --maps``; a
            stem met twice is reported as a failure and its second mask is not saved there.
        job: decoding workers, GrabCut processes (``jobs``), shard size, overlays, mask files.

    Returns:
        A :class:`~wsolkit.apps.engine.JobReport`.

    Raises:
        InputError: bad settings, or ``out_dir`` holds rows made with other settings.
    """
    from wsolkit.viz import save_png

    job = job or JobOptions()
    job.check()
    keep = job.mask_files or maps_dir is not None
    core = SegmentCore(classifier, settings, jobs=job.jobs, keep_masks=keep)
    namer = OutputNamer(out_dir, list(paths))
    saved_stems: set[str] = set()
    if maps_dir is not None:
        make_out_dir(maps_dir, "maps_dir")

    def write_extras(row: dict, extras: SegmentExtras, report: JobReport) -> None:
        path = Path(row["image"])
        if extras.mask is not None and job.mask_files:
            mask_file = namer.name(path.stem, ".mask.png")
            save_png(mask_file, extras.mask.astype(np.uint8) * 255)
            row["targets"][0]["mask_file"] = mask_file.name
        if extras.overlay is not None:
            overlay = namer.name(path.stem, ".segment.png")
            save_png(overlay, extras.overlay)
            row["overlay"] = overlay.name
            report.overlays += 1
        if extras.mask is not None and maps_dir is not None:
            if path.stem in saved_stems:
                report.failures.append((str(path), f"{path}: another image named {path.stem} "
                                        f"already saved to {maps_dir}"))
            else:
                save_mask_map(maps_dir, path.stem, extras.mask)
                saved_stems.add(path.stem)

    core.start()
    try:
        return run_local(core, classifier, paths, out_dir, settings.batch_size, job,
                         write_extras, progress)
    finally:
        core.close()
