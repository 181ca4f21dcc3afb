"""Mean IoU of heatmap-seeded GrabCut on the shared mask sets, next to its baselines.

Whole-image foreground segmentation on davis (``wsolkit.apps.segment``):

- thresholded heatmap: ``PixelMetrics`` mIoU at the best single threshold over the set;
- MASON's rule (``--rule paper``) + GrabCut;
- the default robust rule + GrabCut (``SegmentSettings()``), and with ``--grid`` a small grid.

MASON's own pipeline on davis (``davis-paper``, :func:`paper_rows`): ``SegmentSettings.paper()``
(the frame at its own size through the network, bicubic, 0..255, the paper's rule, full-size
GrabCut iterated to convergence) beside the same rule on the ported pipeline and our default;
``--grid`` adds the paper's pipeline steps one at a time on top of our default.

Box-to-mask on coco-mval and on davis (``wsolkit.apps.instances``), box = tight box of the GT
mask (``mask_box``), scored with ``BoxMaskIoU`` (the 128 "unknown" band ignored):

- plain GrabCut from the box (``grabcut_box``: 5% margin, 5 iterations, whole image);
- the paper's seeding (crop heatmap, MASON's rule inside the box, full resolution);
- the default (``InstanceSettings()``), and with ``--grid`` its ablations.

    python benchmarks/segmentation_eval.py davis
    python benchmarks/segmentation_eval.py davis-paper --grid \
        --json benchmarks/results/segmentation_davis_paper.json
    python benchmarks/segmentation_eval.py davis-seeds \
        --json benchmarks/results/segmentation_davis_seeds.json
    python benchmarks/segmentation_eval.py coco-mval
    python benchmarks/segmentation_eval.py boxes --grid --jobs 6 \
        --json benchmarks/results/segmentation_boxes.json    # coco-mval and davis-boxes
    python benchmarks/segmentation_eval.py all --grid --json benchmarks/results/segmentation.json

``--write-boxes FILE`` only writes the coco-mval boxes used here (the tight box of each GT
mask) as COCO detections whose ``image_id`` is the file stem, for the command-line route:

    python benchmarks/segmentation_eval.py coco-mval --write-boxes out/coco-mval-boxes.json
    wsolkit instances ../shared/data/coco-mval/images --boxes out/coco-mval-boxes.json \
        --out out/coco-mval-masks.json --save-maps out/coco-mval-maps
    wsolkit evaluate ../shared/data/coco-mval --maps out/coco-mval-maps --out out/eval-coco-mval

Prints markdown tables (mean IoU in %, seconds per image or box on this machine; speed proper
is measured by ``benchmarks/instances_speed.py``). Scores are deterministic (GrabCut's k-means
is seeded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsolkit.apps.instances import CropHeatmaps, InstanceSettings, instance_masks  # noqa: E402
from wsolkit.apps.segment import SegmentSettings, image_heatmaps, segment_heatmap  # noqa: E402
from wsolkit.data import MaskFolderDataset, load_image, mask_box  # noqa: E402
from wsolkit.eval import BoxMaskIoU, PixelMetrics  # noqa: E402
from wsolkit.maps import get_method  # noqa: E402
from wsolkit.models import load_model  # noqa: E402
from wsolkit.refine import resize_map  # noqa: E402
from wsolkit.refine.grabcut import grabcut_box  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def davis_rows(data: Path, limit: int | None, grid: bool) -> list[dict]:
    dataset = MaskFolderDataset(data)
    samples = list(dataset)[:limit]
    model = load_model()
    method = get_method("objectness")(model)
    images, maps, truths = [], [], []
    for sample in samples:
        image = load_image(sample.path)
        images.append(np.asarray(image))
        maps.append(method(model.preprocess_batch([image])).maps[0].numpy())
        truths.append(sample.load_mask())

    rows = []
    pixel = PixelMetrics()
    for heat, (fg, ignore) in zip(maps, truths, strict=True):
        pixel.update(resize_map(heat, fg.shape), fg, ignore)
    found = pixel.compute()
    rows.append({"setting": f"thresholded heatmap (best threshold {found['best_threshold']:.2f})",
                 "mIoU": found["mIoU"], "seconds": None})

    default = SegmentSettings()
    configs = [("paper rule (MASON) + GrabCut", replace(default, rule="paper", crf=False,
                                                        border=0.0)),
               (f"default: {_describe(default)}", default)]
    if grid:
        configs += [
            ("quantile alone (no CRF, no border)", replace(default, crf=False, border=0.0)),
            ("no CRF", replace(default, crf=False)),
            ("no border", replace(default, border=0.0)),
            (None, replace(default, fg=0.9, split=0.6, bg=0.2)),
            (None, replace(default, fg=0.98)),
            (None, replace(default, bg=0.6)),
            (None, replace(default, bg=0.8)),
            (None, replace(default, split=0.8)),
            (None, replace(default, border=0.05)),
            (None, replace(default, rule="otsu", fg=0.5, bg=0.5)),
            (None, replace(default, max_side=192)),
            (None, replace(default, max_side=320)),
        ]
    for name, settings in configs:
        metric = BoxMaskIoU()
        start = time.perf_counter()
        for image, heat, (fg, ignore) in zip(images, maps, truths, strict=True):
            mask, _ = segment_heatmap(image, heat, settings)
            metric.update(mask, fg, ignore)
        seconds = (time.perf_counter() - start) / len(images)
        rows.append({"setting": name or _describe(settings), "mIoU": metric.compute()["mIoU"],
                     "seconds": seconds})
        print(_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


SEED_METHODS = ("objectness", "bagcams", "layercam", "fcam")
"""Heatmap methods compared as GrabCut seeds in the ``davis-seeds`` set."""


def seed_rows(data: Path, limit: int | None) -> list[dict]:
    """Whole-image davis: each method's heatmap, thresholded and as seeds of the default."""
    samples = list(MaskFolderDataset(data))[:limit]
    model = load_model()
    images = [load_image(sample.path) for sample in samples]
    truths = [sample.load_mask() for sample in samples]
    rows = []
    for name in SEED_METHODS:
        method = get_method(name)(model)
        maps = [method(model.preprocess_batch([image])).maps[0].numpy() for image in images]
        pixel = PixelMetrics()
        for heat, (fg, ignore) in zip(maps, truths, strict=True):
            pixel.update(resize_map(heat, fg.shape), fg, ignore)
        found = pixel.compute()
        rows.append({"setting": f"{name}: thresholded heatmap (best threshold "
                                f"{found['best_threshold']:.2f})",
                     "mIoU": found["mIoU"], "seconds": None})
        print(_row(rows[-1]), file=sys.stderr, flush=True)
        settings = replace(SegmentSettings(), method=name)
        metric = BoxMaskIoU()
        start = time.perf_counter()
        for image, heat, (fg, ignore) in zip(images, maps, truths, strict=True):
            mask, _ = segment_heatmap(np.asarray(image), heat, settings)
            metric.update(mask, fg, ignore)
        rows.append({"setting": f"{name}: seeds of the default pipeline ({_describe(settings)})",
                     "mIoU": metric.compute()["mIoU"],
                     "seconds": (time.perf_counter() - start) / len(images)})
        print(_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def paper_rows(data: Path, limit: int | None, grid: bool) -> list[dict]:
    """Whole-image davis: MASON's pipeline (``SegmentSettings.paper()``) beside ours."""
    samples = list(MaskFolderDataset(data))[:limit]
    model = load_model()
    images = [load_image(sample.path) for sample in samples]
    truths = [sample.load_mask() for sample in samples]
    cache: dict[tuple[str, str], list[np.ndarray]] = {}

    def heatmaps(settings: SegmentSettings) -> list[np.ndarray]:
        key = (settings.network_size, settings.upsample)
        if key not in cache:
            method = get_method("objectness")(model, upsample=settings.upsample)
            cache[key] = [image_heatmaps(method, [image], settings)[0][0] for image in images]
        return cache[key]

    default = SegmentSettings()
    paper = SegmentSettings.paper()
    configs = [
        ("MASON's pipeline (`--preset paper`): full-size network input, bicubic, 0..255, "
         "paper rule (mean of all pixels), full-size GrabCut to convergence (cap 20)", paper),
        ("MASON's pipeline, mean of the nonzero pixels", replace(paper, mean="nonzero")),
        ("paper rule on the ported pipeline (224 input, bilinear, [0, 1] map, 256 px, "
         "5 iterations)", replace(default, rule="paper", crf=False, border=0.0)),
        (f"default: {_describe(default)}", default),
    ]
    if grid:
        configs += [
            ("default + full-size network input, bicubic",
             replace(default, network_size="full", upsample="bicubic")),
            ("default + GrabCut to convergence (cap 20)",
             replace(default, converge=True, iterations=20)),
        ]
    rows = []
    for name, settings in configs:
        metric = BoxMaskIoU()
        maps = heatmaps(settings)
        start = time.perf_counter()
        for image, heat, (fg, ignore) in zip(images, maps, truths, strict=True):
            mask, _ = segment_heatmap(np.asarray(image), heat, settings)
            metric.update(mask, fg, ignore)
        seconds = (time.perf_counter() - start) / len(images)
        rows.append({"setting": name, "mIoU": metric.compute()["mIoU"], "seconds": seconds})
        print(_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


_ITEMS: dict[tuple[str, int | None], list] = {}


def _box_items(data: Path, limit: int | None) -> list:
    """(image, tight GT box, fg, ignore) of a mask folder, read once per process."""
    key = (str(data), limit)
    if key not in _ITEMS:
        items = []
        for sample in list(MaskFolderDataset(data))[:limit]:
            fg, ignore = sample.load_mask()
            items.append((np.asarray(load_image(sample.path)), mask_box(fg)[0], fg, ignore))
        _ITEMS[key] = items
    return _ITEMS[key]


def _box_row(task: tuple) -> dict:
    """Score one setting (None: plain GrabCut) on one box-to-mask set; runs in a worker."""
    data, limit, name, settings, threads = task
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    items = _box_items(data, limit)
    metric = BoxMaskIoU()
    if settings is None:
        start = time.perf_counter()
        for image, box, fg, ignore in items:
            metric.update(grabcut_box(image, box, margin=0.05, iterations=5), fg, ignore)
    else:
        heatmaps = CropHeatmaps(load_model(), settings)
        start = time.perf_counter()
        for image, box, fg, ignore in items:
            masks, _ = instance_masks(image, box[None], heatmaps, settings)
            metric.update(masks[0], fg, ignore)
    row = {"setting": name or _describe(settings), "mIoU": metric.compute()["mIoU"],
           "seconds": (time.perf_counter() - start) / len(items)}
    print(_row(row), file=sys.stderr, flush=True)
    return row


def box_configs(grid: bool, baselines: bool) -> list[tuple[str | None, InstanceSettings | None]]:
    """(name, settings) rows of the box-to-mask table; settings None is plain GrabCut."""
    default = InstanceSettings()
    configs: list[tuple[str | None, InstanceSettings | None]] = []
    if baselines:
        configs.append(("plain GrabCut from the box (5% margin, 5 iterations)", None))
        configs.append(("paper's seeding: heatmap, MASON's rule in the box (5% margin), full "
                        "resolution",
                        replace(default, rule="paper", prior_sigma=None, max_side=None,
                                margin=0.05)))
    configs.append((f"default: {_describe(default)}", default))
    if grid:
        configs += [
            ("previous default (tuned on coco-mval alone)", replace(default, fg=0.7, max_side=160)),
            ("heatmap alone (no box prior)", replace(default, prior_sigma=None)),
            ("box prior alone (heat_power 0)", replace(default, heat_power=0.0)),
            (None, replace(default, heat_power=1.0)),
            (None, replace(default, fg=None)),
            (None, replace(default, fg=0.7)),
            (None, replace(default, fg=0.95)),
            (None, replace(default, max_side=160)),
            (None, replace(default, max_side=320)),
            (None, replace(default, fg=None, max_side=320)),
        ]
    return configs


def box_rows(folders: dict[str, Path], limit: int | None, grid: bool, baselines: bool,
             threads: int, jobs: int) -> dict[str, list[dict]]:
    """Box-to-mask rows per set (coco-mval, davis-boxes): the box is each GT mask's tight box.

    With ``jobs > 1`` the (set, setting) rows run in that many worker processes; the scores do
    not depend on it (GrabCut's k-means is seeded), the seconds per box do (shared cores).
    """
    configs = box_configs(grid, baselines)
    tasks = [(folder, limit, name, settings, threads)
             for folder in folders.values() for name, settings in configs]
    if jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            rows = pool.map(_box_row, tasks, chunksize=1)
    else:
        rows = [_box_row(task) for task in tasks]
    return {name: rows[k * len(configs):(k + 1) * len(configs)]
            for k, name in enumerate(folders)}


def write_boxes(data: Path, out: Path) -> int:
    """Write the tight box of every GT mask of a mask folder as COCO detections; count them."""
    entries = []
    for sample in MaskFolderDataset(data):
        fg, _ = sample.load_mask()
        boxes = mask_box(fg)
        if len(boxes):
            x0, y0, x1, y1 = (float(v) for v in boxes[0])
            entries.append({"image_id": sample.image_id, "category_id": 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": 1.0})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(entries) + "\n")
    return len(entries)


def _describe(settings: SegmentSettings | InstanceSettings) -> str:
    parts = [f"rule {settings.rule}"]
    if settings.rule == "quantile":
        parts.append(f"fg {settings.fg} split {settings.split} bg {settings.bg}")
    elif settings.rule == "otsu":
        parts.append(f"fg {settings.fg} bg {settings.bg}")
    if isinstance(settings, InstanceSettings):
        prior = "none" if settings.prior_sigma is None else f"{settings.prior_sigma:.3g}"
        parts.append(f"prior sigma {prior} heat power {settings.heat_power:g} "
                     f"margin {settings.margin:g} context {settings.context:g}")
    else:
        if settings.border:
            parts.append(f"border {settings.border:g}")
        if settings.crf:
            parts.append("crf")
    parts.append(f"max side {settings.max_side}")
    if settings.iterations != 5:
        parts.append(f"{settings.iterations} iterations")
    return ", ".join(parts)


def _row(row: dict) -> str:
    seconds = "-" if row["seconds"] is None else f"{row['seconds']:.3f}"
    return f"| {row['setting']} | {row['mIoU']:.1f} | {seconds} |"


def _table(title: str, unit: str, rows: list[dict]) -> str:
    lines = [f"### {title}", "", f"| setting | mean IoU (%) | s / {unit} |", "|---|---:|---:|"]
    return "\n".join(lines + [_row(row) for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=["davis", "davis-paper", "davis-seeds", "coco-mval",
                                        "davis-boxes", "boxes", "all"],
                        help="davis: whole-image foreground; davis-paper: MASON's pipeline "
                             "there; davis-seeds: methods as seeds; coco-mval, davis-boxes: "
                             "box-to-mask (the tight box of each "
                             "GT mask); boxes: both box-to-mask sets")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the sets")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--grid", action="store_true", help="also the option grid / ablations")
    parser.add_argument("--no-baselines", action="store_true",
                        help="box-to-mask: skip plain GrabCut and the paper's seeding (slow)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch / OpenCV threads (the scores do not depend on it; on a busy "
                             "machine 1 avoids OpenMP spin-waiting)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="box-to-mask: score the (set, setting) rows in this many processes")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--write-boxes", type=Path, default=None, metavar="FILE",
                        help="coco-mval: only write its GT-mask boxes as COCO detections")
    args = parser.parse_args()
    if args.write_boxes is not None:
        count = write_boxes(args.data / "coco-mval", args.write_boxes)
        print(f"{count} boxes written to {args.write_boxes}")
        return
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    out = {}
    if args.set in ("davis", "all"):
        out["davis"] = davis_rows(args.data / "davis", args.limit, args.grid)
        print(_table(f"davis ({args.limit or 'all'} images)", "image", out["davis"]))
    if args.set == "davis-seeds":
        out["davis-seeds"] = seed_rows(args.data / "davis", args.limit)
        print(_table(f"davis, seed methods ({args.limit or 'all'} images)", "image",
                     out["davis-seeds"]))
    if args.set == "davis-paper":
        out["davis-paper"] = paper_rows(args.data / "davis", args.limit, args.grid)
        print(_table(f"davis, MASON's pipeline ({args.limit or 'all'} images)", "image",
                     out["davis-paper"]))
    folders = {name: args.data / name.removesuffix("-boxes")
               for name in ("coco-mval", "davis-boxes") if args.set in (name, "boxes", "all")}
    if folders:
        tables = box_rows(folders, args.limit, args.grid, not args.no_baselines, args.threads,
                          args.jobs)
        for name, rows in tables.items():
            out[name] = rows
            print(_table(f"{name} ({args.limit or 'all'} boxes)", "box", rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
