"""Eigen-CAM / PC1, BagCAMs and layer fusion on the dev sets, each at its best layer.

Run (from the repository root; about an hour on 1 thread of a busy 2-core machine):

    python benchmarks/reach_eval.py [--data DIR] [--threads 1] [--limit N]
                                    [--json benchmarks/results/reach.json]

What it does, with the embedded EfficientNet-Lite0 and ``wsolkit.apps.evaluate.evaluate``
(the same code as ``wsolkit evaluate``: maps resized from the raw layer map to 224x224,
thresholds 0..1 step 0.01, target ``auto``: the GT class on imagenet-dev, top-1 on davis):

1. **Layer search** on ``imagenet-dev`` (whole set, never per image): each new method at each
   stage of the model (``LAYERS``) and at the fused pairs of ``FUSED``; the best layer (or
   fused pair) is the one with the highest MaxBoxAccV2 (ties: the earlier one).
2. **Results** at that layer: imagenet-dev MaxBoxAcc, MaxBoxAccV2, top-1 loc; davis PxAP,
   F ODS / OIS, MAE; beside CAM, Grad-CAM and LayerCAM at their default layer
   (``features.head``) run the same way in the same script, and LayerCAM fused over
   ``features.stage5,features.head`` (fusion of an existing method).
3. **Speed**: on a seeded random batch, each row's time per image over a plain forward pass's
   in the same repeat (median of ``--repeats``), at ``--threads`` threads.

Prints markdown tables and writes everything (per-layer search numbers, results, speed ratios)
as JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from harness import BOX_KEYS, PIXEL_KEYS, add_common_arguments, evaluate_numbers, timed, write_json

import wsolkit
from wsolkit.data import open_dataset

LAYERS = ("features.stage3", "features.stage4", "features.stage5", "features.stage6",
          "features.stage7", "features.head")
FUSED = ("features.stage5,features.head",)
NEW_METHODS = ("eigencam", "bagcams")
# Existing methods at their default layer (None) and one fused run, for the comparison rows.
REFERENCE_ROWS = (("cam", None), ("gradcam", None), ("layercam", None),
                  ("layercam", "features.stage5,features.head"))


def scores(dataset, model, method: str, layer: str | None, limit: int | None,
           options: dict | None = None) -> dict:
    result, numbers = evaluate_numbers(dataset, model, method, layer, limit, options)
    if result.failures:
        raise SystemExit(f"{method} at {layer}: {len(result.failures)} images failed: "
                         f"{result.failures[:2]}")
    return numbers


def search(imagenet, model, limit: int | None) -> dict:
    found = {}
    for method in NEW_METHODS:
        rows = {}
        for layer in (*LAYERS, *FUSED):
            started = time.perf_counter()
            rows[layer] = scores(imagenet, model, method, layer, limit)
            print(f"  {method:9s} {layer:48s} MaxBoxAccV2 {rows[layer]['MaxBoxAccV2']:.1f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        best = max(rows, key=lambda name: (rows[name]["MaxBoxAccV2"], -list(rows).index(name)))
        found[method] = {"layers": rows, "best": best}
    return found


def label(method: str, layer: str | None, options: dict) -> str:
    extras = "".join(f" {key}={value}" for key, value in options.items())
    return f"{method}{extras} @ {layer or 'default'}"


def speed(model, configs: list[tuple[str, str | None, dict]], repeats: int) -> dict:
    torch.manual_seed(0)
    images = torch.randn(8, 3, 224, 224)
    runners = {label(m, layer, options): wsolkit.get_method(m)(model, layer=layer, **options)
               for m, layer, options in configs}

    def forward() -> None:
        with torch.inference_mode():
            model.module(images)

    forward()
    for runner in runners.values():
        runner(images)
    ratios: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        base = timed(forward)
        for name, runner in runners.items():
            ratios[name].append(timed(lambda r=runner: r(images)) / base)
    return {name: statistics.median(values) for name, values in ratios.items()}


def table(rows: list[tuple[str, dict]], keys) -> str:
    lines = ["| method | layer | " + " | ".join(t for t, _ in keys) + " |",
             "|---|---|" + "---:|" * len(keys)]
    for name, numbers in rows:
        cells = [f"{numbers[t]:.3f}" if t in ("F ODS", "F OIS", "MAE") else f"{numbers[t]:.1f}"
                 for t, _ in keys]
        lines.append(f"| {name} | {numbers['layer']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, threads=1, repeats=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = wsolkit.load_model()
    imagenet = open_dataset(args.data / "imagenet-dev")
    davis = open_dataset(args.data / "davis")

    print("layer search on imagenet-dev (MaxBoxAccV2):", flush=True)
    found = search(imagenet, model, args.limit)
    configs = [(m, layer, {}) for m, layer in REFERENCE_ROWS]
    configs += [(m, found[m]["best"], {}) for m in NEW_METHODS]
    # the original Eigen-CAM (uncentered SVD) at PC1's layer
    configs.append(("eigencam", found["eigencam"]["best"], {"center": False}))
    results = []
    for method, layer, options in configs:
        row = {**scores(imagenet, model, method, layer, args.limit, options),
               **{k: v for k, v in scores(davis, model, method, layer, args.limit,
                                          options).items() if k != "layer"}}
        name = method + "".join(f" ({key}={value})" for key, value in options.items())
        results.append((name, row))
        print(f"  {name} @ {row['layer']}: {row}", flush=True)
    ratios = speed(model, configs, args.repeats)

    print("\nimagenet-dev (boxes) and davis (masks):\n")
    print(table(results, BOX_KEYS + PIXEL_KEYS))
    print(f"\nspeed, ratio to a forward pass ({args.threads} thread(s), batch 8, median of "
          f"{args.repeats}):\n")
    for name, ratio in ratios.items():
        print(f"- {name}: {ratio:.2f}x")
    if args.json:
        payload = {
            "command": "python benchmarks/reach_eval.py",
            "torch": torch.__version__, "machine": platform.machine(), "threads": args.threads,
            "limit": args.limit, "search": found,
            "results": [{"method": m, **row} for m, row in results],
            "speed_ratio_to_forward": ratios,
        }
        write_json(args.json, payload, indent=1)


if __name__ == "__main__":
    main()
