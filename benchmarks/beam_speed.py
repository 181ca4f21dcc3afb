"""Beam-search localization speed: seconds per image-class, split into head and backbone passes.

Run (from the repository root, on a quiet machine):

    python benchmarks/beam_speed.py [--threads 2] [--images 4] [--repeats 3]
                                    [--preset default|paper] [--beam-width M]
                                    [--levels H] [--json PATH]
                                    [--crop-from image|tensor]
                                    [--precision float32|bfloat16]

What it measures: on the embedded model (``wsolkit.load_model()``) and the first ``--images``
photos of ``../shared/data/imagenet-dev`` (seeded random 3x224x224 images when it is absent),
every repeat times a plain ``torch.inference_mode()`` forward pass of one image and then the
``beam`` method on the same image (target top1: one image-class), one image at a time. The
search's backbone passes (re-encoding the kept crops, batched per level) and head passes (the
crop-resized children of every beam, one batched pass per level; the crop-resize counts as head
time) are timed by wrapping the two callables the method builds; "other" is the rest (the first
forward pass, crops of the source image (``--crop-from image``, the default) or of the input
tensor, selection, the heatmap). Reports medians over repeats; the ratio to the plain forward
pass is per repeat (so slow drift of a shared machine cancels out).
Target: <= 1.0 s per image-class on 2 threads (issue 13), at the default search size (M = 4,
H = 10; ``--preset paper``: the paper's M = 8, H = 10). The exit code is always 0: this
is a report, not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import wsolkit
from wsolkit.data.images import load_image
from wsolkit.maps.beam import PRESETS, BeamSearch, _Network

TARGET_SECONDS = 1.0
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "imagenet-dev"


def load_images(count: int, seed: int) -> list[Image.Image]:
    """The first ``count`` imagenet-dev photos, or seeded random images without the data."""
    ids = DATA / "image_ids.txt"
    if ids.is_file():
        return [load_image(DATA / line) for line in ids.read_text().split()[:count]]
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (227, 227, 3), dtype=np.uint8))
            for _ in range(count)]


class Timed(BeamSearch):
    """The beam method with its backbone and head passes (crop-resize + head) timed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reset()

    def reset(self) -> None:
        self.backbone_s = self.head_s = 0.0
        self.backbone_images = self.head_rows = 0

    def _network(self, forward, to_layer):  # noqa: D102 - benchmark instrumentation
        inner = super()._network(forward, to_layer)
        timer = self

        class Network(_Network):
            def child_logits(self, features, children):
                start = time.perf_counter()
                out = inner.child_logits(features, children)
                timer.head_s += time.perf_counter() - start
                timer.head_rows += out.shape[0]
                return out

        def backbone(x: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            out = inner.backbone(x)
            self.backbone_s += time.perf_counter() - start
            self.backbone_images += x.shape[0]
            return out

        return Network(backbone, inner.head, inner.pooled)


def cpu_facts() -> dict:
    """CPU model and its bfloat16 instructions (AMX tiles, AVX-512 BF16): bfloat16 speed
    depends on them."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "").split()
    return {"cpu": model, "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags}


def main() -> None:
    """Parse arguments, time, print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", choices=list(PRESETS), default="default")
    parser.add_argument("--beam-width", type=int, default=None,
                        help="M (default: the preset's)")
    parser.add_argument("--levels", type=int, default=None, help="H (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop-from", choices=["image", "tensor"], default="image")
    parser.add_argument("--precision", choices=["float32", "bfloat16", "float16"],
                        default="float32")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = wsolkit.load_model()
    sources = load_images(args.images, args.seed)
    images = model.preprocess_batch(sources)
    method = Timed(model, beam_width=args.beam_width, levels=args.levels,
                   crop_from=args.crop_from, precision=args.precision, preset=args.preset)
    with torch.inference_mode():  # warm-up
        model.module(images[:1])
    method(images[:1], sources=sources[:1])
    rows: dict[str, list[float]] = {k: [] for k in
                                    ("total", "backbone", "head", "other", "forward", "ratio")}
    counts = {}
    for _ in range(args.repeats):
        forward = total = backbone = head = 0.0
        for index in range(len(images)):
            image = images[index:index + 1]
            start = time.perf_counter()
            with torch.inference_mode():
                model.module(image)
            forward += time.perf_counter() - start
            method.reset()
            start = time.perf_counter()
            method(image, sources=sources[index:index + 1])
            total += time.perf_counter() - start
            backbone += method.backbone_s
            head += method.head_s
            counts = {"backbone images": method.backbone_images, "head rows": method.head_rows}
        n = len(images)
        rows["total"].append(total / n)
        rows["backbone"].append(backbone / n)
        rows["head"].append(head / n)
        rows["other"].append((total - backbone - head) / n)
        rows["forward"].append(forward / n)
        rows["ratio"].append(total / forward)
    median = {k: statistics.median(v) for k, v in rows.items()}
    print(f"beam M={method.beam_width} H={method.levels} (preset {args.preset}), crops from "
          f"the {args.crop_from}, {args.precision} crop passes, {args.threads} threads, "
          f"{len(images)} "
          f"images x {args.repeats} repeats, torch {torch.__version__}, {platform.machine()}")
    print(f"per image-class: {counts['backbone images']} crops through the backbone, "
          f"{counts['head rows']} children through the head\n")
    print("| part | s per image-class | share |")
    print("| --- | --- | --- |")
    for key in ("backbone", "head", "other", "total"):
        print(f"| {key} | {median[key]:.3f} | {100 * median[key] / median['total']:.1f}% |")
    print(f"\nplain forward pass: {median['forward'] * 1000:.1f} ms per image; beam / forward: "
          f"{median['ratio']:.1f}x")
    met = median["total"] <= TARGET_SECONDS
    print(f"target <= {TARGET_SECONDS} s per image-class: {'met' if met else 'NOT met'} "
          f"({median['total']:.2f} s)")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {
                                             "json": str(args.json),
                                             "beam_width": method.beam_width,
                                             "levels": method.levels},
                                         "median": median, "repeats": rows, "counts": counts,
                                         "target_met": met, "machine": cpu_facts()},
                                        indent=2))


if __name__ == "__main__":
    main()
