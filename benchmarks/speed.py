"""Heatmap method speed, as a ratio to a plain forward pass of the same model in the same run.

Run (from the repository root, on a quiet machine):

    python benchmarks/speed.py [--threads 2] [--batch-size 32] [--repeats 3] [--warmup 1]
                               [--methods cam,gradcam,...] [--scorecam-batch 2] [--json PATH]

What it measures: on the embedded model (``wsolkit.load_model()``) and a seeded random batch of
3x224x224 images, every repeat times the baseline ``model.module(x)`` under
``torch.inference_mode()`` and then each method's ``method(x)`` (target top1; the method object,
``wsolkit.get_method(name)(model, ...)``, is built once beforehand). A row's ratio is the median
over repeats of (its time per image / the baseline's time per image in the same repeat), so slow
drift of the machine cancels out. Score-CAM costs one forward per kept channel, so it runs on
``--scorecam-batch`` images: with ``max_channels=64`` every repeat, and with all channels once.

Prints a markdown table and a last line ``targets met: X/Y``. The exit code is always 0: this is
a report, not a test (DEVELOPERS.md: speed is checked as ratios within one run, never by timed
tests).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import dataclass, field

import torch

import wsolkit

GRADIENT_METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam")
INTERMEDIATE_LAYER = "features.stage5"
# Pipelines with their own benchmark (per-image, per-stage timing) are left out by default.
OWN_BENCHMARK = ("rcam1", "rcam2", "rcam3", "rcam", "beam")


@dataclass
class Row:
    """One timed configuration: a method, a layer (None: its default) and options."""

    method: str
    layer: str | None = None
    options: dict = field(default_factory=dict)
    small: bool = False  # run on the Score-CAM batch instead of the full batch
    once: bool = False  # time only in the first repeat, without warmup
    target: float | None = None  # maximum ratio to the forward pass, if any
    runner: wsolkit.maps.HeatmapMethod | None = None
    images: torch.Tensor | None = None
    ratios: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        extras = [f"{key}={value}" for key, value in self.options.items()]
        if self.method == "scorecam" and not self.options:
            extras.append("all channels")
        return f"{self.method} ({', '.join(extras)})" if extras else self.method


def plan(methods: list[str]) -> list[Row]:
    """The rows to time for the selected methods, extra layers and Score-CAM variants included."""
    rows = []
    for name in methods:
        if name == "scorecam":
            rows += [Row(name, options={"max_channels": 64}, small=True),
                     Row(name, small=True, once=True)]
            continue
        target = 1.10 if name in ("cam", "objectness") else None
        target = 1.15 if name in GRADIENT_METHODS else target
        rows.append(Row(name, target=target))
        if name in ("gradcam", "layercam", "objectness"):
            rows.append(Row(name, layer=INTERMEDIATE_LAYER))
    return rows


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    default_methods = [name for name in wsolkit.method_names() if name not in OWN_BENCHMARK]
    parser.add_argument("--methods", default=",".join(default_methods),
                        help="comma-separated method names (default: the CAM family; rCAM and "
                        "beam search have rcam_speed.py and beam_speed.py)")
    parser.add_argument("--scorecam-batch", type=int, default=2,
                        help="images for the Score-CAM rows (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = wsolkit.load_model()
    images = torch.randn(args.batch_size, 3, 224, 224)
    small = images[: args.scorecam_batch]

    def forward(x: torch.Tensor) -> None:
        with torch.inference_mode():
            model.module(x)

    rows = plan([name.strip() for name in args.methods.split(",") if name.strip()])
    for row in rows:
        row.runner = wsolkit.get_method(row.method)(model, layer=row.layer, **row.options)
        row.layer = row.layer or row.runner.default_layer(images[:1])
        row.images = small if row.small else images

    for _ in range(args.warmup):
        forward(images)
        for row in rows:
            if not row.once:
                row.runner(row.images)

    baseline = []
    for repeat in range(args.repeats):
        base = timed(forward, images)
        baseline.append(base)
        for row in rows:
            if row.once and repeat > 0:
                continue
            seconds = timed(row.runner, row.images)
            row.seconds.append(seconds)
            row.ratios.append((seconds / len(row.images)) / (base / len(images)))

    base = statistics.median(baseline)
    print(f"torch {torch.__version__}, {platform.machine()}, {args.threads} threads, "
          f"batch {args.batch_size}, {args.repeats} repeats (+{args.warmup} warmup); "
          f"Score-CAM rows on {len(small)} image(s), ratios per image\n")
    print("| method | layer | images/s | ratio to forward | target | pass/fail |")
    print("|---|---|---:|---:|---:|---|")
    print(f"| forward (inference_mode) | - | {len(images) / base:.1f} | 1.00x | - | - |")
    met = total = 0
    results = []
    for row in rows:
        ratio = statistics.median(row.ratios)
        per_second = len(row.images) / statistics.median(row.seconds)
        verdict = "-"
        if row.target is not None:
            total += 1
            met += ratio <= row.target
            verdict = "pass" if ratio <= row.target else "fail"
        target = f"<={row.target:.2f}x" if row.target else "-"
        print(f"| {row.label} | {row.layer} | {per_second:.1f} | {ratio:.2f}x | {target} "
              f"| {verdict} |")
        results.append({"method": row.method, "layer": row.layer, "options": row.options,
                        "images": len(row.images), "seconds": row.seconds,
                        "ratios": row.ratios, "ratio": ratio, "images_per_s": per_second,
                        "target": row.target, "verdict": verdict})
    print(f"\ntargets met: {met}/{total}")
    if args.json:
        config = {key: value for key, value in vars(args).items() if key != "json"}
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"torch": torch.__version__, "config": config,
                       "baseline_seconds": baseline, "rows": results}, file, indent=2)


if __name__ == "__main__":
    main()
