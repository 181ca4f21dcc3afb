"""``wsolkit clean-boxes``: flag boxes without a dominant object and tighten the others."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsolkit.cli.options import add_command, add_common, device, report_failures
from wsolkit.data.atomic import check_out_dir
from wsolkit.errors import InputError


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``wsolkit clean-boxes``."""
    run = add_command(
        commands, "clean-boxes", run_clean_boxes,
        renamed={"fraction": "--tighten-fraction", "tighten": "--no-tighten"},
        help="flag boxes without a dominant object and tighten the others (COCO JSON, VOC)",
    )
    run.add_argument("annotations", type=Path,
                     help="COCO .json file or VOC folder (Annotations/ or flat .xml files)")
    run.add_argument("--images", type=Path, default=None,
                     help="image folder (default: beside the JSON or its images/; VOC "
                          "JPEGImages/ or the folder itself)")
    run.add_argument("--out", type=Path, required=True,
                     help="output folder: new annotations, report.html, changes.json")
    add_common(run, method="objectness", layer=True)
    run.add_argument("--threshold", default="auto",
                     help="'auto' (calibrated on this dataset's scores, see the report) or a "
                          "score at or below which a box is flagged")
    run.add_argument("--drop", action="store_true",
                     help="remove flagged boxes instead of marking them")
    run.add_argument("--margin", type=float, default=0.0,
                     help="grow tightened boxes by this fraction of their size per side")
    run.add_argument("--no-tighten", action="store_true", help="keep the kept boxes as they are")
    run.add_argument("--tighten-fraction", type=float, default=0.2,
                     help="tighten to the largest blob of heat >= this fraction of the box's "
                          "peak (default 0.2)")
    run.add_argument("--scoring", default="crop", choices=["crop", "image"],
                     help="heatmap of each box's crop with context (default) or of the whole "
                          "image")
    run.add_argument("--batch-size", type=int, default=16, help="crops per forward pass")


def _threshold(text: str) -> str | float:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--threshold {text!r}: expected 'auto' or a number") from None


def run_clean_boxes(args: argparse.Namespace) -> int:
    """Run ``wsolkit clean-boxes``; returns the exit code."""
    from tqdm import tqdm

    from wsolkit.apps.annotation_io import read_annotations
    from wsolkit.apps.clean_boxes import CleanSettings, clean_annotations
    from wsolkit.maps import get_method
    from wsolkit.models import load_model

    get_method(args.method)
    check_out_dir(args.out)
    settings = CleanSettings(
        method=args.method, layer=args.layer, scoring=args.scoring,
        threshold=_threshold(args.threshold), drop=args.drop, margin=args.margin,
        tighten=not args.no_tighten, fraction=args.tighten_fraction,
        batch_size=args.batch_size,
    )
    settings.check()
    if args.images is not None and not args.images.is_dir():
        raise InputError(f"--images {args.images}: folder not found")
    annotations = read_annotations(args.annotations, args.images)
    model = load_model(args.model, weights=args.weights, device=device(args))
    total = sum(entry.status == "ok" for entry in annotations.boxes)
    with tqdm(total=total, unit="box", disable=args.quiet, file=sys.stderr) as bar:
        result = clean_annotations(model, annotations, args.out, settings, progress=bar.update)
    counts = result.counts()
    print(f"wsolkit: {counts['scored']} box(es) scored, threshold {result.threshold:.3f} "
          f"({result.rule}); {counts['flagged']} {'dropped' if args.drop else 'flagged'}, "
          f"{counts['tightened']} tightened, {counts['skipped']} skipped", file=sys.stderr)
    print(f"wsolkit: annotations in {result.output}; report in {result.report}",
          file=sys.stderr)
    return report_failures(result.failures, "image(s) failed, their boxes were skipped")
