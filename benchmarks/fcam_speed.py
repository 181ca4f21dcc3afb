"""F-CAM inference speed as a ratio to a plain forward pass of the same model in the same run.

Run (from the repository root, on a quiet machine):

    python benchmarks/fcam_speed.py [--threads 2] [--batch-size 32] [--repeats 5]
                                    [--decoder FILE] [--json benchmarks/results/fcam_speed.json]

On the embedded model and a seeded random 3x224x224 batch, every repeat times the baseline
``model.module(x)`` under ``torch.inference_mode()``, then ``fcam`` (the classifier's forward
with the skip layers hooked plus the decoder) and ``cam`` for reference. The ratio is the
median over repeats of (method time / baseline time in the same repeat), so slow drift of the
machine cancels out. Target: fcam <= 1.5x. The exit code is always 0 (a report, not a test).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from harness import write_json

import wsolkit

TARGET = 1.5


def main() -> None:
    """Time the forward pass, cam and fcam; print and optionally write the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decoder", default="", help="decoder file (default: the shipped one)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = wsolkit.load_model()
    images = torch.randn(args.batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    options = {"decoder": args.decoder} if args.decoder else {}
    methods = {"cam": wsolkit.get_method("cam")(model),
               "fcam": wsolkit.get_method("fcam")(model, **options)}

    def forward() -> None:
        with torch.inference_mode():
            model.module(images)

    runs = {"forward": forward}
    runs.update({name: (lambda m=method: m(images)) for name, method in methods.items()})
    for run in runs.values():  # warm-up
        run()
    ratios: dict[str, list[float]] = {name: [] for name in methods}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            began = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - began)
        for name in methods:
            ratios[name].append(seconds[name][-1] / seconds["forward"][-1])
    result = {
        "batch_size": args.batch_size, "threads": args.threads, "repeats": args.repeats,
        "decoder": args.decoder or "shipped", "machine": platform.machine(),
        "torch": torch.__version__,
        "forward_ms_per_image": round(1000 * statistics.median(seconds["forward"])
                                      / args.batch_size, 2),
        "ratio": {name: round(statistics.median(v), 3) for name, v in ratios.items()},
        "target": TARGET,
    }
    result["target_met"] = result["ratio"]["fcam"] <= TARGET
    print("| run | ratio to a forward pass |\n|---|---:|")
    for name, value in result["ratio"].items():
        print(f"| {name} | {value:.2f}x |")
    print(f"forward pass: {result['forward_ms_per_image']} ms per image; fcam target <= "
          f"{TARGET}x met: {result['target_met']}")
    if args.json is not None:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
