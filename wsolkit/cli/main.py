"""``wsolkit`` command line: ``localize`` and ``methods``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from wsolkit.cli.annotations import (
    add_clean_boxes_parser,
    add_proposals_parser,
    run_clean_boxes,
    run_proposals,
)
from wsolkit.cli.beam import add_tune_beam_parser, run_tune_beam
from wsolkit.cli.evaluate import add_engine_options
from wsolkit.cli.fcam import add_train_fcam_parser, run_train_fcam
from wsolkit.cli.finetune import add_finetune_parser, run_finetune
from wsolkit.cli.heads import add_train_head_parser, run_train_head
from wsolkit.cli.mosaics import add_mosaics_parser, run_mosaics
from wsolkit.cli.options import (
    add_device_option,
    add_job_options,
    device,
    parse_options,
    parse_target,
)
from wsolkit.cli.segment import add_instances_parser, add_segment_parser
from wsolkit.errors import InputError, WSOLError

EXIT_OK, EXIT_BAD_ITEMS, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    parser = argparse.ArgumentParser(
        prog="wsolkit", description="Weakly supervised object localization with classifiers."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("methods", help="list the heatmap methods")
    run = commands.add_parser("localize", help="heatmaps and boxes for image files")
    run.add_argument("paths", nargs="*", help="image files, folders or glob patterns")
    run.add_argument("--manifest", type=Path, default=None,
                     help="file listing image paths, one per line or JSON lines with "
                          "\"image\" (instead of or beside PATHS)")
    run.add_argument("--out", required=True, type=Path, help="output folder")
    run.add_argument("--method", default="gradcam", help="heatmap method (see 'wsolkit methods')")
    run.add_argument("--target", default="top1",
                     help="top1, topK, a class index or an exact class name (default top1)")
    run.add_argument("--model", default="efficientnet_lite0",
                     help="efficientnet_lite0 (embedded), torchvision:ARCH, timm:NAME or .pt file")
    run.add_argument("--weights", default=None, help="state dict for torchvision:/timm: models")
    run.add_argument("--layer", default=None, help="layer to hook, by module name")
    run.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    run.add_argument("--threshold", default="fraction",
                     choices=["fixed", "fraction", "mean", "otsu"],
                     help="how the heatmap is thresholded into boxes (default fraction)")
    run.add_argument("--threshold-value", type=float, default=0.25,
                     help="threshold parameter (default: 0.25 of the max, best for gradcam and cam "
                          "on imagenet-dev, benchmarks/objectness_layer.py --methods)")
    run.add_argument("--all-components", action="store_true",
                     help="one box per connected component instead of the largest only")
    run.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="method option, e.g. max_channels=128 for scorecam (repeatable)")
    run.add_argument("--recursive", action="store_true", help="also search subfolders")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_option(run)
    add_job_options(run)
    _add_evaluate(commands)
    add_segment_parser(commands)
    add_instances_parser(commands)
    add_clean_boxes_parser(commands)
    add_proposals_parser(commands)
    add_finetune_parser(commands)
    add_tune_beam_parser(commands)
    add_train_head_parser(commands)
    add_mosaics_parser(commands)
    add_train_fcam_parser(commands)
    return parser


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "evaluate", help="score a method on a dataset (WSOL protocol: boxes, masks)"
    )
    add_device_option(run)
    run.add_argument("dataset", type=Path,
                     help="wsolevaluation metadata folder, images+masks folder, COCO JSON or "
                          "VOC folder (format detected)")
    run.add_argument("--method", default="cam",
                     help="heatmap method, a comma-separated list, or 'all' (default cam)")
    run.add_argument("--model", default="efficientnet_lite0", help="as for 'localize'")
    run.add_argument("--weights", default=None, help="state dict for torchvision:/timm: models")
    run.add_argument("--layer", default=None, help="layer to hook, by module name")
    run.add_argument("--target", default="auto", choices=["auto", "gt", "top1"],
                     help="class explained: gt label, top1 prediction, or auto (gt when the "
                          "dataset's labels are the model's classes)")
    run.add_argument("--limit", type=int, default=None, help="score only the first N images")
    run.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    run.add_argument("--cam-curve-interval", type=float, default=0.01,
                     help="spacing of the map thresholds (default 0.01)")
    run.add_argument("--detection-threshold", type=float, default=0.5,
                     help="COCO/VOC with a model of the dataset's classes: each class map's "
                          "connected components at this fraction of its max are detections "
                          "(default 0.5)")
    run.add_argument("--min-class-probability", type=float, default=0.001,
                     help="COCO/VOC/mosaics with a model of the dataset's classes: detections "
                          "(and beam's searches) only for the classes of an image at least "
                          "this probable, plus its top class; 0: every class (default 0.001)")
    run.add_argument("--class-thresholds", type=Path, default=None, metavar="FILE",
                     help="COCO/VOC with a model of the dataset's classes: per-class map "
                          "thresholds (a `wsolkit tune-beam` file) instead of "
                          "--detection-threshold")
    run.add_argument("--box-score", default="blob", choices=["blob", "box"],
                     help="COCO/VOC detections: score = blob's mean heat x class probability "
                          "(blob, default) or mean heat inside the box (box, Bency et al.)")
    run.add_argument("--maps", type=Path, default=None,
                     help="score precomputed <image_id>.npy maps from this folder")
    run.add_argument("--save-maps", type=Path, default=None,
                     help="save each 224x224 map as <image_id>.npy in this folder")
    run.add_argument("--out", type=Path, default=Path("out/evaluate"),
                     help="report folder (default out/evaluate)")
    run.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="method option (repeatable); with --method all, given to the "
                          "methods that take it")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_options(run)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 some items failed, 2 usage error)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "methods":
            return _methods()
        if args.command == "evaluate":
            from wsolkit.cli.evaluate import run_evaluate

            return run_evaluate(args, parse_options(args.option))
        if args.command == "clean-boxes":
            return run_clean_boxes(args)
        if args.command == "finetune":
            return run_finetune(args)
        if args.command == "train-head":
            return run_train_head(args)
        if args.command == "tune-beam":
            return run_tune_beam(args)
        if args.command == "mosaics":
            return run_mosaics(args)
        if args.command == "train-fcam":
            return run_train_fcam(args)
        if args.command == "proposals":
            return run_proposals(args)
        if args.command in ("segment", "instances"):
            from wsolkit.cli.segment import run_instances, run_segment

            run = run_segment if args.command == "segment" else run_instances
            return run(args, parse_options(args.option))
        return _localize(args)
    except WSOLError as error:
        print(f"wsolkit: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("wsolkit: interrupted", file=sys.stderr)
        return 130


def _methods() -> int:
    from wsolkit.maps import METHODS

    width = max(len(name) for name in METHODS)
    for name, method in METHODS.items():
        print(f"{name:<{width}}  {method.summary}")
    return EXIT_OK


def _localize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wsolkit.apps.localize import JobOptions, LocalizeSettings, default_workers
    from wsolkit.cli.options import overlays
    from wsolkit.data.atomic import check_out_dir
    from wsolkit.data.images import expand_paths
    from wsolkit.maps import get_method
    from wsolkit.models import load_model

    get_method(args.method)  # fail on a typo before loading anything
    check_out_dir(args.out)
    options = parse_options(args.option)
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                               ("--shard-size", args.shard_size, 1), ("--actors", args.actors, 1)):
        if value is not None and value < least:
            raise InputError(f"{flag} {value}: must be at least {least}")
    job = JobOptions(
        workers=default_workers() if args.workers is None else args.workers,
        shard_size=args.shard_size,
        overlays=overlays(args),
        save_maps=args.save_maps,
    )
    if not args.paths and args.manifest is None:
        raise InputError("give image PATHS or --manifest FILE")
    files, problems = expand_paths(args.paths, recursive=args.recursive) if args.paths else ([], [])
    if args.manifest is not None:
        from wsolkit.data.manifest import read_manifest

        seen = {str(p) for p in files}
        files += [p for p in read_manifest(args.manifest) if str(p) not in seen]
    if not files:
        for item, reason in problems:
            print(f"wsolkit: {item}: {reason}", file=sys.stderr)
        raise InputError("no image files found in " + " ".join(args.paths))
    model = load_model(args.model, weights=args.weights, device=device(args))
    settings = LocalizeSettings(
        method=args.method,
        target=parse_target(args.target, model.class_names),
        layer=args.layer,
        batch_size=args.batch_size,
        threshold=args.threshold,
        threshold_value=None if args.threshold == "otsu" else args.threshold_value,
        components="all" if args.all_components else "largest",
        options=options,
    )
    with tqdm(total=len(files), unit="img", disable=args.quiet, file=sys.stderr) as bar:
        if args.engine == "ray":
            from wsolkit.apps.ray_engine import RayOptions, localize_files_ray

            ray_options = RayOptions(address=args.address, actors=args.actors,
                                     actor_cpus=args.actor_cpus)
            report = localize_files_ray(model, files, args.out, settings, progress=bar.update,
                                        job=job, ray=ray_options)
        else:
            from wsolkit.apps.localize import localize_files

            report = localize_files(model, files, args.out, settings, progress=bar.update,
                                    job=job)
    failures = [(item, f"{item}: {reason}") for item, reason in problems] + report.failures
    resumed = f" ({report.resumed} already done)" if report.resumed else ""
    print(f"wsolkit: {report.written - len(report.failures)} image(s) localized with "
          f"{args.method}{resumed}; rows in {args.out}/rows-*.jsonl, summary in "
          f"{args.out / 'results.json'}", file=sys.stderr)
    if failures:
        print(f"wsolkit: {len(failures)} item(s) failed:", file=sys.stderr)
        for _item, message in failures:
            print(f"  {message}", file=sys.stderr)
        return EXIT_BAD_ITEMS
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
