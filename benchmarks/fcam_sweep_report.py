"""Collect the bg_fraction sweep of scripts/sweep_fcam.sh into one JSON and markdown report.

    python benchmarks/fcam_sweep_report.py --sweep out/fcam/sweep \
        --out benchmarks/results/fcam_sweep

Reads ``SWEEP/<run>/metrics.json`` (training: settings, best epoch and the validation score of
every epoch) and ``SWEEP/eval/<dataset>/<run>/metrics.json`` (``wsolkit evaluate``). The CAM
rows are quoted from ``benchmarks/results/fcam.json`` (the same protocol, the same sets).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fcam_report import cell, write_report  # the same cells and files as the main report

COLUMNS = {"imagenet-dev": ["MaxBoxAcc", "MaxBoxAccV2", "top-1 loc"],
           "davis": ["PxAP", "F ODS", "MAE", "mIoU"]}


def main() -> None:
    """Write OUT.json and OUT.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, default=Path("out/fcam/sweep"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fcam_sweep"))
    args = parser.parse_args()
    runs = sorted(p.parent.name for p in args.sweep.glob("*/metrics.json"))
    report: dict = {"runs": {}}
    header = (["bg_fraction", "optimizer, lr", "pixels", "batch"]
              + [f"{d} {c}" for d, cols in COLUMNS.items() for c in cols]
              + ["best epoch", "val MaxBoxAccV2 per epoch"])
    lines = ["# F-CAM settings sweep (`bash scripts/sweep_fcam.sh`)", "",
             "Seed 0, CAM seed, 8 epochs (the paper preset: 4, as its epochs are ours); "
             "the decoder of the best epoch on "
             "imagenet-dev (MaxBoxAccV2, threshold step 0.01) is scored on both sets by "
             "`wsolkit evaluate`.", "",
             "| run | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    reference = Path(__file__).resolve().parent / "results" / "fcam.json"
    if reference.is_file():
        cam = {d: json.loads(reference.read_text())["datasets"][d]["cam"]["scores"]
               for d in COLUMNS}
        report["cam"] = cam
        lines.append("| CAM (fcam.json) | - | - | - | - | " + " | ".join(
            cell(cam[d].get(c), c) for d, cols in COLUMNS.items() for c in cols) + " | - | - |")
    for name in runs:
        training = json.loads((args.sweep / name / "metrics.json").read_text())
        scores = {}
        for dataset, columns in COLUMNS.items():
            path = args.sweep / "eval" / dataset / name / "metrics.json"
            summary = json.loads(path.read_text())["summary"] if path.is_file() else {}
            scores[dataset] = {c: summary.get(c) for c in columns}
        history = [round(h["val"][1], 1) for h in training["history"] if h.get("val")]
        settings = training["settings"]
        report["runs"][name] = {"scores": scores, "best_epoch": training["best_epoch"],
                                "val_history": history, "settings": settings}
        lines.append(f"| {name} | {settings['bg_fraction']} | "
                     f"{settings.get('optimizer', 'adam')}, {settings['lr']} | "
                     f"{settings['n_fg']}+{settings['n_bg']} | {settings['batch_size']} | "
                     + " | ".join(
            cell(scores[d][c], c) for d, cols in COLUMNS.items() for c in cols)
            + f" | {training['best_epoch']} | {', '.join(f'{v:.1f}' for v in history)} |")
    write_report(args.out, report, lines)


if __name__ == "__main__":
    main()
