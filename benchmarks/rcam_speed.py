"""rCAM speed: seconds per image and where they go, on the embedded model at 224 (+448).

Run (from the repository root, on a quiet machine):

    python benchmarks/rcam_speed.py [--threads 2] [--images 4] [--repeats 3] [--warmup 1]
                                    [--method rcam] [--json PATH]

What it measures: the example images (``examples/*.jpg``, cycled up to ``--images``) are
preprocessed for the embedded EfficientNet-Lite0 (224x224) into one batch; every repeat times a
plain ``torch.inference_mode()`` forward of the batch at 224 and at 448, then one call of the
rCAM method with the original images (scale 2 resized from them, as the apps run it; default:
the full ``rcam``; ``--method rcam1`` etc. for a stage). During the rCAM
call the stage functions of ``wsolkit.maps.rcam`` are wrapped with timers: model forwards
(by input side: the base's CAM forward at 224 and the scale-2 forward at 448), PCA shape maps,
variogram fits, guided filters, fusion, dense CRF; "other" is the rest (CAM weights, resizes,
bookkeeping). Times are medians over repeats, per image. The target is < 0.5 s per image for
the full rCAM on 2 threads; the exit code is always 0 (a report, not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

import wsolkit
import wsolkit.maps.rcam as rcam_module
import wsolkit.maps.rcam_stages as stages_module
from wsolkit.data.images import load_image

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.jpg"))
TARGET_SECONDS = 0.5
# Functions wrapped with timers, by stage, in the module that calls them (wsolkit.maps.rcam
# runs the forwards, PCAs, fusion and CRF; wsolkit.maps.rcam_stages the guided chains).
TIMED = {
    "pca shape maps": ((rcam_module, "pca_shape_maps_batch"),),
    "variogram fits": ((stages_module, "variogram_radius"),),
    # the x2 steps (bilinear x2 + guided filter)
    "guided filters": ((stages_module, "upsample_chain"),),
    "fusion": ((rcam_module, "fuse"), (rcam_module, "normalize_minmax")),
    "dense CRF": ((rcam_module, "dense_crf"),),
}


class StageClock:
    """Accumulates seconds per stage while installed (functions wrapped, forward hooked)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.seconds: dict[str, float] = defaultdict(float)
        self._originals: dict[tuple[object, str], object] = {}
        self._handles: list = []
        self._started: list[float] = []
        self._active: set[str] = set()

    def __enter__(self) -> StageClock:
        for stage, names in TIMED.items():
            for module, name in names:
                original = getattr(module, name)
                self._originals[(module, name)] = original
                setattr(module, name, self._wrap(stage, original))

        def before(_module, _inputs):
            self._started.append(time.perf_counter())

        def after(_module, inputs, _output):
            side = inputs[0].shape[-1] if inputs and hasattr(inputs[0], "shape") else "?"
            self.seconds[f"model forward {side}"] += time.perf_counter() - self._started.pop()

        self._handles = [self.module.register_forward_pre_hook(before),
                         self.module.register_forward_hook(after)]
        return self

    def __exit__(self, *exc) -> None:
        for (module, name), original in self._originals.items():
            setattr(module, name, original)
        for handle in self._handles:
            handle.remove()

    def _wrap(self, stage: str, function):
        def timed(*args, **kwargs):
            if stage in self._active:  # nested call of the same stage (fuse -> normalize_minmax)
                return function(*args, **kwargs)
            self._active.add(stage)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start
                self._active.discard(stage)
        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--method", default="rcam", choices=rcam_module.STAGES)
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = wsolkit.load_model()
    pictures = [load_image(EXAMPLES[i % len(EXAMPLES)]) for i in range(args.images)]
    batch = model.preprocess_batch(pictures)
    big = torch.nn.functional.interpolate(batch, size=(448, 448), mode="bilinear",
                                          align_corners=False)
    method = wsolkit.get_method(args.method)(model)
    count = len(batch)
    # as the apps call it: the original images give scale 2 (I_2, resized from the image)
    extra = {"sources": pictures} if method.uses_sources else {}

    def forward(x: torch.Tensor) -> None:
        with torch.inference_mode():
            model.module(x)

    for _ in range(args.warmup):
        forward(batch)
        method(batch, **extra)

    load_before = os.getloadavg()
    totals, base224, base448 = [], [], []
    stages: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeats):
        base224.append(timed(forward, batch))
        base448.append(timed(forward, big))
        with StageClock(model.module) as clock:
            start = time.perf_counter()
            method(batch, **extra)
            total = time.perf_counter() - start
        totals.append(total)
        clock.seconds["other"] = total - sum(clock.seconds.values())
        for stage, seconds in clock.seconds.items():
            stages[stage].append(seconds)

    per_image = statistics.median(totals) / count
    layers = method.last_stages.shape_layers
    load = os.getloadavg()
    print(f"load average before/after: {load_before[0]:.2f} / {load[0]:.2f} (1 min) on "
          f"{os.cpu_count()} CPUs")
    print(f"torch {torch.__version__}, {platform.machine()}, {args.threads} threads, "
          f"{count} images per call, {args.repeats} repeats (+{args.warmup} warmup); "
          f"method {args.method}, shape layers {', '.join(layers)}\n")
    print("| stage | s per image | share |")
    print("|---|---:|---:|")
    forwards = sorted((s for s in stages if s.startswith("model forward")),
                      key=lambda name: int(name.split()[-1]) if name.split()[-1].isdigit() else 0)
    order = [*forwards, *TIMED, "other"]
    rows = {}
    for stage in order:
        if stage not in stages:
            continue
        seconds = statistics.median(stages[stage]) / count
        rows[stage] = seconds
        print(f"| {stage} | {seconds:.4f} | {seconds / per_image:.0%} |")
    print(f"| **total** | **{per_image:.4f}** | 100% |")
    f224 = statistics.median(base224) / count
    f448 = statistics.median(base448) / count
    print(f"\nplain forward per image: {f224:.4f} s at 224, {f448:.4f} s at 448; "
          f"{args.method} = {per_image / f224:.1f}x the 224 forward")
    verdict = "met" if per_image < TARGET_SECONDS else "not met"
    print(f"target < {TARGET_SECONDS} s per image: {verdict} ({per_image:.3f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"torch": torch.__version__, "config": vars(args),
                       "seconds_per_image": per_image, "stages": rows,
                       "forward_224": f224, "forward_448": f448,
                       "shape_layers": list(layers), "load_before": load_before[0],
                       "load_after": load[0]}, file, indent=2)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
