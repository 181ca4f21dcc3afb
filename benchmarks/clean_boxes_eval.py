"""Measure annotation cleaning (`wsolkit clean-boxes`) by corrupting real ground-truth boxes.

Run (from the repository root; about 30 min for both sets on 2 busy CPU cores):

    python benchmarks/clean_boxes_eval.py [--data ../shared/data]
        [--datasets coco-mini,imagenet-dev] [--limit N] [--seed 0] [--scorings crop,image]
        [--threads 2] [--json PATH]

What it does, per dataset (coco-mini: every non-crowd box of ``instances.json``; imagenet-dev:
every box of ``localization.txt``):

1. **Corruption** (seeded, ``numpy.random.default_rng(seed)``): every true box is enlarged by a
   linear factor drawn from U(1.2, 1.6) about its centre, its centre shifted by U(-0.15, 0.15)
   of its width and height, and clipped to the image. For each true box, with probability 0.25,
   one **false box** is added: the size of a random true box of the image times U(0.3, 1.0)
   (at least 16 px a side), placed uniformly at random, kept only if its IoU with every GT box
   (crowd included) and every other false box is <= 0.1 (100 tries, else none).
2. The corrupted boxes are written to a temporary COCO JSON and cleaned with the library's own
   path (``read_annotations`` + ``clean_annotations``, the code behind ``wsolkit clean-boxes``)
   with the default settings (threshold ``auto``), for each ``--scorings`` mode.
3. **Numbers**: precision and recall of the removed (flagged) boxes as detections of the false
   boxes; how many true boxes were removed; mean IoU of the kept true boxes with their
   uncorrupted box before (corrupted box) and after tightening; the AUC of the score for
   telling true from false boxes (threshold-free); seconds.
4. The same on the **clean** GT (no corruption, no false boxes): what cleaning does to good
   annotations (boxes removed, IoU with themselves after tightening).

Prints a markdown table; ``--json`` also writes every number.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from harness import add_common_arguments, write_json

import wsolkit
from wsolkit.apps.annotation_io import read_annotations
from wsolkit.apps.clean_boxes import CleanSettings, clean_annotations
from wsolkit.data import CocoDataset, WSOLMetadataDataset
from wsolkit.eval.detection import box_iou

ENLARGE = (1.2, 1.6)
SHIFT = 0.15
FALSE_RATIO = 0.25
FALSE_IOU = 0.1
TRIES = 100
MIN_FALSE_SIDE = 16.0


def load_gt(data: Path, name: str, limit: int | None) -> list[dict]:
    """Images with their true (non-crowd) boxes and all GT boxes, as plain dicts."""
    if name == "coco-mini":
        dataset = CocoDataset(data / name / "instances.json")
    elif name == "imagenet-dev":
        dataset = WSOLMetadataDataset(data / name)
    else:
        raise SystemExit(f"unknown dataset {name}")
    images = []
    for index in range(min(len(dataset), limit or len(dataset))):
        sample = dataset[index]
        true = sample.boxes[~sample.box_ignore].astype(np.float64)
        if not len(true):
            continue
        images.append({"path": Path(sample.path), "size": tuple(sample.size),
                       "true": true, "all_gt": sample.boxes.astype(np.float64)})
    return images


def corrupt(image: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Enlarged and shifted copies of the true boxes, and false boxes on background."""
    width, height = image["size"]
    true = image["true"]
    count = len(true)
    w, h = true[:, 2] - true[:, 0], true[:, 3] - true[:, 1]
    factor = rng.uniform(*ENLARGE, size=count)
    cx = (true[:, 0] + true[:, 2]) / 2 + rng.uniform(-SHIFT, SHIFT, count) * w
    cy = (true[:, 1] + true[:, 3]) / 2 + rng.uniform(-SHIFT, SHIFT, count) * h
    bad = np.stack([cx - w * factor / 2, cy - h * factor / 2,
                    cx + w * factor / 2, cy + h * factor / 2], axis=1)
    bad[:, 0::2] = bad[:, 0::2].clip(0, width)
    bad[:, 1::2] = bad[:, 1::2].clip(0, height)
    false: list[np.ndarray] = []
    for _ in range(rng.binomial(count, FALSE_RATIO)):
        for _ in range(TRIES):
            j = rng.integers(count)
            scale = rng.uniform(0.3, 1.0)
            bw = min(width, max(MIN_FALSE_SIDE, w[j] * scale))
            bh = min(height, max(MIN_FALSE_SIDE, h[j] * scale))
            x0, y0 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
            box = np.array([[x0, y0, x0 + bw, y0 + bh]])
            others = np.concatenate([image["all_gt"], np.array(false).reshape(-1, 4)])
            if box_iou(box, others).max(initial=0.0) <= FALSE_IOU:
                false.append(box[0])
                break
    return bad, np.array(false, np.float64).reshape(-1, 4)


def write_coco(images: list[dict], boxes: list[tuple[int, np.ndarray]], path: Path) -> None:
    """A COCO file of ``(image index, box)`` pairs; annotation id = position + 1."""
    data = {
        "images": [{"id": i + 1, "file_name": image["path"].name, "width": image["size"][0],
                    "height": image["size"][1]} for i, image in enumerate(images)],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": [
            {"id": k + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
             "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]),
                      float(box[3] - box[1])], "area": float((box[2] - box[0]) * (box[3] - box[1]))}
            for k, (i, box) in enumerate(boxes)
        ],
    }
    path.write_text(json.dumps(data))


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a true box > score of a false box), ties count half."""
    if not len(positive) or not len(negative):
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).mean()
    equal = (positive[:, None] == negative[None, :]).mean()
    return float(greater + equal / 2)


def run_cleaning(model, images, boxes, settings, folder: Path):
    """Clean a COCO file of ``boxes``; returns (entries in annotation order, threshold, s)."""
    source = folder / "input.json"
    write_coco(images, boxes, source)
    annotations = read_annotations(source, image_dir=images[0]["path"].parent)
    start = time.perf_counter()
    result = clean_annotations(model, annotations, folder / "out", settings)
    return result.annotations.boxes, result.threshold, time.perf_counter() - start


def evaluate(model, images, rng, settings, clean: bool) -> dict:
    """One cleaning run and its numbers."""
    boxes: list[tuple[int, np.ndarray]] = []
    truth: list[np.ndarray | None] = []
    for i, image in enumerate(images):
        if clean:
            bad, false = image["true"], np.zeros((0, 4))
        else:
            bad, false = corrupt(image, rng)
        boxes += [(i, box) for box in bad] + [(i, box) for box in false]
        truth += list(image["true"]) + [None] * len(false)
    with tempfile.TemporaryDirectory() as temp:
        entries, threshold, seconds = run_cleaning(model, images, boxes, settings, Path(temp))
    is_false = np.array([t is None for t in truth])
    removed = np.array([e.action in ("flagged", "dropped") for e in entries])
    scores = np.array([e.score for e in entries])
    hits = int((removed & is_false).sum())
    before, after = [], []
    for entry, (_, box), true in zip(entries, boxes, truth, strict=True):
        if true is None or entry.action in ("flagged", "dropped", "skipped"):
            continue
        new = entry.new_box if entry.new_box is not None else box
        before.append(box_iou(box[None], true[None])[0, 0])
        after.append(box_iou(np.asarray(new)[None], true[None])[0, 0])
    return {
        "images": len(images),
        "true_boxes": int((~is_false).sum()),
        "false_boxes": int(is_false.sum()),
        "skipped": int(sum(e.action == "skipped" for e in entries)),
        "removed": int(removed.sum()),
        "precision": hits / int(removed.sum()) if removed.any() and is_false.any()
        else float("nan"),
        "recall": hits / int(is_false.sum()) if is_false.any() else float("nan"),
        "true_removed": int((removed & ~is_false).sum()),
        "threshold": threshold,
        "auc": auc(scores[~is_false], scores[is_false]),
        "miou_before": float(np.mean(before)) if before else float("nan"),
        "miou_after": float(np.mean(after)) if after else float("nan"),
        "tightened": int(sum(e.action == "tightened" for e in entries)),
        "seconds": seconds,
    }


def fmt(value: float, percent: bool = False) -> str:
    if value != value:  # NaN
        return "-"
    return f"{100 * value:.1f}" if percent else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser, threads=2, per_dataset=True)
    parser.add_argument("--datasets", default="coco-mini,imagenet-dev")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scorings", default="crop,image",
                        help="comma-separated scoring modes to run on the corrupted boxes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = wsolkit.load_model()
    rows = []
    for name in args.datasets.split(","):
        images = load_gt(args.data, name, args.limit)
        for scoring in args.scorings.split(","):
            settings = CleanSettings(scoring=scoring)
            numbers = evaluate(model, images, np.random.default_rng(args.seed), settings, False)
            rows.append({"dataset": name, "boxes": "corrupted", "scoring": scoring, **numbers})
            print(json.dumps(rows[-1]), flush=True)
        settings = CleanSettings()
        numbers = evaluate(model, images, np.random.default_rng(args.seed), settings, True)
        rows.append({"dataset": name, "boxes": "clean GT", "scoring": settings.scoring, **numbers})
        print(json.dumps(rows[-1]), flush=True)
    header = ("| dataset | boxes | scoring | true / false boxes | threshold | removed | "
              "precision | recall | true removed | AUC | mIoU before | mIoU after | s |")
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['boxes']} | {r['scoring']} | {r['true_boxes']} / "
            f"{r['false_boxes']} | {r['threshold']:.3f} | {r['removed']} | "
            f"{fmt(r['precision'], True)} | {fmt(r['recall'], True)} | {r['true_removed']} | "
            f"{fmt(r['auc'])} | {fmt(r['miou_before'])} | {fmt(r['miou_after'])} | "
            f"{r['seconds']:.0f} |")
    table = "\n".join(lines)
    print(f"\ntorch {torch.__version__}, {platform.machine()}, {args.threads} threads, "
          f"seed {args.seed}\n\n{table}")
    if args.json:
        write_json(args.json, {"rows": rows, "seed": args.seed}, newline=False)


if __name__ == "__main__":
    main()
