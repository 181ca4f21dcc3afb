"""``wsolkit tune-beam``: per-class heatmap thresholds of the ``beam`` method, on validation."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wsolkit.cli.options import (
    EXIT_OK,
    add_command,
    add_common,
    check_limit,
    device,
    set_threads,
)
from wsolkit.errors import InputError
from wsolkit.maps.beam import PRESETS


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``tune-beam`` subcommand to the ``wsolkit`` parser."""
    run = add_command(
        commands, "tune-beam", run_tune_beam,
        help="tune the beam method's per-class heatmap thresholds on a validation split",
        description="Run the beam search for every (image, class) with GT boxes, threshold the "
                    "heatmap at 0.05..0.95 and keep, per class (fallback: global), the value "
                    "whose blob boxes best match the GT boxes (mean F1 at IoU 0.5). Writes a "
                    "JSON file for `wsolkit evaluate --class-thresholds FILE` / "
                    "beam_boxes(thresholds=FILE).",
    )
    run.add_argument("dataset", type=Path,
                     help="validation split: wsolevaluation metadata folder, COCO JSON or VOC "
                          "folder (format detected)")
    run.add_argument("--out", required=True, type=Path, help="thresholds JSON file to write")
    add_common(run)
    run.add_argument("--limit", type=int, default=None, help="use only the first N images")
    run.add_argument("--preset", choices=list(PRESETS), default="default",
                     help="search size: default (M = 4, H = 10) or paper (Bency et al.'s M = 8, "
                          "H = 10); --beam-width / --levels given explicitly override it")
    run.add_argument("--beam-width", type=int, default=None,
                     help="M, beams per level (default 4; paper preset 8)")
    run.add_argument("--levels", type=int, default=None, help="H, levels (default 10)")
    run.add_argument("--min-count", type=int, default=2,
                     help="(image, class) pairs a class needs for its own threshold (default 2)")
    run.add_argument("--train", type=Path, default=None,
                     help="training split (multi-label, the model's classes): count label "
                          "co-occurrences there and choose the rescoring alpha here")
    run.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def run_tune_beam(args: argparse.Namespace) -> int:
    """Run ``wsolkit tune-beam``; returns the exit code."""
    from tqdm import tqdm

    from wsolkit.apps.beam_tune import TuneSettings, tune_thresholds
    from wsolkit.data import open_dataset
    from wsolkit.data.atomic import write_bytes_atomic
    from wsolkit.models import load_model

    check_limit(args.limit)
    set_threads(args.threads)
    if not args.out.parent.is_dir():
        raise InputError(f"--out {args.out}: folder {args.out.parent} does not exist")
    dataset = open_dataset(args.dataset)
    train = open_dataset(args.train) if args.train is not None else None
    model = load_model(args.model, weights=args.weights, device=device(args))
    settings = TuneSettings(limit=args.limit, beam_width=args.beam_width, levels=args.levels,
                            preset=args.preset, min_count=args.min_count)
    total = min(len(dataset), args.limit) if args.limit else len(dataset)
    with tqdm(total=total, unit="img", disable=args.quiet, file=sys.stderr) as bar:
        result = tune_thresholds(dataset, model, settings, train=train, progress=bar.update)
    result.update({"dataset": str(args.dataset), "model": model.name})
    write_bytes_atomic(args.out, (json.dumps(result, indent=2) + "\n").encode())
    print(f"wsolkit: global threshold {result['global']:.2f} (mean F1 "
          f"{result['global_f1']:.3f}), {len(result['per_class'])} per-class thresholds from "
          f"{result['images']} images; written to {args.out}", file=sys.stderr)
    return EXIT_OK
