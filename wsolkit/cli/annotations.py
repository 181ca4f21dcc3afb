"""``wsolkit clean-boxes`` and ``wsolkit proposals``: annotation cleaning and object proposals."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsolkit.cli.options import add_device_option, check_limit, device
from wsolkit.data.atomic import check_out_dir
from wsolkit.errors import InputError

EXIT_OK, EXIT_BAD_ITEMS = 0, 1
SELECTIVE_SEARCH = "selective-search"


def add_clean_boxes_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``wsolkit clean-boxes``."""
    run = commands.add_parser(
        "clean-boxes",
        help="flag boxes without a dominant object and tighten the others (COCO JSON, VOC)",
    )
    add_device_option(run)
    run.add_argument("annotations", type=Path,
                     help="COCO .json file or VOC folder (Annotations/ or flat .xml files)")
    run.add_argument("--images", type=Path, default=None,
                     help="image folder (default: beside the JSON or its images/; VOC "
                          "JPEGImages/ or the folder itself)")
    run.add_argument("--out", type=Path, required=True,
                     help="output folder: new annotations, report.html, changes.json")
    run.add_argument("--method", default="objectness",
                     help="heatmap method (default objectness; see 'wsolkit methods')")
    run.add_argument("--model", default="efficientnet_lite0",
                     help="efficientnet_lite0 (embedded), torchvision:ARCH, timm:NAME or .pt file")
    run.add_argument("--weights", default=None, help="state dict for torchvision:/timm: models")
    run.add_argument("--layer", default=None, help="layer to hook, by module name")
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
    run.add_argument("--quiet", action="store_true", help="no progress bar")


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
    if result.failures:
        print(f"wsolkit: {len(result.failures)} image(s) failed, their boxes were skipped:",
              file=sys.stderr)
        for message in result.failures:
            print(f"  {message}", file=sys.stderr)
        return EXIT_BAD_ITEMS
    return EXIT_OK


def add_proposals_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``wsolkit proposals``."""
    run = commands.add_parser(
        "proposals", help="class-agnostic object proposals from heatmap blobs (recall on GT)"
    )
    add_device_option(run)
    run.add_argument("paths", nargs="*", help="image files, folders or glob patterns")
    run.add_argument("--dataset", type=Path, default=None,
                     help="instead of PATHS: a dataset with GT boxes (COCO JSON, VOC, "
                          "wsolevaluation folder); prints recall at IoU 0.5/0.7/0.9")
    run.add_argument("--out", type=Path, required=True, help="output folder (proposals.json)")
    run.add_argument("--top-k", type=int, default=100, help="proposals per image (default 100)")
    run.add_argument("--method", default="objectness",
                     help=f"heatmap method (default objectness), or '{SELECTIVE_SEARCH}' "
                          "(OpenCV, fast mode) as the baseline")
    run.add_argument("--model", default="efficientnet_lite0",
                     help="efficientnet_lite0 (embedded), torchvision:ARCH, timm:NAME or .pt file")
    run.add_argument("--weights", default=None, help="state dict for torchvision:/timm: models")
    run.add_argument("--layer", default=None, help="layer to hook, by module name")
    run.add_argument("--limit", type=int, default=None, help="with --dataset: first N images")
    run.add_argument("--recursive", action="store_true", help="also search subfolders")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def run_proposals(args: argparse.Namespace) -> int:
    """Run ``wsolkit proposals``; returns the exit code (1 when some images failed)."""
    from tqdm import tqdm

    from wsolkit.apps.proposals import ProposalSettings, propose_files
    from wsolkit.data.images import expand_paths

    if args.top_k < 1:
        raise InputError(f"--top-k {args.top_k}: must be at least 1")
    check_limit(args.limit)
    if bool(args.paths) == (args.dataset is not None):
        raise InputError("give image PATHS or --dataset DATASET (one of the two)")
    check_out_dir(args.out)
    model = None
    if args.method != SELECTIVE_SEARCH:
        from wsolkit.maps import get_method
        from wsolkit.models import load_model

        get_method(args.method)
    problems: list[tuple[str, str]] = []
    samples = None
    if args.dataset is not None:
        from wsolkit.data import open_dataset

        dataset = open_dataset(args.dataset)
        samples = [dataset[i] for i in range(min(len(dataset), args.limit or len(dataset)))]
        if not samples:
            raise InputError(f"--dataset {args.dataset}: no annotated images")
        files = [sample.path for sample in samples]
    else:
        files, problems = expand_paths(args.paths, recursive=args.recursive)
        if not files:
            for item, reason in problems:
                print(f"wsolkit: {item}: {reason}", file=sys.stderr)
            raise InputError("no image files found in " + " ".join(args.paths))
    if args.method != SELECTIVE_SEARCH:
        model = load_model(args.model, weights=args.weights, device=device(args))
    settings = ProposalSettings(method=args.method, layer=args.layer, top_k=args.top_k) \
        if model is not None else None
    with tqdm(total=len(files), unit="img", disable=args.quiet, file=sys.stderr) as bar:
        report = propose_files(model, files, args.out, settings, top_k=args.top_k,
                               samples=samples, progress=bar.update)
    failures = [f"{item}: {reason}" for item, reason in problems] + report.failures
    print(f"wsolkit: proposals for {len(report.records)} image(s) in "
          f"{args.out / 'proposals.json'}", file=sys.stderr)
    if report.recall_table is not None:
        print(report.recall_table)
    if failures:
        print(f"wsolkit: {len(failures)} item(s) failed:", file=sys.stderr)
        for message in failures:
            print(f"  {message}", file=sys.stderr)
        return EXIT_BAD_ITEMS
    return EXIT_OK
