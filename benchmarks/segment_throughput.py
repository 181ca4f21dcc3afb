"""End-to-end throughput of `wsolkit segment` against a plain batched forward pass.

Run (from the repository root, ideally on a quiet machine):

    python benchmarks/segment_throughput.py [--threads 2] [--batch-size 16] [--images 64]
        [--repeats 2] [--jobs 1,2] [--ray 1,2] [--json PATH]

On the embedded model and the first ``--images`` real JPEGs of shared/data/imagenet-dev
(copied into a temporary folder), every repeat times, interleaved:

- ``forward``: ``model.module(x)`` under ``torch.inference_mode()`` on batches of
  ``--batch-size`` tensors already preprocessed in memory (the issue's reference).
- ``grabcut``: :func:`wsolkit.apps.segment.segment_heatmap` (dense CRF, stratification,
  GrabCut: the CPU stage, default settings) one image after the other in this process, on
  heatmaps already in memory: what one process does for the stage that dominates.
- ``segment --jobs N``: the whole command ``wsolkit segment FOLDER --out NEW --batch-size B
  --device cpu --jobs N --quiet`` in-process (files, model loading, DataLoader decoding, the
  heatmaps, CRF + GrabCut in N processes, RLE, JSON Lines shards), into a fresh folder.
- ``segment ray (N actors)``: the same command with ``--engine ray --actors N`` (each actor
  runs the model and GrabCut of its batches); Ray is started once beforehand.

A row's ratio is the median over repeats of (its images/s / forward images/s of the same
repeat). Prints a markdown table; exit code 0 (a report, not a test); the 1-minute load
average is recorded because on a shared machine the numbers drift.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from localize_throughput import DEV, command_rate, interleaved_rates, run_facts

import wsolkit
from wsolkit.apps.segment import SegmentSettings, image_heatmaps, segment_heatmap
from wsolkit.data.images import load_image
from wsolkit.maps import get_method


def grabcut_rate(images: list, heatmaps: list, settings: SegmentSettings) -> float:
    start = time.perf_counter()
    for image, heat in zip(images, heatmaps, strict=True):
        segment_heatmap(image, heat, settings)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=64, help="first N imagenet-dev JPEGs")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of every row")
    parser.add_argument("--jobs", default="1,2", help="--jobs of the local rows")
    parser.add_argument("--ray", default="1,2", help="actor counts of the --engine ray rows")
    parser.add_argument("--workers", type=int, default=None,
                        help="--workers of segment (default: the command's default)")
    parser.add_argument("--source", type=Path, default=DEV)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    jobs = [int(j) for j in args.jobs.split(",") if j]
    actors = [int(a) for a in args.ray.split(",") if a]
    scratch = Path(tempfile.mkdtemp(prefix="wsolkit-segment-throughput-"))
    try:
        folder = scratch / "images"
        folder.mkdir()
        sources = sorted(p for p in args.source.resolve().iterdir()
                         if p.suffix.lower() in (".jpeg", ".jpg"))[: args.images]
        for path in sources:
            shutil.copyfile(path, folder / path.name)
        files = sorted(folder.iterdir())
        model = wsolkit.load_model(device="cpu")
        pictures = [load_image(p) for p in files]
        tensors = [model.preprocess(p) for p in pictures]
        settings = SegmentSettings()
        method = get_method(settings.method)(model)
        heatmaps = []
        for begin in range(0, len(pictures), args.batch_size):
            heatmaps += image_heatmaps(method, pictures[begin:begin + args.batch_size],
                                       settings)[0]
        pixels = [np.asarray(p) for p in pictures]
        common = ["--batch-size", str(args.batch_size), "--device", "cpu"]
        if args.workers is not None:
            common += ["--workers", str(args.workers)]
        runners = {"grabcut (one process, maps in memory)":
                   functools.partial(grabcut_rate, pixels, heatmaps, settings)}
        for n in jobs:
            runners[f"segment --jobs {n}"] = functools.partial(
                command_rate, folder, len(files), [*common, "--jobs", str(n)], scratch, "segment")
        for n in actors:
            runners[f"segment ray ({n} actor{'s' if n > 1 else ''})"] = functools.partial(
                command_rate, folder, len(files),
                [*common, "--engine", "ray", "--actors", str(n)], scratch, "segment")
        runs, ratios, load = interleaved_rates(model, tensors, args.batch_size, runners,
                                               args.repeats, bool(actors), digits=2)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = [{
        "row": name,
        "images_per_s": round(statistics.median(rates), 3),
        "ratio_to_forward": round(statistics.median(ratios[name]), 4),
        "runs_images_per_s": [round(r, 3) for r in rates],
    } for name, rates in runs.items()]
    result = {
        **run_facts("segment_throughput.py", args, len(files), load),
        "settings": "SegmentSettings() defaults: objectness, dense CRF, quantile rule, "
                    "GrabCut 5 iterations at max side 256",
        "rows": table,
    }
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads, batch {args.batch_size}, {len(files)} JPEGs "
          f"(imagenet-dev), {args.repeats} repeats, 1-min load average "
          f"{min(load):.1f}-{max(load):.1f}\n")
    print("| row | images/s | ratio to forward |")
    print("|---|---:|---:|")
    for row in table:
        print(f"| {row['row']} | {row['images_per_s']:.2f} | {row['ratio_to_forward']:.3f}x |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
