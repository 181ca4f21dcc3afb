"""Collect the F-CAM evaluation (scripts/evaluate_fcam.sh) into one JSON and markdown report.

    python benchmarks/fcam_report.py --work out/fcam --out benchmarks/results/fcam

Reads ``WORK/eval/<dataset>/<row>/metrics.json`` (written by ``wsolkit evaluate``), the saved
224x224 protocol maps ``WORK/maps/<dataset>/<row>/**/*.npy`` (min-max normalized, as scored)
and the training metrics ``WORK/<run>/metrics.json`` and ``WORK/shipped/metrics.json``.
Writes ``OUT.json`` and ``OUT.md``: the score tables, a 10-bin histogram of map values per row
and the fraction of near-binary pixels (value < 0.1 or > 0.9), training time per epoch, and the
fp16 check of the shipped decoder (validation MaxBoxAccV2 of the fp32 weights of its best epoch
in ``WORK/shipped/checkpoint.pt`` vs the shipped fp16 file, on the cached imagenet-dev features).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROWS = {
    "cam": "CAM",
    "rcam": "rCAM",
    "fcam": "F-CAM, LayerCAM seed (shipped)",
    "fcam_cam": "F-CAM, CAM seed (pseudo-pixels + CRF + size)",
    "ablation_pseudo_pixels": "ablation, CAM seed: pseudo-pixels only",
    "ablation_pseudo_pixels_crf": "ablation, CAM seed: pseudo-pixels + CRF",
}
COLUMNS = {
    "imagenet-dev": ["MaxBoxAcc", "MaxBoxAccV2", "top-1 loc", "top-5 loc", "pointing"],
    "davis": ["PxAP", "F OIS", "F ODS", "MAE", "mIoU"],
}
RCAM_DOCS = {"imagenet-dev": {"MaxBoxAcc": 69.8, "MaxBoxAccV2": 66.2, "top-1 loc": 56.9},
               "davis": {"PxAP": 32.9, "F OIS": 0.511, "F ODS": 0.463, "MAE": 0.246,
                         "mIoU": 34.5}}
TRAIN_RUNS = {"fcam": "shipped", "fcam_cam": "cam_seed",
              "ablation_pseudo_pixels": "pseudo_pixels",
              "ablation_pseudo_pixels_crf": "pseudo_pixels_crf"}


def histogram(folder: Path) -> dict | None:
    """10-bin histogram (fractions) of all saved map values, and the near-binary fraction."""
    files = sorted(folder.rglob("*.npy"))
    if not files:
        return None
    counts = np.zeros(10, np.int64)
    near = total = 0
    for path in files:
        values = np.load(path).ravel()
        counts += np.histogram(values, bins=10, range=(0.0, 1.0))[0]
        near += int(((values < 0.1) | (values > 0.9)).sum())
        total += values.size
    return {"bins": [round(float(c) / total, 4) for c in counts],
            "near_binary": round(near / total, 4), "maps": len(files)}


def fp16_check(work: Path, data: Path) -> dict | None:
    """Validation score of the best epoch's fp32 decoder and of the shipped fp16 file."""
    import torch

    from wsolkit.data import open_dataset
    from wsolkit.models.fcam import DEFAULT_DECODER, FCAMDecoder, load_decoder
    from wsolkit.train.fcam import _validate
    from wsolkit.train.fcam_cache import FeatureCache

    checkpoint = work / "shipped" / "checkpoint.pt"
    folders = sorted((work / "cache").glob("val-*/meta.json"))
    if not checkpoint.is_file() or not folders:
        return None
    half, _ = load_decoder(DEFAULT_DECODER)
    full = FCAMDecoder(half.spec)
    full.load_state_dict(torch.load(checkpoint, weights_only=False)["best"]["decoder"])
    cache = FeatureCache(folders[0].parent, half.spec.skip_layers, None)
    samples = list(open_dataset(data / "imagenet-dev"))
    return {"fp32": _validate(full, cache, samples)[1], "fp16": _validate(half, cache, samples)[1],
            "metric": "MaxBoxAccV2 (imagenet-dev, threshold step 0.01)"}


def cell(value: float | None, column: str) -> str:
    """A table cell: F-measures and MAE to 3 decimals, percentages to 1, '-' when missing."""
    if value is None:
        return "-"
    return f"{value:.3f}" if column in ("F OIS", "F ODS", "MAE") else f"{value:.1f}"


def write_report(out: Path, report: dict, lines: list[str]) -> None:
    """Write OUT.json and OUT.md and print the markdown."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    """Write OUT.json and OUT.md from the evaluation folders."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("out/fcam"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fcam"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    report: dict = {"datasets": {}, "training": {}}
    lines = ["# F-CAM on the dev sets (`bash scripts/evaluate_fcam.sh`)", ""]
    for dataset, columns in COLUMNS.items():
        table: dict = {}
        for row in ROWS:
            path = args.work / "eval" / dataset / row / "metrics.json"
            if path.is_file():
                summary = json.loads(path.read_text())["summary"]
                table[row] = {"scores": {c: summary.get(c) for c in columns},
                              "histogram": histogram(args.work / "maps" / dataset / row),
                              "source": "this run"}
            elif row == "rcam":
                table[row] = {"scores": {c: RCAM_DOCS[dataset].get(c) for c in columns},
                              "histogram": None,
                              "source": "docs/rcam.md (scripts/evaluate_rcam.sh), not re-run"}
        report["datasets"][dataset] = table
        lines += [f"## {dataset}", "",
                  "| method | " + " | ".join(columns) + " | near-binary pixels |",
                  "|---|" + "---:|" * (len(columns) + 1)]
        for row, entry in table.items():
            hist = entry["histogram"]
            quoted = entry["source"] != "this run"
            name = ROWS[row] + (" (docs/rcam.md, not re-run)" if quoted else "")
            lines.append(f"| {name} | " + " | ".join(
                cell(entry["scores"][c], c) for c in columns) + " | " +
                ("-" if hist is None else f"{100 * hist['near_binary']:.0f}%") + " |")
        lines += ["", "Map-value histogram (fraction of pixels per tenth of [0, 1]):", "",
                  "| method | " + " | ".join(f"{i / 10:.1f}-" for i in range(10)) + " |",
                  "|---|" + "---:|" * 10]
        for row, entry in table.items():
            if entry["histogram"] is not None:
                lines.append(f"| {row} | " + " | ".join(
                    f"{100 * b:.0f}%" for b in entry["histogram"]["bins"]) + " |")
        lines.append("")
    lines += ["## Training (imagenet-sample; selection on imagenet-dev)", "",
              "Seconds per epoch as measured: 1 torch thread per run, with other runs and "
              "jobs at once on 2 shared CPU cores (a loaded machine, not a quiet one).", "",
              "| decoder | seed CAM | best epoch / epochs | val MaxBoxAccV2 | s per epoch |",
              "|---|---|---:|---:|---:|"]
    for row, run in TRAIN_RUNS.items():
        path = args.work / run / "metrics.json"
        if not path.is_file():
            continue
        metrics = json.loads(path.read_text())
        report["training"][row] = {k: metrics[k] for k in (
            "best_epoch", "best_val", "val_metric", "seconds_per_epoch", "history", "settings")}
        lines.append(f"| {row} | {metrics['settings']['cam']} | {metrics['best_epoch']} / "
                     f"{len(metrics['history'])} | {metrics['best_val']:.1f} | "
                     f"{metrics['seconds_per_epoch']:.0f} |")
    check = fp16_check(args.work, args.data)
    if check is not None:
        report["fp16_check"] = check
        lines += ["", f"Shipped decoder in fp16: {check['metric']} {check['fp16']:.2f} vs "
                  f"{check['fp32']:.2f} with the fp32 weights of the same epoch."]
    write_report(args.out, report, lines)


if __name__ == "__main__":
    main()
