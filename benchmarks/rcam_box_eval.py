"""rCAM inside ground-truth boxes (the paper's rCAM_Box) on coco-mval, as box-to-mask.

Each coco-mval image's box is the tight box of its GT mask (as ``segmentation_eval.py boxes``
does for ``wsolkit instances``); ``wsolkit.apps.rcam_box.rcam_boxes`` runs rCAM on the box's
crop (10% margin; the crop is the original image for scale 2) and pastes the box's map; the
mask is the map at a threshold (0 outside the box), scored with ``BoxMaskIoU`` (mean IoU in %,
the "unknown" band ignored) at each threshold of a small grid. The best threshold is picked
on coco-mval itself (optimistic for it). Baseline: the whole box as the mask. One torch
thread.

    python benchmarks/rcam_box_eval.py --json benchmarks/results/rcam_box.json
    python benchmarks/rcam_box_eval.py --configs default,paper --limit 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wsolkit.apps.rcam_box import rcam_boxes  # noqa: E402
from wsolkit.data import MaskFolderDataset, load_image, mask_box  # noqa: E402
from wsolkit.data.atomic import write_json_atomic  # noqa: E402
from wsolkit.eval import BoxMaskIoU  # noqa: E402
from wsolkit.maps.rcam import PRESETS  # noqa: E402
from wsolkit.models import load_model  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="default", help="presets, comma-separated")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model()
    samples = list(MaskFolderDataset(DATA / "coco-mval"))[:args.limit]
    results = {"images": len(samples), "thresholds": list(THRESHOLDS), "configs": {}}
    whole = BoxMaskIoU()
    for sample in samples:
        fg, ignore = sample.load_mask()
        x0, y0, x1, y1 = (int(v) for v in mask_box(fg)[0])
        box_mask = np.zeros_like(fg)
        box_mask[y0:y1, x0:x1] = True
        whole.update(box_mask, fg, ignore if ignore.any() else None)
    results["whole_box_mIoU"] = whole.compute()["mIoU"]
    print(f"whole box as the mask: {results['whole_box_mIoU']:.1f}", flush=True)
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        metrics = {t: BoxMaskIoU() for t in THRESHOLDS}
        start = time.perf_counter()
        for sample in samples:
            fg, ignore = sample.load_mask()
            image = load_image(sample.path)
            box = mask_box(fg)[0]
            heat = rcam_boxes(model, image, box[None], config=PRESETS[name])
            for threshold, metric in metrics.items():
                metric.update(heat >= threshold, fg, ignore if ignore.any() else None)
        miou = {str(t): m.compute()["mIoU"] for t, m in metrics.items()}
        best = max(miou, key=miou.get)
        results["configs"][name] = {
            "mIoU": miou, "best_threshold": float(best), "best_mIoU": miou[best],
            "seconds_per_box": (time.perf_counter() - start) / len(samples)}
        print(f"rCAM_Box ({name}) mIoU by threshold: "
              + ", ".join(f"{t}: {v:.1f}" for t, v in miou.items()), flush=True)
        if args.json is not None:
            write_json_atomic(args.json, results)


if __name__ == "__main__":
    main()
