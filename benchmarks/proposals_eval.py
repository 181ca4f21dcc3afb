"""Recall of objectness proposals vs. OpenCV selective search on imagenet-dev and coco-mini.

Run (from the repository root; about 40 min on 2 busy CPU cores for both full sets):

    python benchmarks/proposals_eval.py [--data ../shared/data]
        [--datasets imagenet-dev,coco-mini] [--limit N] [--top-k 1000] [--threads 2]
        [--plot benchmarks/results/proposals_recall.png] [--json PATH]

What it measures, per dataset (imagenet-dev: every box of ``localization.txt``; coco-mini:
every non-crowd box of ``instances.json``, crowd boxes ignored):

- **objectness**: ``wsolkit.apps.proposals.propose(model, image, top_k)`` with the default
  :class:`ProposalSettings` (embedded EfficientNet-Lite0, ``objectness`` at
  ``features.head``; views full image at 224 and 448 plus 4 corner crops, 10 thresholds, score
  = mean heat x area fraction ** 0.5, NMS 0.8) -- the code behind ``wsolkit proposals``;
- **selective search**: ``cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()``,
  ``switchToSelectiveSearchFast()``, on the image at its file size, first ``top_k`` boxes in
  OpenCV's order (``wsolkit.apps.proposals.selective_search``).

Both get every image of the set (or the first ``--limit``). Recall at IoU 0.5 / 0.7 / 0.9 vs.
the number of proposals (1, 2, 5, ..., 1000; :class:`wsolkit.eval.proposals.ProposalRecall`,
pooled over GT boxes), the mean number of proposals per image and the seconds per image
(wall clock, one image at a time, ``--threads`` torch threads; OpenCV uses its own threads).
Prints markdown tables, writes one PNG (recall vs. proposals, one panel per IoU, both methods
and datasets) and with ``--json`` every number.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from harness import add_common_arguments, write_json

import wsolkit
from wsolkit.apps.proposals import ProposalSettings, propose, selective_search
from wsolkit.data import CocoDataset, WSOLMetadataDataset
from wsolkit.data.images import load_image
from wsolkit.eval.proposals import DEFAULT_COUNTS, ProposalRecall

METHODS = ("objectness", "selective search")


def open_set(data: Path, name: str):
    if name == "coco-mini":
        return CocoDataset(data / name / "instances.json")
    if name == "imagenet-dev":
        return WSOLMetadataDataset(data / name)
    raise SystemExit(f"unknown dataset {name}")


def run(model, dataset, limit, top_k, settings) -> dict:
    metrics = {m: ProposalRecall() for m in METHODS}
    seconds = {m: 0.0 for m in METHODS}
    counts = {m: 0 for m in METHODS}
    total = min(len(dataset), limit or len(dataset))
    for index in range(total):
        sample = dataset[index]
        image = load_image(sample.path)
        for method in METHODS:
            start = time.perf_counter()
            with torch.inference_mode():
                if method == "objectness":
                    boxes, _ = propose(model, image, top_k=top_k, settings=settings)
                else:
                    boxes, _ = selective_search(image, top_k=top_k)
            seconds[method] += time.perf_counter() - start
            counts[method] += len(boxes)
            metrics[method].update(boxes, sample.boxes, sample.box_ignore)
        if index % 50 == 0:
            print(f"  {index}/{total}", flush=True)
    return {method: {**metrics[method].compute(), "seconds_per_image": seconds[method] / total,
                     "mean_proposals": counts[method] / total} for method in METHODS}


def table(results: dict) -> str:
    counts = list(DEFAULT_COUNTS)
    lines = ["| dataset | method | IoU | " + " | ".join(f"@{c}" for c in counts)
             + " | proposals/img | s/img |",
             "|---|---|---:|" + "---:|" * len(counts) + "---:|---:|"]
    for name, methods in results.items():
        for method, r in methods.items():
            for iou, row in r["recall"].items():
                cells = " | ".join(f"{100 * v:.1f}" for v in row)
                lines.append(f"| {name} | {method} | {iou} | {cells} | "
                             f"{r['mean_proposals']:.0f} | {r['seconds_per_image']:.2f} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ious = list(next(iter(next(iter(results.values())).values()))["recall"])
    figure, axes = plt.subplots(1, len(ious), figsize=(5 * len(ious), 4), sharey=True)
    colors = {"objectness": "#d62728", "selective search": "#1f77b4"}
    styles = ["-", "--", ":"]
    for axis, iou in zip(np.atleast_1d(axes), ious, strict=True):
        for k, (name, methods) in enumerate(results.items()):
            for method, r in methods.items():
                axis.plot(r["counts"], np.asarray(r["recall"][iou]) * 100, styles[k % 3],
                          color=colors[method], marker="o", markersize=3,
                          label=f"{method}, {name}")
        axis.set_xscale("log")
        axis.set_xlabel("number of proposals")
        axis.set_title(f"IoU >= {iou}")
        axis.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("recall (%)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, threads=2, per_dataset=True)
    parser.add_argument("--datasets", default="imagenet-dev,coco-mini")
    parser.add_argument("--top-k", type=int, default=1000)
    parser.add_argument("--plot", type=Path,
                        default=Path("benchmarks/results/proposals_recall.png"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = wsolkit.load_model()
    settings = ProposalSettings(top_k=args.top_k)
    results = {}
    for name in args.datasets.split(","):
        print(f"{name}:", flush=True)
        results[name] = run(model, open_set(args.data, name), args.limit, args.top_k, settings)
    print(f"\ntorch {torch.__version__}, {platform.machine()}, {args.threads} threads, "
          f"top_k {args.top_k}, limit {args.limit or 'all'}\n\n{table(results)}")
    plot(results, args.plot)
    print(f"\nplot: {args.plot}")
    if args.json:
        write_json(args.json, {"settings": settings.__dict__, "results": results},
                   newline=False, default=list)


if __name__ == "__main__":
    main()
