"""Choose the default layer of the `objectness` method for the embedded model, by measurement.

Run (from the repository root; several minutes on 2 CPU cores for all 394 images):

    python benchmarks/objectness_layer.py [--data DIR] [--layers features.stage3,...]
                                          [--limit N] [--batch-size 32] [--threads 2]
                                          [--methods] [--json PATH]

What it measures: on ``shared/data/imagenet-dev`` (the wsolevaluation metadata layout, read with
``WSOLMetadataDataset``), every image is loaded with ``load_image`` and preprocessed with
``model.preprocess_batch`` once per batch; each candidate layer ``L`` then gets
``wsolkit.heatmaps(model, x, method="objectness", layer=L)`` on that batch, and each 224x224
map ``result.maps[i]`` goes, with the image's GT boxes and file size, into one
``wsolkit.eval.BoxAccuracy`` per layer (wsolevaluation protocol: thresholds
``np.arange(0, 1, 0.01)`` on the min-max normalized map; MaxBoxAcc = largest contour at IoU 50,
MaxBoxAccV2 = all contours, mean over IoU 30/50/70). The dataset gives boxes in wsolkit edge
coordinates (``x1 = x0 + width``); they are turned back into the inclusive corners of
``localization.txt`` that ``BoxAccuracy`` takes.

Prints a markdown table ``layer | resolution | channels | MaxBoxAcc | MaxBoxAccV2 |
best threshold`` and the line ``best layer by MaxBoxAccV2: <layer>`` (the chosen default,
``EFFICIENTNET_LITE0_OBJECTNESS_LAYER`` in ``wsolkit/models/loading.py``). Ties keep the
earlier layer of ``--layers``.

With ``--methods`` it also prints a second table for choosing the box threshold of
``wsolkit localize``: ``gradcam`` and ``cam`` at their default layer with target ``top1``, their
MaxBoxAcc, its best threshold, and the box accuracy at the current default (fraction of max
0.3). BoxAccuracy's threshold is on the min-max normalized map; it equals a fraction of the max
only where the map's minimum is 0. ``wsolkit.heatmaps`` already min-max normalizes every map, so
that holds for every non-constant map; the script counts the maps with a nonzero minimum and
prints the count. Two small differences from ``wsolkit localize`` remain: BoxAccuracy binarizes
the uint8 map strictly above ``int(t * max)`` and uses the 224x224 map, while localize keeps
pixels ``>= t * max`` of the map resized to the image size.

Tune on imagenet-dev as a whole, never on single images (shared/data/README.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

import wsolkit
from wsolkit.data.images import load_image
from wsolkit.data.wsol_metadata import WSOLMetadataDataset
from wsolkit.eval.box_accuracy import BoxAccuracy
from wsolkit.maps.hooks import capture_layer

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/imagenet-dev"
DEFAULT_LAYERS = (
    "features.stage3",
    "features.stage4",
    "features.stage5",
    "features.stage6",
    "features.stage7",
    "features.head",
)
THRESHOLD_METHODS = ("gradcam", "cam")
CURRENT_FRACTION = 0.3  # default --threshold-value of `wsolkit localize`


def layer_shapes(model: wsolkit.Classifier, layers: list[str], sample: torch.Tensor) -> dict:
    """(channels, h, w) of each layer's output, from one forward pass of one image."""
    with ExitStack() as stack, torch.no_grad():
        captures = {name: stack.enter_context(capture_layer(model.module, name))
                    for name in layers}
        model.module(sample[:1])
    return {name: tuple(c.activation.shape[1:]) for name, c in captures.items()}


def accuracy_at(summary: dict, threshold: float) -> float:
    """MaxBoxAcc-protocol (V1) accuracy in % at the sweep threshold nearest ``threshold``."""
    index = int(np.argmin(np.abs(np.asarray(summary["thresholds"]) - threshold)))
    return float(summary["curve_v1"][index])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="wsolevaluation metadata folder (default: shared/data/imagenet-dev)")
    parser.add_argument("--layers", default=",".join(DEFAULT_LAYERS),
                        help="comma-separated candidate layers")
    parser.add_argument("--limit", type=int, help="use only the first N images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", action="store_true",
                        help="also report MaxBoxAcc and its threshold for gradcam and cam")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    dataset = WSOLMetadataDataset(args.data)
    samples = list(dataset)[: args.limit] if args.limit else list(dataset)
    model = wsolkit.load_model()

    objectness = {layer: BoxAccuracy() for layer in layers}
    methods = list(THRESHOLD_METHODS) if args.methods else []
    method_acc = {name: BoxAccuracy() for name in methods}
    method_layer: dict[str, str] = {}
    nonzero_min = dict.fromkeys(methods, 0)
    shapes: dict = {}
    start = time.perf_counter()
    for first in range(0, len(samples), args.batch_size):
        batch = samples[first:first + args.batch_size]
        x = model.preprocess_batch([load_image(sample.path) for sample in batch])
        gt_boxes = [sample.boxes for sample in batch]
        if not shapes:
            shapes = layer_shapes(model, layers, x)
        for layer in layers:
            result = wsolkit.heatmaps(model, x, method="objectness", layer=layer)
            for i, sample in enumerate(batch):
                objectness[layer].update(result.maps[i], gt_boxes[i], sample.size)
        for name in methods:
            result = wsolkit.heatmaps(model, x, method=name, target="top1")
            method_layer[name] = result.layer
            correct = (result.classes == torch.tensor([s.label for s in batch])).tolist()
            for i, sample in enumerate(batch):
                nonzero_min[name] += bool(result.maps[i].min() > 0)
                method_acc[name].update(result.maps[i], gt_boxes[i], sample.size,
                                        correct_class=correct[i])
        done = first + len(batch)
        print(f"[{done}/{len(samples)} images, {time.perf_counter() - start:.0f}s]", flush=True)

    print(f"\nobjectness layer of {model.name} on {args.data.name}: {len(samples)} images; "
          f"torch {torch.__version__}, {platform.machine()}, {args.threads} threads\n")
    print("| layer | resolution | channels | MaxBoxAcc | MaxBoxAccV2 | best threshold |")
    print("|---|---|---:|---:|---:|---:|")
    summaries = {layer: acc.compute() for layer, acc in objectness.items()}
    for layer in layers:
        s = summaries[layer]
        channels, height, width = shapes[layer]
        print(f"| {layer} | {height}x{width} | {channels} | {s['MaxBoxAcc']:.1f} "
              f"| {s['MaxBoxAccV2']:.1f} | {s['best_threshold']:.2f} |")
    best = max(layers, key=lambda layer: summaries[layer]["MaxBoxAccV2"])  # first on ties
    print(f"\nbest layer by MaxBoxAccV2: {best}")

    method_summaries = {name: acc.compute() for name, acc in method_acc.items()}
    if methods:
        print(f"\nbox threshold (target top1, default layers, {len(samples)} images)\n")
        print(f"| method | layer | MaxBoxAcc | best threshold | BoxAcc at {CURRENT_FRACTION} "
              "| MaxBoxAccV2 | top-1 loc | maps with min > 0 |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for name in methods:
            s = method_summaries[name]
            print(f"| {name} | {method_layer[name]} | {s['MaxBoxAcc']:.1f} "
                  f"| {s['best_threshold']:.2f} | {accuracy_at(s, CURRENT_FRACTION):.1f} "
                  f"| {s['MaxBoxAccV2']:.1f} | {s['top1_loc']:.1f} "
                  f"| {nonzero_min[name]}/{len(samples)} |")
        print("\nThe best threshold is on the min-max normalized map (wsolevaluation); it equals "
              "the fraction of max of `wsolkit localize --threshold fraction` only where the "
              "map's minimum is 0. wsolkit.heatmaps min-max normalizes its maps, so this holds "
              "for the maps counted with min 0 above. BoxAcc is largest contour, IoU 50.")

    if args.json:
        config = {key: str(value) if isinstance(value, Path) else value
                  for key, value in vars(args).items() if key != "json"}
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({
                "torch": torch.__version__,
                "config": config,
                "images": len(samples),
                "best_layer": best,
                "layers": {layer: {"shape": list(shapes[layer]), **summaries[layer]}
                           for layer in layers},
                "methods": {name: {"layer": method_layer[name],
                                   "maps_with_nonzero_min": nonzero_min[name],
                                   **method_summaries[name]} for name in methods},
            }, file, indent=2)


if __name__ == "__main__":
    main()
