"""Seconds per box of box-to-mask (``wsolkit instances``) at COCO resolution, on 2 threads.

Each coco-mval photo (about 640x480) with the tight box of its GT mask is segmented with
``instance_masks`` and the default ``InstanceSettings``; the time is split between the crop
heatmap (preprocessing + forward pass) and the rest (GrabCut with seeding, resizing, pasting).
Plain ``grabcut_box`` on the whole image (the baseline) is timed on the same boxes with
``--baseline``. Median of ``--repeats`` passes over the images after one warm-up image.

The process's CPU time per box (all threads together) is printed beside the wall time: on a
machine shared with other jobs the wall time measures the load, while the CPU time bounds the
wall time of an otherwise idle machine (the timed loop does no I/O). On an oversubscribed
machine use ``--threads 1``: OpenMP threads that wait for a core spin and inflate both times.

    python benchmarks/instances_speed.py                 # 50 images, 2 threads
    python benchmarks/instances_speed.py --images 213 --baseline --json out/instances_speed.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from harness import DATA, write_json

from wsolkit.apps.instances import CropHeatmaps, InstanceSettings, instance_masks
from wsolkit.data import MaskFolderDataset, load_image, mask_box
from wsolkit.models import load_model
from wsolkit.refine.grabcut import grabcut_box

TARGET = 0.3


class TimedHeatmaps:
    """Wraps a crop-heatmap function and adds up the time spent in it."""

    def __init__(self, inner: CropHeatmaps) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __call__(self, crops):
        start = time.perf_counter()
        out = self.inner(crops)
        self.seconds += time.perf_counter() - start
        return out


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "coco-mval")
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-side", type=int, default=None,
                        help="override InstanceSettings.max_side")
    parser.add_argument("--baseline", action="store_true", help="also time plain grabcut_box")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    samples = list(MaskFolderDataset(args.data))[: args.images]
    items = []
    for sample in samples:
        fg, _ = sample.load_mask()
        items.append((np.asarray(load_image(sample.path)), mask_box(fg)[0]))
    sizes = np.array([image.shape[:2] for image, _ in items])
    settings = InstanceSettings()
    if args.max_side is not None:
        settings.max_side = args.max_side
    model = load_model()
    heatmaps = TimedHeatmaps(CropHeatmaps(model, settings))
    instance_masks(items[0][0], items[0][1][None], heatmaps, settings)  # warm-up

    totals, heats, cpus = [], [], []
    load_before = _load()
    for _ in range(args.repeats):
        heatmaps.seconds = 0.0
        start, cpu = time.perf_counter(), time.process_time()
        for image, box in items:
            instance_masks(image, box[None], heatmaps, settings)
        totals.append((time.perf_counter() - start) / len(items))
        cpus.append((time.process_time() - cpu) / len(items))
        heats.append(heatmaps.seconds / len(items))
    total, heat = statistics.median(totals), statistics.median(heats)
    cpu = statistics.median(cpus)
    result = {
        "torch": torch.__version__, "opencv": cv2.__version__, "machine": platform.machine(),
        "threads": args.threads, "boxes": len(items),
        "image_size": f"{int(np.median(sizes[:, 1]))}x{int(np.median(sizes[:, 0]))} (median)",
        "max_side": settings.max_side,
        "seconds_per_box": total, "heatmap_seconds": heat, "grabcut_seconds": total - heat,
        "cpu_seconds_per_box": cpu, "load_average_before": load_before,
        "load_average_after": _load(),
        "target": TARGET, "pass": total < TARGET, "pass_cpu": cpu < TARGET,
    }
    if args.baseline:
        start = time.perf_counter()
        for image, box in items:
            grabcut_box(image, box)
        result["plain_grabcut_seconds_per_box"] = (time.perf_counter() - start) / len(items)

    print(f"torch {result['torch']}, OpenCV {result['opencv']}, {result['machine']}, "
          f"{args.threads} threads, {len(items)} boxes, images {result['image_size']}, "
          f"GrabCut working size {settings.max_side}; 1-min load average "
          f"{result['load_average_before']:.2f} before, {result['load_average_after']:.2f} after")
    print()
    print("| step | seconds per box |")
    print("|---|---:|")
    print(f"| crop heatmap (objectness, batch of one crop) | {heat:.3f} |")
    print(f"| seeding + GrabCut + resize | {total - heat:.3f} |")
    print(f"| **total** | **{total:.3f}** (target < {TARGET}: "
          f"{'pass' if result['pass'] else 'fail'}) |")
    print(f"| CPU time of the process (all threads) | {cpu:.3f} (target < {TARGET}: "
          f"{'pass' if result['pass_cpu'] else 'fail'}) |")
    if args.baseline:
        print(f"| plain GrabCut from the box, whole image (baseline) | "
              f"{result['plain_grabcut_seconds_per_box']:.3f} |")
    if args.json is not None:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
